"""Fault injection for W&B: whatever fails on the W&B side, training finishes (checkpoints and
metrics.jsonl written) with exactly one warning that names the cause; and a ``kill -9`` keeps
every evaluation but the one in progress.

Most faults are injected into a training in this process, with wandb's process-wide state torn
down before and after (``fresh_wandb``) so that wandb reads the environment again, as a new
process would; stderr is captured at the file-descriptor level, so W&B's service process is
heard too. A broken wandb install, the kill and (under ``-m slow``) every fault through the
command line run in subprocesses.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides
from trainers import load_config, train
from trainers.run import default_callbacks
from trainers.wandb_logger import (
    FLUSH_INTERVAL_S,
    INIT_TIMEOUT_S,
    METRICS_FILE,
    WandbLogger,
    read_metrics,
    read_offline_run,
)

REPO = Path(__file__).resolve().parents[1]
TASK = "colenv/XOR-v0"
FAKE_KEY = "0123456789abcdef" * 2 + "01234567"  # 40 characters: well-formed, not a real key
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: refused, with or without network
NATIVE_CACHE = os.environ.get("COLENV_CACHE_DIR", str(Path.home() / ".cache" / "colenv"))


@dataclass
class Outcome:
    """How a training went: exit status (0 in-process when ``train`` returned), its output,
    its run folder."""

    rc: int
    stdout: str
    stderr: str
    run_dir: Path
    seconds: float = 0.0

    @property
    def warnings(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("warning:")]

    def offline_run(self) -> Path:
        (run,) = (self.run_dir / "wandb").glob("offline-run-*")
        return run


def assert_trained(o: Outcome, steps: int = 2) -> None:
    """Exit status 0, the checkpoints and one metrics line per evaluation; no traceback and
    nothing printed by wandb or its service (other parts may print, e.g. a kernel build)."""
    assert o.rc == 0, o.stderr[-3000:]
    assert (o.run_dir / "checkpoints" / "last.pt").is_file()
    assert (o.run_dir / "checkpoints" / "best.pt").is_file()
    assert [row["step"] for row in read_metrics(o.run_dir)] == list(range(1, steps + 1))
    assert "Traceback" not in o.stderr
    assert not wandb_noise(o), o.stderr


def wandb_noise(o: Outcome) -> list[str]:
    """Lines on stderr from wandb or its service (``wandb: ...``, a Go log line), other
    than the one warning."""
    return [
        line
        for line in o.stderr.splitlines()
        if line not in o.warnings
        and ("wandb" in line.lower() or re.match(r"\d{4}/\d\d/\d\d \d\d:", line))
    ]


def assert_one_warning(o: Outcome, *causes: str) -> str:
    """Exactly one warning, naming each of ``causes``, with the fix."""
    assert len(o.warnings) == 1, o.stderr
    (warning,) = o.warnings
    for cause in causes:
        assert cause in warning, (cause, warning)
    assert "To fix:" in warning
    return warning


def assert_logged_offline(o: Outcome) -> dict:
    """The W&B run is offline and finished, with both steps and the checkpoint artifact."""
    logged = read_offline_run(o.offline_run())
    assert [row["train/step"] for row in logged["history"] if "train/loss" in row] == [1, 2]
    assert logged["summary"]["result/steps"] == 2
    assert logged["artifacts"] == [{"name": f"{o.run_dir.name}-checkpoint", "type": "model"}]
    return logged


# ----------------------------------------------------------------------------- in-process
@pytest.fixture
def fresh_wandb(tmp_path, monkeypatch):
    """No WANDB_* variable, a fresh writable HOME, and wandb's process-wide state torn down
    before and after, so that wandb reads the environment as a new process would."""
    import wandb

    wandb.teardown()
    for key in list(os.environ):
        if key.startswith("WANDB_") or key in ("XDG_CACHE_HOME", "XDG_DATA_HOME"):
            monkeypatch.delenv(key)
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLENV_CACHE_DIR", NATIVE_CACHE)
    yield
    wandb.teardown()


@pytest.fixture
def afile(tmp_path) -> Path:
    """A regular file: no folder can be created under it, not even by root."""
    path = tmp_path / "a-file"
    path.write_text("")
    return path


def train_here(tmp_path, capfd, name: str, **env: str) -> Outcome:
    """A tiny training in this process with W&B on (the default callbacks), ``env`` set."""
    for key, value in env.items():
        os.environ[key] = value  # restored by monkeypatch: fresh_wandb deleted or set it
    overrides = tiny_overrides(TASK, tmp_path / "runs", "logging.wandb=true", f"run_name={name}")
    config = load_config(TASK, overrides)
    capfd.readouterr()
    result = train(config)
    out, err = capfd.readouterr()
    assert result.steps == 2 and not result.diverged
    return Outcome(0, out, err, tmp_path / "runs" / name)


@pytest.fixture
def here(tmp_path, capfd, fresh_wandb, monkeypatch):
    """``here(name, **env)``: :func:`train_here` with ``env`` (restored afterwards)."""

    def run(name: str, **env: str) -> Outcome:
        for key in env:
            monkeypatch.setenv(key, os.environ.get(key, ""))  # so monkeypatch restores it
        return train_here(tmp_path, capfd, name, **env)

    return run


def test_wandb_mode_unset_logs_offline_without_a_warning(here):
    o = here("unset")
    assert_trained(o)
    assert o.warnings == []
    assert_logged_offline(o)


def test_wandb_mode_empty_counts_as_unset(here):
    o = here("empty", WANDB_MODE="")
    assert_trained(o)
    assert o.warnings == []
    assert_logged_offline(o)
    assert os.environ["WANDB_MODE"] == ""  # the process's environment is left as it was


def test_wandb_mode_invalid_is_ignored_with_one_warning(here):
    o = here("invalid", WANDB_MODE="ofline")
    assert_trained(o)
    warning = assert_one_warning(o, "WANDB_MODE", "'ofline'", "offline, online")
    assert "logging.wandb_mode = 'offline' instead" in warning
    assert_logged_offline(o)
    assert os.environ["WANDB_MODE"] == "ofline"


def test_online_without_an_api_key_logs_offline_at_once(here):
    started = time.monotonic()
    o = here("no_key", WANDB_MODE="online")
    assert_trained(o)
    warning = assert_one_warning(o, "no W&B API key", "logged offline instead", "wandb sync")
    assert "could not start within" not in warning  # no network attempt without a key
    assert time.monotonic() - started < INIT_TIMEOUT_S
    assert_logged_offline(o)


def test_online_without_the_server_falls_back_offline_within_the_timeout(here):
    o = here(
        "no_server",
        WANDB_MODE="online",
        WANDB_API_KEY=FAKE_KEY,
        WANDB_BASE_URL=UNREACHABLE,
        WANDB_INIT_TIMEOUT="2",
    )
    assert_trained(o)
    warning = assert_one_warning(o, "online run could not start within", "logged offline instead")
    waited = int(re.search(r"within (\d+) s", warning).group(1))
    assert (
        waited < INIT_TIMEOUT_S
    )  # WANDB_INIT_TIMEOUT=2 bounds it (a loaded machine adds a little)
    assert_logged_offline(o)


def test_unwritable_home_moves_wandb_folders_into_the_run(here, afile):
    o = here("home", HOME=str(afile / "home"))
    assert_trained(o)
    assert_one_warning(o, "HOME", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")
    assert_logged_offline(o)  # the checkpoint artifact was staged inside the run folder
    assert (o.run_dir / "wandb" / "home" / "data" / "artifacts" / "staging").is_dir()
    assert "WANDB_DATA_DIR" not in os.environ  # the redirection ends with the run


def test_unwritable_wandb_data_dir_moves_artifact_staging_into_the_run(here, afile):
    o = here("data_dir", WANDB_DATA_DIR=str(afile / "data"))
    assert_trained(o)
    warning = assert_one_warning(o, "WANDB_DATA_DIR", "a-file/data")
    assert "WANDB_CACHE_DIR" not in warning  # only the folder that is unwritable moves
    assert_logged_offline(o)
    assert (o.run_dir / "wandb" / "home" / "data" / "artifacts" / "staging").is_dir()


def test_unwritable_wandb_dir_is_not_used(here, afile):
    """W&B writes into the run folder, whatever WANDB_DIR says."""
    o = here("wandb_dir", WANDB_DIR=str(afile / "wandb"))
    assert_trained(o)
    assert o.warnings == []
    assert_logged_offline(o)


def test_a_wandb_setting_wandb_cannot_parse_turns_wandb_off_with_one_warning(here):
    o = here("bad_setting", WANDB_INIT_TIMEOUT="soon")
    assert_trained(o)
    assert_one_warning(o, "wandb cannot start", "init_timeout", "not logged to W&B")
    assert not (o.run_dir / "wandb").exists()


def _train_with_logger(tmp_path, name: str, *extra: str):
    """A tiny run in this process with the default callbacks and a WandbLogger."""
    config = load_config(TASK, tiny_overrides(TASK, tmp_path, f"run_name={name}", *extra))
    logger = WandbLogger(mode="offline")
    result = train(config, callbacks=[*default_callbacks(config), logger])
    return result, logger, tmp_path / name


def test_wandb_not_importable_in_process(tmp_path, monkeypatch, capfd):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    result, logger, run_dir = _train_with_logger(tmp_path, "noimp")
    assert result.steps == 2 and not result.diverged
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert [row["step"] for row in read_metrics(run_dir)] == [1, 2]
    (warning,) = logger.warnings
    assert "cannot be imported" in warning and "None in sys.modules" in warning
    assert capfd.readouterr().err.count("warning: W&B:") == 1


def test_artifact_staging_failure_is_one_warning(tmp_path, fresh_wandb, monkeypatch, capfd):
    import wandb

    def fail(self, *args, **kwargs):
        raise PermissionError("Unable to write staging files to /nowhere")

    monkeypatch.setattr(wandb.Artifact, "add_file", fail)
    result, logger, run_dir = _train_with_logger(tmp_path, "art")
    assert result.steps == 2
    (warning,) = logger.warnings
    assert "checkpoint could not be added" in warning and "Unable to write staging" in warning
    assert str(run_dir / "checkpoints" / "last.pt") in warning
    assert capfd.readouterr().err.count("warning: W&B:") == 1
    (run,) = (run_dir / "wandb").glob("offline-run-*")
    logged = read_offline_run(run)
    assert logged["summary"]["result/steps"] == 2  # the run was finished without the artifact
    assert logged["artifacts"] == []


def test_logging_failure_mid_run_is_one_warning(tmp_path, fresh_wandb, monkeypatch, capfd):
    from wandb.sdk.wandb_run import Run

    real_log = Run.log
    calls = []

    def flaky(self, *args, **kwargs):
        calls.append(kwargs.get("step"))
        if len(calls) > 1:
            raise BrokenPipeError("the W&B service went away")
        return real_log(self, *args, **kwargs)

    monkeypatch.setattr(Run, "log", flaky)
    result, logger, run_dir = _train_with_logger(tmp_path, "lost", "train.steps=3")
    assert result.steps == 3 and not result.diverged
    (warning,) = logger.warnings
    assert "logging failed" in warning and "BrokenPipeError" in warning
    assert len(calls) == 2  # W&B is not called again after it failed
    assert [row["step"] for row in read_metrics(run_dir)] == [1, 2, 3]
    assert capfd.readouterr().err.count("warning: W&B:") == 1


# ----------------------------------------------------------------------------- subprocesses
def base_env(root: Path) -> dict[str, str]:
    """The environment of a command-line run: no WANDB_* variable, a fresh writable HOME, the
    repository importable, the native kernel's cache kept where it is (HOME may be broken)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    for key in ("XDG_CACHE_HOME", "XDG_DATA_HOME"):
        env.pop(key, None)
    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    env["HOME"] = str(home)
    env["COLENV_CACHE_DIR"] = NATIVE_CACHE
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return env


def train_command(runs: Path, name: str, *extra: str, steps: int = 2) -> list[str]:
    overrides = tiny_overrides(
        TASK, runs, "logging.wandb=true", f"run_name={name}", *extra, steps=steps
    )
    return [sys.executable, "-m", "trainers", "train", TASK, *overrides]


def cli_scenarios(root: Path) -> dict[str, dict[str, str]]:
    """Per command-line scenario: the environment changes."""
    afile = root / "a-file"
    afile.write_text("")
    fake = root / "broken-install"
    (fake / "wandb").mkdir(parents=True)
    (fake / "wandb" / "__init__.py").write_text(
        'raise ImportError("simulated broken wandb install")\n'
    )
    return {
        "broken_install": {"PYTHONPATH": os.pathsep.join([str(fake), str(REPO)])},
        "unset": {},
        "empty": {"WANDB_MODE": ""},
        "invalid": {"WANDB_MODE": "ofline"},
        "no_key": {"WANDB_MODE": "online"},
        "no_server": {
            "WANDB_MODE": "online",
            "WANDB_API_KEY": FAKE_KEY,
            "WANDB_BASE_URL": UNREACHABLE,
            "WANDB_INIT_TIMEOUT": "3",
        },
        "home": {"HOME": str(afile / "home")},
        "data_dir": {"WANDB_DATA_DIR": str(afile / "data")},
        "wandb_dir": {"WANDB_DIR": str(afile / "wandb")},
        "bad_setting": {"WANDB_INIT_TIMEOUT": "soon"},
    }


def run_cli(root: Path, names: list[str]) -> dict[str, Outcome]:
    """Start the named scenarios' trainings (``python -m trainers train``) together and wait
    for all of them."""
    runs = root / "runs"
    scenarios = cli_scenarios(root)
    started = {}
    for name in names:
        env = {**base_env(root), **scenarios[name]}
        out, err = root / f"{name}.out", root / f"{name}.err"
        with open(out, "w") as o, open(err, "w") as e:
            proc = subprocess.Popen(
                train_command(runs, name), cwd=REPO, env=env, stdout=o, stderr=e
            )
        started[name] = (proc, time.monotonic(), out, err)
    outcomes = {}
    for name, (proc, t0, out, err) in started.items():
        try:
            rc = proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        seconds = time.monotonic() - t0
        outcomes[name] = Outcome(rc, out.read_text(), err.read_text(), runs / name, seconds)
    return outcomes


def test_a_broken_wandb_install_turns_wandb_off_with_one_warning(tmp_path):
    (o,) = run_cli(tmp_path, ["broken_install"]).values()
    assert_trained(o)
    assert_one_warning(o, "cannot be imported", "simulated broken wandb install", "pip install")
    assert not (o.run_dir / "wandb").exists()


CLI_EXPECTED = {
    "broken_install": ["cannot be imported"],
    "unset": [],
    "empty": [],
    "invalid": ["WANDB_MODE", "'ofline'"],
    "no_key": ["no W&B API key"],
    "no_server": ["online run could not start within"],
    "home": ["HOME", "WANDB_DATA_DIR"],
    "data_dir": ["WANDB_DATA_DIR"],
    "wandb_dir": [],
    "bad_setting": ["wandb cannot start", "init_timeout"],
}
"""Per scenario: what its one warning names (no warning when empty)."""


@pytest.mark.slow
def test_every_fault_through_the_command_line(tmp_path):
    """Each fault in its own ``python -m trainers train`` (all at once): exit status 0,
    checkpoints, metrics.jsonl, and one warning naming the cause (none when nothing failed)."""
    outcomes = run_cli(tmp_path, list(CLI_EXPECTED))
    for name, causes in CLI_EXPECTED.items():
        o = outcomes[name]
        assert_trained(o)
        if causes:
            assert_one_warning(o, *causes)
        else:
            assert o.warnings == [], (name, o.stderr)
        if name not in ("broken_install", "bad_setting"):
            assert_logged_offline(o)


@pytest.mark.slow
def test_online_without_the_server_falls_back_within_the_default_timeout(tmp_path):
    """No WANDB_INIT_TIMEOUT: the fallback takes about INIT_TIMEOUT_S."""
    env = base_env(tmp_path)
    env.update(WANDB_MODE="online", WANDB_API_KEY=FAKE_KEY, WANDB_BASE_URL=UNREACHABLE)
    started = time.monotonic()
    proc = subprocess.run(
        train_command(tmp_path / "runs", "nn"),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    o = Outcome(proc.returncode, proc.stdout, proc.stderr, tmp_path / "runs" / "nn")
    o.seconds = time.monotonic() - started
    assert_trained(o)
    warning = assert_one_warning(o, "online run could not start within", "logged offline")
    waited = int(re.search(r"within (\d+) s", warning).group(1))
    assert INIT_TIMEOUT_S - 1 <= waited <= INIT_TIMEOUT_S + 5
    assert_logged_offline(o)


# ----------------------------------------------------------------------------- kill -9
def test_kill_9_keeps_every_evaluation_but_the_one_in_progress(tmp_path):
    """A training killed with SIGKILL: metrics.jsonl holds every evaluation finished before
    the kill; the offline .wandb run (read by wandb's own reader) every step logged more than
    a flush interval (plus a margin) before it."""
    env = base_env(tmp_path)
    cmd = train_command(tmp_path / "runs", "k9", "checkpoint.every=1000", steps=100_000)
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    printed: list[tuple[int, float]] = []  # (step, when its progress line was read)
    margin = FLUSH_INTERVAL_S + 2.0
    deadline = time.monotonic() + 120
    try:
        for line in proc.stdout:
            match = re.match(r"step (\d+)/", line)
            if match:
                printed.append((int(match.group(1)), time.monotonic()))
            if len(printed) >= 5 and time.monotonic() - printed[4][1] > margin + 0.5:
                break
            assert time.monotonic() < deadline, "training did not get going"
        assert proc.poll() is None, proc.stderr.read()
        proc.kill()  # SIGKILL
        killed_at = time.monotonic()
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -9

    run_dir = tmp_path / "runs" / "k9"
    steps = [row["step"] for row in read_metrics(run_dir)]
    last_printed = printed[-1][0]
    # every evaluation before the last printed one completed (the loop went on to the next
    # step), so it is in the file; the last printed one may or may not be
    assert steps == list(range(1, len(steps) + 1))
    assert last_printed - 1 <= len(steps) <= last_printed + 1
    assert len((run_dir / METRICS_FILE).read_text().splitlines()) == len(steps)

    (run,) = (run_dir / "wandb").glob("offline-run-*")
    logged = read_offline_run(run)
    in_wandb = {row["train/step"] for row in logged["history"] if "train/step" in row}
    old_enough = {step for step, when in printed if killed_at - when > margin}
    assert old_enough, printed
    assert old_enough <= in_wandb, (sorted(old_enough), sorted(in_wandb))
    assert in_wandb <= set(range(1, last_printed + 2))
