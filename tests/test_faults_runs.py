"""Fault injection on runs and checkpoints: nothing lost, nothing executed, nothing silent.

Each test plays a careless or hostile user: signals and kill -9 in the middle of training
(real ``python -m trainers`` processes), crafted, damaged and foreign checkpoints, run names
that try to leave the runs folder, reused names, copied folders, two trainings into one
folder, folders that cannot be written, and inputs that used to be accepted silently.
"""

from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from colenv.errors import ConfigError
from trainers import Callback, CheckpointCallback, load_config, read_checkpoint, train
from trainers.__main__ import main
from trainers.checkpoint import CheckpointError
from trainers.run import resume_config
from trainers.rundir import RunFolder
from trainers.supervised import SupervisedTrainer

from .conftest import tiny_overrides

TASK = "colenv/XOR-v0"
REPO = Path(__file__).resolve().parents[1]
STEPS = 30
SLOW = "trainer=tests.test_faults_runs:SlowSupervised"


class Sleep(Callback):
    """Paces training (40 ms a step) so that a signal lands in the middle of it."""

    def on_step_end(self, state):
        time.sleep(0.04)


class SlowSupervised(SupervisedTrainer):
    """The supervised trainer, paced by :class:`Sleep`: the same numbers, more time."""

    def fit(self, model, task, config, callbacks):
        callbacks.append(Sleep())
        return super().fit(model, task, config, callbacks)


class StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state):
        return state.step < self.step


# ----------------------------------------------------------------------------- helpers
def _overrides(run_dir: Path, *extra: str, steps: int = STEPS) -> list[str]:
    return tiny_overrides(TASK, run_dir, "train.lr=0.05", *extra, steps=steps)


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"}
    return subprocess.Popen(
        [sys.executable, "-m", "trainers", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for_step(proc: subprocess.Popen, step: int) -> None:
    """Read the process's progress lines until ``step <step>/`` (one per evaluation)."""
    while True:
        line = proc.stdout.readline()
        if not line:
            proc.wait()
            raise AssertionError(f"training ended before step {step}: {proc.stderr.read()}")
        if line.startswith(f"step {step}/"):
            return


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["state_dict"]


def _assert_same_weights(a: dict, b: dict, why: str) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs ({why})"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    """Final weights of the uninterrupted run (the supervised trainer, in process)."""
    root = tmp_path_factory.mktemp("reference")
    result = train(load_config(TASK, _overrides(root, "run_name=ref")))
    assert result.steps == STEPS
    return _weights(Path(result.checkpoint))


# ----------------------------------------------------------------------------- signals
def test_sigint_saves_last_pt_and_resume_reproduces_the_run_bit_for_bit(tmp_path, reference):
    """Ctrl-C at a random step between checkpoints (checkpoint.every=0): last.pt holds that
    step, the exit status is 130, the message says how to resume; the resumed run ends with
    the uninterrupted run's weights. While it trains, a second training and a resume into
    its folder are refused (the folder is locked)."""
    k = random.randint(2, 12)
    run = tmp_path / "sig"
    proc = _cli("train", TASK, *_overrides(tmp_path, SLOW, "run_name=sig", "checkpoint.every=0"))
    _wait_for_step(proc, k)

    with pytest.raises(ConfigError, match=f"run folder {run} already holds a run"):
        train(load_config(TASK, _overrides(tmp_path, "run_name=sig")))
    with pytest.raises(ConfigError, match="is in use"):
        train(resume_config(run, imports=[__name__]))

    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    last = run / "checkpoints" / "last.pt"
    stopped = read_checkpoint(last)["step"]
    assert k <= stopped < STEPS, (k, stopped)
    assert f"interrupted by SIGINT after step {stopped}" in err
    assert str(last) in err and f"python -m trainers resume {run}" in err

    resumed = _cli("resume", str(run), "trainer=supervised")  # unpaced: the same numbers
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert f"resuming {run} from {last} at step {stopped} of {STEPS}" in out
    assert read_checkpoint(last)["step"] == STEPS
    _assert_same_weights(_weights(last), reference, f"SIGINT at step {k}")


@pytest.mark.slow
def test_sigterm_saves_last_pt_and_exits_143(tmp_path):
    proc = _cli("train", TASK, *_overrides(tmp_path, SLOW, "run_name=term", "checkpoint.every=0"))
    _wait_for_step(proc, 3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "interrupted by SIGTERM" in err
    assert read_checkpoint(tmp_path / "term" / "checkpoints" / "last.pt")["step"] >= 3


def test_kill_9_then_resume_from_what_is_there(tmp_path, reference):
    """kill -9 at a random step (no handler runs): the checkpoints written before it are
    intact, a leftover temporary file of an interrupted write is removed, the kernel has
    released the lock, and the resumed run ends with the uninterrupted run's weights."""
    k = random.randint(2, 12)
    run = tmp_path / "killed"
    proc = _cli("train", TASK, *_overrides(tmp_path, SLOW, "run_name=killed"))
    _wait_for_step(proc, k)
    proc.kill()
    proc.communicate(timeout=30)
    leftover = run / "checkpoints" / ".last.pt.x1y2z3.tmp"
    leftover.write_bytes(b"half a checkpoint")

    resumed = _cli("resume", str(run), "trainer=supervised")
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert f"removed {leftover}" in out and not leftover.exists()
    _assert_same_weights(_weights(run / "checkpoints" / "last.pt"), reference, f"kill at {k}")


# ----------------------------------------------------------------------------- checkpoints
class _CreatesAFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_crafted_checkpoint_runs_no_code(tmp_path, capsys):
    """A pickle whose __reduce__ would create a file: every way of loading it refuses, and
    the file is never created."""
    marker = tmp_path / "pwned"
    run = tmp_path / "crafted"
    (run / "checkpoints").mkdir(parents=True)
    evil = run / "checkpoints" / "last.pt"
    torch.save({"format": "colenv-checkpoint", "version": 1, "x": _CreatesAFile(marker)}, evil)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps(_CreatesAFile(marker)))
    assert not marker.exists()
    for path in (evil, plain):
        with pytest.raises(CheckpointError, match="cannot be read") as err:
            read_checkpoint(path)
        assert str(path) in str(err.value)
    for argv in (
        ["resume", str(run)],
        ["evaluate", str(evil)],
        ["train", TASK, f"resume={evil}", *_overrides(tmp_path)],
    ):
        assert main(argv) == 2
        printed = capsys.readouterr().err
        assert str(evil) in printed and printed.count("\n") == 1
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_random_bytes_are_always_a_checkpoint_error(tmp_path):
    """Garbage of every shape (plain, behind a pickle header, behind a zip header) is a
    CheckpointError naming the file, never another exception from inside torch.load."""
    path = tmp_path / "garbage.pt"
    for seed in range(60):
        rng = random.Random(seed)
        head = (b"", b"\x80\x02", b"\x80\x04\x95", b"PK\x03\x04")[seed % 4]
        path.write_bytes(head + rng.randbytes(rng.randint(1, 400)))
        with pytest.raises(CheckpointError) as err:
            read_checkpoint(path)
        assert str(path) in str(err.value)


def test_a_checkpoint_with_the_right_header_but_a_wrong_body_is_refused(tmp_path, capsys):
    train(load_config(TASK, _overrides(tmp_path, "run_name=good", steps=1)))
    good = read_checkpoint(tmp_path / "good")
    path = tmp_path / "forged.pt"
    bad_weights = {**good["state_dict"], "feedforward.weight": torch.zeros(2, 2)}
    for key, value in (("task", None), ("model", {"kind": "columns"}), ("state_dict", [1])):
        forged = dict(good)
        if value is None:
            del forged[key]
        else:
            forged[key] = value
        torch.save(forged, path)
        with pytest.raises(CheckpointError, match="damaged") as err:
            read_checkpoint(path)
        assert str(path) in str(err.value)
        assert main(["evaluate", str(path)]) == 2
        assert capsys.readouterr().err.count("\n") == 1
    torch.save({**good, "state_dict": bad_weights}, path)  # shapes record and weights disagree
    assert main(["evaluate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "feedforward.weight is [2, 2] in the checkpoint" in err and str(path) in err


@pytest.mark.parametrize("kind", ["empty", "truncated", "foreign", "garbage"])
def test_a_broken_checkpoint_is_one_clear_error_naming_it(tmp_path, capsys, kind):
    run = tmp_path / "broken"
    (run / "checkpoints").mkdir(parents=True)
    path = run / "checkpoints" / "last.pt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        buffer = tmp_path / "whole.pt"
        torch.save({"format": "colenv-checkpoint", "w": torch.zeros(1000)}, buffer)
        data = buffer.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "foreign":
        torch.save({"model": torch.zeros(3)}, path)
    else:
        path.write_bytes(os.urandom(256))
    for argv in (["resume", str(run)], ["evaluate", str(run)]):
        assert main(argv) == 2
        printed = capsys.readouterr().err
        assert printed.startswith("error: ") and printed.count("\n") == 1
        assert str(path) in printed


def test_resume_falls_back_to_best_and_says_so(tmp_path, capsys):
    train(load_config(TASK, _overrides(tmp_path, "run_name=b", steps=3)))
    run = tmp_path / "b"
    (run / "checkpoints" / "last.pt").unlink()  # as after a kill before the first last.pt
    capsys.readouterr()
    assert main(["resume", str(run)]) == 0
    out = capsys.readouterr().out
    best = run / "checkpoints" / "best.pt"
    assert f"from {best} at step" in out
    assert f"no last.pt in {run / 'checkpoints'}: using best.pt" in out


def test_resume_with_no_checkpoint_at_all_names_the_folder(tmp_path, capsys):
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    assert main(["resume", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint in run folder" in err and "last.pt and best.pt" in err


# ----------------------------------------------------------------------------- run folders
@pytest.mark.parametrize(
    "name", ["../x", "../../x", "/abs", "/tmp/abs-run", ".", "..", "a/b", " x", "a\tb", "a\\b"]
)
def test_hostile_run_names_are_refused_before_anything_is_written(tmp_path, name):
    runs = tmp_path / "deep" / "runs"
    toml = '"' + name.replace("\\", "\\\\").replace("\t", "\\t") + '"'
    with pytest.raises(ConfigError, match="run_name") as err:
        train(load_config(TASK, _overrides(runs, f"run_name={toml}")))
    assert "one plain folder name" in str(err.value)
    assert not (tmp_path / "deep").exists() and not Path("/tmp/abs-run").exists()


def test_an_empty_run_name_is_a_fresh_folder_inside_the_runs_folder(tmp_path):
    result = train(load_config(TASK, _overrides(tmp_path, "run_name=''", steps=1)))
    assert Path(result.run_dir).parent == tmp_path and Path(result.run_dir).name.startswith("xor")


def test_a_reused_run_name_is_refused_and_the_first_run_is_intact(tmp_path, capsys):
    first = train(load_config(TASK, _overrides(tmp_path, "run_name=mine", steps=2)))
    before = {p.name: p.read_bytes() for p in (tmp_path / "mine" / "checkpoints").iterdir()}
    code = main(["train", TASK, *_overrides(tmp_path, "run_name=mine", "train.lr=0.5")])
    err = capsys.readouterr().err
    assert code == 2
    run = tmp_path / "mine"
    assert f"run folder {run} already holds a run" in err
    assert f"python -m trainers resume {run}" in err and "another run_name" in err
    after = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    assert after == before and first.steps == 2


def test_resume_of_a_copied_folder_continues_in_the_copy(tmp_path):
    import shutil

    train(load_config(TASK, _overrides(tmp_path, "run_name=orig", steps=2)))
    orig = tmp_path / "orig"
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(orig, copy)
    before = {p.name: p.read_bytes() for p in (orig / "checkpoints").iterdir()}
    result = train(resume_config(copy, ["train.steps=4"]))
    assert Path(result.run_dir) == copy.resolve() and result.steps == 4
    assert read_checkpoint(copy / "checkpoints" / "last.pt")["step"] == 4
    after = {p.name: p.read_bytes() for p in (orig / "checkpoints").iterdir()}
    assert after == before  # the original is untouched


def test_resume_with_a_new_run_name_branches_into_a_new_folder(tmp_path):
    train(load_config(TASK, _overrides(tmp_path, "run_name=trunk", steps=2)))
    result = train(resume_config(tmp_path / "trunk", ["run_name=branch", "train.steps=3"]))
    assert Path(result.run_dir) == tmp_path / "branch" and result.steps == 3
    assert read_checkpoint(tmp_path / "trunk")["step"] == 2
    with pytest.raises(ConfigError, match="already holds a run"):  # the branch is a new run
        train(resume_config(tmp_path / "trunk", ["run_name=branch"]))


def test_two_trainings_into_one_folder_at_once_are_refused(tmp_path):
    """A lock held by another process (here: another open file description, which flock
    treats alike) refuses a new run and a resume; once released, the resume goes on."""
    train(load_config(TASK, _overrides(tmp_path, "run_name=busy", steps=1)))
    holder = RunFolder.open(tmp_path, "busy", task=TASK, resuming=True)
    try:
        with pytest.raises(ConfigError, match=f"run folder {tmp_path / 'busy'} is in use"):
            train(resume_config(tmp_path / "busy", ["train.steps=2"]))
    finally:
        holder.close()
    assert train(resume_config(tmp_path / "busy", ["train.steps=2"])).steps == 2


def test_a_stale_lock_file_does_not_block_resume(tmp_path):
    train(load_config(TASK, _overrides(tmp_path, "run_name=stale", steps=1)))
    (tmp_path / "stale" / ".lock").write_text("999999\n")  # left by a killed process
    assert train(resume_config(tmp_path / "stale", ["train.steps=2"])).steps == 2


def test_a_run_folder_that_cannot_be_written_is_an_error_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = main(["train", TASK, *_overrides(tmp_path), f"logging.run_dir='{blocker / 'runs'}'"])
    err = capsys.readouterr().err
    assert code == 2 and str(blocker) in err and "nothing was trained" in err
    # a run folder whose checkpoints/ is a file: refused before the first step
    run = tmp_path / "odd"
    train(load_config(TASK, _overrides(tmp_path, "run_name=odd", steps=1)))
    for p in (run / "checkpoints").iterdir():
        p.unlink()
    (run / "checkpoints").rmdir()
    (run / "checkpoints").write_text("")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        RunFolder.open(tmp_path, "odd", task=TASK, resuming=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_run_folder_is_refused_before_any_work(tmp_path, capsys):
    train(load_config(TASK, _overrides(tmp_path, "run_name=ro", steps=1)))
    run = tmp_path / "ro"
    for folder in (run / "checkpoints", run):
        folder.chmod(0o555)
    try:
        started = time.perf_counter()
        assert main(["resume", str(run), "train.steps=30"]) == 2
        err = capsys.readouterr().err
        assert f"cannot write into {run}" in err and "nothing was trained" in err
        assert time.perf_counter() - started < 20
    finally:
        for folder in (run, run / "checkpoints"):
            folder.chmod(0o755)


# ----------------------------------------------------------------------------- resume
def test_the_task_on_the_command_line_must_be_the_resumed_runs(tmp_path, capsys):
    train(load_config(TASK, _overrides(tmp_path, "run_name=x", steps=1)))
    code = main(["train", "colenv/Parity-v0", f"resume={tmp_path / 'x'}"])
    err = capsys.readouterr().err
    assert code == 2 and "'colenv/XOR-v0'" in err and "'colenv/Parity-v0'" in err
    code = main(["train", "config/tasks/parity.toml", f"resume={tmp_path / 'x'}"])
    assert code == 2 and "'colenv/Parity-v0'" in capsys.readouterr().err


def test_resume_into_a_network_of_other_sizes_is_refused(tmp_path):
    train(load_config(TASK, _overrides(tmp_path, "run_name=n", steps=1)))
    areas = "[{name='a1', n_columns=2}, {name='a2', n_columns=2}, {name='a3', n_columns=1}]"
    with pytest.raises(CheckpointError, match="does not fit the model"):
        train(resume_config(tmp_path / "n", [f"model.network.areas={areas}"]))
    # the same checkpoint named by a fresh config's resume= key: refused before a folder
    with pytest.raises(CheckpointError, match="does not fit the model"):
        train(
            load_config(
                TASK,
                _overrides(tmp_path, "run_name=m", f"resume='{tmp_path / 'n'}'")
                + [f"model.network.areas={areas}"],
            )
        )
    assert not (tmp_path / "m").exists()


class LearningRates(Callback):
    def __init__(self) -> None:
        self.lrs: dict[int, float] = {}

    def on_step_end(self, state):
        self.lrs[state.step] = state.lr


def test_a_larger_budget_on_resume_follows_the_new_schedule(tmp_path):
    """steps=3 then resumed with train.steps=8: from step 3 on, the learning rate is the
    one of a run started with 8 steps (the cosine horizon moved; it does not restart)."""
    full = LearningRates()
    train(load_config(TASK, _overrides(tmp_path, "run_name=f8", steps=8)), [full])
    train(load_config(TASK, _overrides(tmp_path, "run_name=s3", steps=3)))
    resumed = LearningRates()
    config = resume_config(tmp_path / "s3", ["train.steps=8"])
    train(config, [CheckpointCallback(every=1), resumed])
    assert sorted(resumed.lrs) == [4, 5, 6, 7, 8]
    for step, lr in resumed.lrs.items():
        assert lr == pytest.approx(full.lrs[step], rel=1e-12), step
    assert resumed.lrs[4] < 0.05 * (1 + np.cos(np.pi * 3 / 8)) / 2  # no restart at 0.05


class RandomUser(Callback):
    """Draws from every global generator each step (as user code may) and records the
    generators' states after each step and at the start of fitting."""

    def __init__(self) -> None:
        self.at_step: dict[int, tuple] = {}
        self.at_start: tuple | None = None

    @staticmethod
    def states(state) -> tuple:
        return (
            torch.get_rng_state(),
            np.random.get_state()[1].copy(),  # noqa: NPY002
            random.getstate(),
            state.trial_generator.get_state(),
        )

    def on_fit_start(self, state):
        self.at_start = self.states(state)

    def on_step_end(self, state):
        torch.rand(3)
        np.random.rand(3)  # noqa: NPY002
        random.random()
        self.at_step[state.step] = self.states(state)


def test_resume_restores_every_random_generator_to_the_interrupted_step(tmp_path):
    full = RandomUser()
    extra = ("train.conditions=random", "train.batch_size=3")
    train(load_config(TASK, _overrides(tmp_path, "run_name=full", *extra, steps=4)), [full])
    train(
        load_config(TASK, _overrides(tmp_path, "run_name=part", *extra, steps=4)),
        [RandomUser(), CheckpointCallback(every=1), StopAt(2)],
    )
    resumed = RandomUser()
    train(resume_config(tmp_path / "part"), [resumed, CheckpointCallback(every=1)])
    want, got = full.at_step[2], resumed.at_start
    assert torch.equal(want[0], got[0])
    assert np.array_equal(want[1], got[1])
    assert want[2] == got[2]
    assert torch.equal(want[3], got[3])
    assert not torch.equal(full.at_step[1][0], want[0])  # the states do move between steps


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("solver.step_ms=0.3", "step_ms=0.3 must divide the trial's time step dt_ms=1.0"),
        ("success.metric=acc", "success.metric = 'acc' is not a metric of colenv/XOR-v0"),
        ("trainer=foo", "unknown trainer 'foo'"),
        ("success.threshold=nan", "success.threshold"),
        ("model.initial_state='condition:nope'", "no condition 'nope'"),
        ("task_kwargs.input_hz=nan", "input_hz"),
    ],
)
def test_bad_values_are_refused_before_a_run_folder_exists(tmp_path, capsys, extra, message):
    code = main(["train", TASK, *_overrides(tmp_path, "logging.wandb=true", steps=2), extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not any(tmp_path.iterdir())  # no run folder, no W&B run


def test_task_kwargs_with_non_finite_targets_name_the_kwarg(tmp_path, capsys):
    task = "colenv/Bifurcation-v0"
    code = main(["train", task, *tiny_overrides(task, tmp_path), "task_kwargs.mu_amplitude=100.0"])
    err = capsys.readouterr().err
    assert code == 2 and "mu_amplitude=100" in err and "non-finite targets" in err
    assert not any(tmp_path.iterdir())


def test_a_model_that_is_not_finite_at_its_initial_weights_blames_the_model(tmp_path, capsys):
    ones = "[" + ", ".join(["[" + ", ".join(["1.0"] * 8) + "]"] * 8) + "]"
    code = main(["train", TASK, *_overrides(tmp_path), f'model.params={{"connectivity.p"={ones}}}'])
    err = capsys.readouterr().err
    assert code == 2 and "at its initial weights, before any training" in err
    assert "model.params" in err and not any(tmp_path.iterdir())


def test_train_to_criterion_end_to_end(tmp_path):
    """The rate RNN on XOR (config/tasks/xor_ctrnn.toml) solves it in ~20 steps, seconds."""
    config = load_config(
        "config/tasks/xor_ctrnn.toml",
        [f"logging.run_dir='{tmp_path}'", "logging.wandb=false", "logging.plots=false"],
    )
    result = train(config)
    assert result.solved and not result.diverged, result.message
    assert result.metrics["accuracy"] == 1.0 and result.steps < config.train.steps
    assert read_checkpoint(result.checkpoint)["solved"]


# ----------------------------------------------------------------------------- tasks
def test_fractional_binary_conditions_are_refused_not_truncated():
    import gymnasium as gym

    task = gym.make("colenv/XOR-v0").unwrapped
    with pytest.raises(ValueError, match=r"conditions\['bits'\] must be whole numbers") as err:
        task.sample_batch(conditions={"bits": [[0.5, 1.7]]})
    assert "allowed values: 0, 1" in str(err.value) and "0.5" in str(err.value)
    with pytest.raises(ValueError, match=r"must be 0 or 1"):
        task.sample_batch(conditions={"bits": [[0, 2]]})
    with pytest.raises(ValueError, match="whole numbers"):
        task.reset(seed=0, options={"conditions": {"bits": [[1.0, float("nan")]]}})
    trial = task.sample_batch(conditions={"bits": [[1.0, 0.0]]})  # whole floats are fine
    assert trial.conditions["bits"].tolist() == [[1, 0]]


@pytest.mark.parametrize("task_id", ["colenv/XOR-v0", "colenv/Bifurcation-v0"])
def test_actions_outside_the_action_space_are_refused(task_id):
    import gymnasium as gym

    env = gym.make(task_id).unwrapped
    env.reset(seed=0)
    low, high = env.action_space.low, env.action_space.high
    for bad in (high + 0.5, low - 0.5):
        with pytest.raises(ValueError, match="outside the action space"):
            env.step(bad)
    env.step(high)  # the bounds themselves are inside
    env.step(low)


def test_a_task_that_builds_nan_names_the_non_finite_input(tmp_path, capsys):
    """A user's task whose stimulus is NaN for one pattern: sample_batch names the stimulus,
    the time, the trial and its conditions; training refuses before a run folder exists
    (not a "use a smaller step_ms" divergence after the first step)."""
    import gymnasium as gym

    from colenv.tasks.xor import XOR

    class NanXOR(XOR):
        def _build(self, conditions, generator):
            stimulus, target, mask, extra = super()._build(conditions, generator)
            both = conditions["bits"].sum(dim=1) == 2
            stimulus[-1, both, 0] = float("nan")
            return stimulus, target, mask, extra

    task_id = "colenv-faults/NanXOR-v0"
    if task_id not in gym.registry:
        gym.register(id=task_id, entry_point=NanXOR)
    task = gym.make(task_id, dt_ms=10.0).unwrapped
    with pytest.raises(ValueError, match=r"non-finite stimulus \(nan at t = 990 ms, trial 3"):
        task.sample_batch(conditions="all")
    code = main(["train", TASK, *_overrides(tmp_path), f"task={task_id}"])
    err = capsys.readouterr().err
    assert code == 2 and "non-finite stimulus" in err and "bits=[1, 1]" in err
    assert "step_ms" not in err and not any(tmp_path.iterdir())


def test_a_budget_below_the_checkpoint_is_refused(tmp_path):
    train(load_config(TASK, _overrides(tmp_path, "run_name=ahead", steps=3)))
    with pytest.raises(ConfigError, match="train.steps = 2 but .* is at step 3"):
        train(resume_config(tmp_path / "ahead", ["train.steps=2"]))


def test_a_too_long_run_name_is_refused():
    with pytest.raises(ConfigError, match="at most 200"):
        load_config(TASK, [f"run_name={'x' * 300}"])


def test_a_full_disk_mid_run_stops_with_an_error_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch, capsys
):
    import errno

    import trainers.checkpoint as checkpoint_module

    real_save, calls = checkpoint_module.torch.save, []

    def save(obj, fh, *args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            fh.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, fh, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save)
    code = main(["train", TASK, *_overrides(tmp_path, "run_name=full", steps=6)])
    err = capsys.readouterr().err
    assert code == 1 and "No space left on device" in err and "intact" in err
    monkeypatch.undo()
    folder = tmp_path / "full" / "checkpoints"
    assert read_checkpoint(folder / "last.pt")["step"] >= 1
    assert not list(folder.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("model.network.areas=5", "expected a list of tables with keys name, n_columns"),
        ('model.params={"connectivity.p"=1.0}', "expected a list of lists of float"),
        ("train.device=mps", "train.device = 'mps'"),
    ],
)
def test_model_file_and_device_mistakes_are_named(tmp_path, capsys, extra, message):
    if extra == "train.device=mps" and torch.backends.mps.is_available():
        pytest.skip("MPS is available here")
    code = main(["train", TASK, *_overrides(tmp_path), extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert "Traceback" not in err and not any(tmp_path.iterdir())


def test_a_config_file_without_a_task_is_an_error(tmp_path, capsys):
    toml = tmp_path / "mine.toml"
    toml.write_text("[train]\nsteps = 3\n")
    assert main(["train", str(toml)]) == 2
    err = capsys.readouterr().err
    assert f"{toml}: no task" in err and 'task = "colenv/XOR-v0"' in err


def test_bifurcation_refuses_kwargs_whose_reference_overflows_when_made():
    import gymnasium as gym

    for kwargs, culprit in (
        ({"mu_amplitude": 100.0}, "mu_amplitude=100"),
        ({"mu_offset": 50.0}, "mu_offset=50"),
        ({"trial_ms": 2_000_000.0, "dt_ms": 1000.0}, "trial_ms=2e+06"),
    ):
        with pytest.raises(ValueError, match="give non-finite targets") as err:
            gym.make("colenv/Bifurcation-v0", **kwargs)
        assert culprit in str(err.value)
    near = gym.make("colenv/Bifurcation-v0", mu_amplitude=40.0).unwrapped  # still finite
    assert torch.isfinite(near.sample_batch(32, seed=0).target).all()
