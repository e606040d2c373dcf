"""Weights & Biases as a callback that never stops or crashes training.

Offline by default: the run is written under ``<run>/wandb/offline-run-*`` with no network
and no API key, and can be uploaded later with ``wandb sync <that folder>``. The mode is
``logging.wandb_mode`` unless the ``WANDB_MODE`` environment variable holds a W&B mode (an
empty ``WANDB_MODE`` counts as unset; any other value is ignored with a warning). Project,
group, tags and notes come from ``logging.project``, ``logging.group``, ``logging.tags`` and
``logging.notes``.

Keys: ``train/loss``, ``train/step``, ``charts/lr``, ``solver/nfe``, ``perf/trials_per_s``
every step; ``eval/<metric>`` at each evaluation; the plots as images and the final
checkpoint as an artifact at the end.

What is guaranteed:

- **W&B never stops training.** Whatever fails on the W&B side (wandb not importable, an
  invalid ``WANDB_MODE``, no API key, no network, W&B's config, cache or data folder not
  writable, the checkpoint artifact not staged, the W&B service gone) becomes one warning on
  stderr that says what failed, what happens instead and how to fix it; training goes on and
  writes its checkpoints, plots and ``metrics.jsonl`` as usual.
- **An online run that cannot start logs offline.** ``wandb.init`` gives up after
  :data:`INIT_TIMEOUT_S` seconds (``WANDB_INIT_TIMEOUT`` when set), or at once when no API key
  is configured, and the run is logged offline instead, to be uploaded with ``wandb sync``.
- **W&B's folders under an unwritable HOME** (``WANDB_CONFIG_DIR``, ``WANDB_CACHE_DIR``,
  ``WANDB_DATA_DIR``: settings, cache and artifact staging) move into ``<run>/wandb/home/``
  for the run.
- **Metrics survive a kill.** :class:`MetricsLog` appends one JSON line per evaluation to
  ``<run>/metrics.jsonl`` and flushes and fsyncs it before training continues, so a
  ``kill -9`` loses at most the evaluation in progress. The offline ``.wandb`` file is the
  copy to upload: W&B's service writes it every :data:`FLUSH_INTERVAL_S` seconds and does not
  flush it when the training process is killed, so it may lack the last second of a killed
  run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainers.callbacks import Callback
from trainers.checkpoint import config_to_dict
from trainers.rundir import append_line
from trainers.types import Result, TrainState

__all__ = [
    "FLUSH_INTERVAL_S",
    "INIT_TIMEOUT_S",
    "METRICS_FILE",
    "MetricsLog",
    "WandbLogger",
    "read_metrics",
    "read_offline_run",
    "resolve_mode",
]

WANDB_MODES = ("offline", "online", "disabled", "dryrun", "shared", "run")
"""What ``wandb.init(mode=...)`` accepts (``dryrun`` = offline; ``run``, ``shared`` online)."""

ONLINE_MODES = ("online", "run", "shared")

INIT_TIMEOUT_S = 10.0
"""``wandb.init`` gives up after this many seconds (unless ``WANDB_INIT_TIMEOUT`` is set); an
online run that cannot connect in time is logged offline instead."""

FINISH_TIMEOUT_S = 60.0
"""``run.finish`` stops waiting (for an online run's uploads) this long after training ended;
what is not uploaded stays in ``<run>/wandb`` for ``wandb sync``."""

FLUSH_INTERVAL_S = 1.0
"""W&B's service writes the run's ``.wandb`` file at least this often."""

METRICS_FILE = "metrics.jsonl"
"""One JSON object per evaluation, in the run folder: the record that survives a kill."""

_DIRS = ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")
"""W&B's folders outside the run folder (default under HOME)."""


def _warn(what: str, instead: str, fix: str, subject: str = "W&B") -> str:
    """Print one warning to stderr: what failed, what happens instead, how to fix it."""
    message = f"warning: {subject}: {what}. {instead[:1].upper()}{instead[1:]}. To fix: {fix}."
    print(message, file=sys.stderr, flush=True)
    return message


def _first_line(err: BaseException) -> str:
    """``Type: message`` on one line (a validation error keeps the field it names)."""
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("For further information")]
    if not lines:
        return type(err).__name__
    keep = 3 if "validation error" in lines[0] else 1
    return f"{type(err).__name__}: {'; '.join(lines[:keep])}"


def resolve_mode(config_mode: str, environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """The W&B mode of a run and, when ``WANDB_MODE`` was ignored, why.

    ``WANDB_MODE`` wins when it is one of :data:`WANDB_MODES`; unset or empty, the config's
    mode applies; any other value is ignored (the config's mode applies) and the second item
    says so. Returns ``(mode, problem)``, ``problem`` empty when there is none.
    """
    env = os.environ if environ is None else environ
    value = env.get("WANDB_MODE")
    if value is None or value == "":
        return config_mode, ""
    if value in WANDB_MODES:
        return value, ""
    return config_mode, (
        f"the WANDB_MODE environment variable is {value!r}, not a W&B mode (allowed: "
        f"{', '.join(WANDB_MODES)}, or empty)"
    )


def _writable(path: Path) -> bool:
    """Whether a folder exists and is writable, or could be created (its nearest existing
    ancestor is a writable folder). Creates nothing."""
    path = path.expanduser().absolute()
    while not path.exists():
        if path.parent == path:
            return False
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def _default_dirs(wandb) -> dict[str, Path]:
    """Where W&B keeps its settings, cache and data (artifact staging) for this process."""
    config_dir = os.environ.get("WANDB_CONFIG_DIR") or str(
        Path("~", ".config", "wandb").expanduser()
    )
    return {
        "WANDB_CONFIG_DIR": Path(config_dir),
        "WANDB_CACHE_DIR": Path(wandb.env.get_cache_dir()),
        "WANDB_DATA_DIR": Path(wandb.env.get_data_dir()),
    }


def _plain(value: Any) -> Any:
    """JSON for tensors and numpy values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


class MetricsLog(Callback):
    """Appends one JSON line per evaluation to ``<run>/metrics.jsonl`` (``step``, ``time``,
    ``train/loss``, ``eval/<metric>``, ``eval/solved``), flushed and fsync'd before training
    goes on: the record of a run that survives a ``kill -9`` up to its last evaluation.

    The file is append-only: a resumed run adds its evaluations after the earlier ones (a step
    that appears twice was trained again, after a resume or a rejected update; the later line
    is the one that counts). Non-finite values are written as ``NaN`` / ``Infinity`` (Python's ``json`` reads
    them; :func:`read_metrics` returns the rows).
    """

    def __init__(self, filename: str = METRICS_FILE) -> None:
        self.filename = filename
        self.path: Path | None = None
        self.failed = False

    def on_fit_start(self, state: TrainState) -> None:
        self.path = state.run_dir / self.filename

    def on_eval_end(self, state: TrainState, metrics: dict[str, float]) -> None:
        if self.path is None or self.failed:
            return
        row: dict[str, Any] = {"step": state.step, "time": time.time(), "train/loss": state.loss}
        row.update({f"eval/{k}": v for k, v in metrics.items()})
        row["eval/solved"] = bool(state.solved)
        line = json.dumps(row, default=_plain) + "\n"
        try:
            append_line(self.path, line)
        except OSError as err:
            self.failed = True
            _warn(
                f"cannot append to {self.path} ({_first_line(err)})",
                "training goes on; the metrics are in the checkpoints' history and, when W&B "
                "logs, in W&B",
                f"make {self.path.parent} writable (or free disk space)",
                subject=METRICS_FILE,
            )


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """The rows of ``<run>/metrics.jsonl`` (``run`` a run folder or the file). A last line cut
    short by a kill is skipped."""
    path = Path(run)
    if path.is_dir():
        path = path / METRICS_FILE
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class WandbLogger(Callback):
    """Logs a run to W&B (offline unless configured otherwise); the local metrics record is
    :class:`MetricsLog`, a callback of its own that every run gets.

    Args:
        project: W&B project.
        mode: the config's mode (``offline``, ``online``, ``disabled``); ``WANDB_MODE``
            overrides it when it holds a W&B mode.
        group, tags, notes: W&B group, tags and notes; None = ``logging.group`` /
            ``logging.tags`` / ``logging.notes`` of the run's config.

    Every W&B failure is one warning on stderr (see the module's docstring); ``warnings``
    keeps their texts and ``mode`` the mode the run was logged in (``""`` when W&B is off).
    """

    def __init__(
        self,
        project: str = "colenv",
        mode: str = "offline",
        *,
        group: str | None = None,
        tags: list[str] | None = None,
        notes: str | None = None,
    ) -> None:
        self.project = project
        self.config_mode = mode
        self.mode = mode
        self.group, self.tags, self.notes = group, tags, notes
        self.run = None
        self.local_dir: Path | None = None
        """folder of the local W&B run (``<run>/wandb/offline-run-*``), once started"""
        self.warnings: list[str] = []
        self._wandb = None
        self._env_saved: dict[str, str | None] = {}
        self._last_step = -1  # the last W&B step committed
        self._step_offset = 0  # W&B step = train step + offset (steps redone after a rollback)

    # ------------------------------------------------------------------ helpers
    def _warn(self, what: str, instead: str, fix: str) -> None:
        self.warnings.append(_warn(what, instead, fix))

    def _set_env(self, key: str, value: str | None) -> None:
        """Set (or remove) an environment variable until the end of the run."""
        if key not in self._env_saved:
            self._env_saved[key] = os.environ.get(key)
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value

    def _restore_env(self) -> None:
        for key, value in self._env_saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._env_saved = {}

    def _local_files(self, state: TrainState) -> str:
        return (
            f"training goes on; checkpoints, plots and {METRICS_FILE} are written to "
            f"{state.run_dir} as usual"
        )

    def _wb_step(self, step: int) -> int:
        """The W&B step of training step ``step``: W&B steps only increase, so a step trained
        again after a rejected update (or a final log at a committed step) moves on."""
        if step + self._step_offset <= self._last_step:
            self._step_offset = self._last_step - step + 1
        return step + self._step_offset

    def _settings(self, wandb, mode: str):
        """``wandb.Settings`` of a run: quiet, no system stats, bounded start and finish, the
        ``.wandb`` file written every :data:`FLUSH_INTERVAL_S` seconds."""
        timeout = INIT_TIMEOUT_S
        env_timeout = os.environ.get("WANDB_INIT_TIMEOUT", "")
        try:
            if float(env_timeout) > 0:
                timeout = float(env_timeout)
        except ValueError:
            pass
        wanted: dict[str, Any] = {
            "x_disable_stats": True,
            "console": "off",
            "silent": True,
            "disable_git": True,
            "init_timeout": timeout,
            "x_transaction_log_flush_interval": FLUSH_INTERVAL_S,
            "finish_timeout": FINISH_TIMEOUT_S,
        }
        known = getattr(wandb.Settings, "model_fields", None)
        if known is not None:  # settings this wandb version has
            wanted = {k: v for k, v in wanted.items() if k in known}
        return wandb.Settings(**wanted)

    def _has_api_key(self, wandb) -> bool | None:
        """Whether W&B credentials are configured (environment, .netrc, identity token),
        checked without network and without prompting; None when this wandb cannot tell."""
        try:
            from wandb.sdk.lib import wbauth

            host = wandb.setup().settings.base_url
            auth = wbauth.authenticate_session(
                host=host, source="colenv", prompt=False, update_session=False
            )
        except Exception:
            return None
        return auth is not None

    def _init(self, wandb, state: TrainState, mode: str):
        config = state.config
        logging = getattr(config, "logging", None)
        group = self.group if self.group is not None else getattr(logging, "group", "")
        tags = self.tags if self.tags is not None else getattr(logging, "tags", [])
        notes = self.notes if self.notes is not None else getattr(logging, "notes", "")
        return wandb.init(
            project=self.project,
            group=group or None,
            tags=list(tags) or None,
            notes=notes or None,
            mode=mode,
            dir=str(state.run_dir),
            name=state.run_dir.name,
            config=config_to_dict(config),
            settings=self._settings(wandb, mode),
            reinit="create_new",
        )

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, state: TrainState) -> None:
        state.run_dir.mkdir(parents=True, exist_ok=True)
        self.run, self.local_dir, self._last_step, self._step_offset = None, None, -1, 0
        local = self._local_files(state)
        self.mode, problem = resolve_mode(self.config_mode)
        if problem:
            self._set_env("WANDB_MODE", None)  # wandb would refuse to start with it
            self._warn(
                problem,
                f"W&B logs in logging.wandb_mode = {self.config_mode!r} instead",
                "unset WANDB_MODE or set it to offline, online or disabled",
            )
        elif os.environ.get("WANDB_MODE") == "":
            self._set_env("WANDB_MODE", None)  # empty = unset; wandb itself would refuse it
        if self.mode == "disabled":
            self.mode = ""
            return
        try:
            import wandb
        except Exception as err:  # not installed, or an install that fails to import
            self.mode = ""
            self._warn(
                f"the wandb package cannot be imported ({_first_line(err)})",
                f"the run is not logged to W&B; {local}",
                "pip install wandb (or set logging.wandb=false)",
            )
            return
        self._wandb = wandb
        self._move_unwritable_dirs(wandb, state)
        try:  # W&B's own messages off: what matters is said once, here
            wandb.setup(settings=wandb.Settings(silent=True))
        except Exception as err:  # e.g. a WANDB_* variable wandb cannot parse
            self.mode = ""
            self._warn(
                f"wandb cannot start ({_first_line(err)})",
                f"the run is not logged to W&B; {local}",
                "correct or unset the WANDB_* environment variable it names (`env | grep "
                "WANDB_`), or set logging.wandb=false",
            )
            return

        mode, online_problem = self.mode, ""
        if mode in ONLINE_MODES and self._has_api_key(wandb) is False:
            online_problem = "no W&B API key is configured (WANDB_API_KEY unset, no `wandb login`)"
        else:
            started = time.monotonic()
            try:
                self.run = self._init(wandb, state, mode)
            except Exception as err:
                if mode not in ONLINE_MODES:
                    self.mode = ""
                    self._warn(
                        f"the {mode} run could not start ({_first_line(err)})",
                        f"the run is not logged to W&B; {local}",
                        "check the W&B environment variables (WANDB_*) and that "
                        f"{state.run_dir / 'wandb'} is writable, or set logging.wandb=false",
                    )
                    return
                waited = time.monotonic() - started
                within = f" within {waited:.0f} s" if waited >= 1 else ""
                online_problem = f"the online run could not start{within} ({_first_line(err)})"
        if online_problem:
            try:
                self.run = self._init(wandb, state, "offline")
            except Exception as err:
                self.mode = ""
                self._warn(
                    f"{online_problem}, and the offline run could not start either "
                    f"({_first_line(err)})",
                    f"the run is not logged to W&B; {local}",
                    "wandb login (or set WANDB_API_KEY), check the network, or set "
                    "logging.wandb_mode=offline",
                )
                return
            self.mode = "offline"
            self._warn(
                online_problem,
                f"the run is logged offline instead, to {Path(self.run.dir).parent}; upload "
                f"it later with `wandb sync {Path(self.run.dir).parent}`; {local}",
                "wandb login (or set WANDB_API_KEY) and check that the W&B server is "
                "reachable, or set logging.wandb_mode=offline",
            )
        self.local_dir = Path(self.run.dir).parent

    def _move_unwritable_dirs(self, wandb, state: TrainState) -> None:
        """Point W&B's settings, cache and data folders into the run folder when they are not
        writable (an unwritable or missing HOME), with one warning."""
        try:
            dirs = _default_dirs(wandb)
        except Exception:
            return
        bad = {key: path for key, path in dirs.items() if not _writable(path)}
        if not bad:
            return
        home = state.run_dir / "wandb" / "home"
        for key in bad:
            self._set_env(key, str(home / key.removeprefix("WANDB_").removesuffix("_DIR").lower()))
        listed = ", ".join(f"{key} = {path}" for key, path in bad.items())
        self._warn(
            f"cannot write to its folders ({listed}; HOME = {os.environ.get('HOME', '')!r})",
            f"W&B keeps them in {home} for this run instead",
            "make HOME writable or set " + ", ".join(bad) + " to writable folders",
        )

    def _log(self, data: dict[str, Any], step: int, *, commit: bool) -> None:
        if self.run is None:
            return
        wb_step = self._wb_step(step)
        try:
            self.run.log(data, step=wb_step, commit=commit)
        except Exception as err:
            self._lost(err)
            return
        if commit:
            self._last_step = wb_step

    def _lost(self, err: Exception) -> None:
        where = self.local_dir or "the run folder"
        self.run = None
        self.mode = ""
        self._warn(
            f"logging failed ({_first_line(err)})",
            f"W&B logging stops for this run; what was logged so far is in {where}; training "
            f"goes on and writes its checkpoints, plots and {METRICS_FILE} as usual",
            "check that the W&B service (wandb-core) can run and the disk is not full",
        )

    def on_step_end(self, state: TrainState) -> None:
        self._log(
            {
                "train/loss": state.loss,
                "train/step": state.step,
                "charts/lr": state.lr,
                "solver/nfe": state.nfe,
                "perf/trials_per_s": state.trials_per_s,
            },
            state.step,
            commit=True,  # the step's row goes to W&B's service now, not at the next step
        )

    def on_eval_end(self, state: TrainState, metrics: dict[str, float]) -> None:
        logged: dict[str, Any] = {f"eval/{k}": v for k, v in metrics.items()}
        logged["eval/solved"] = float(state.solved)
        self._log(logged, state.step, commit=False)  # joins the step's row

    def on_fit_end(self, state: TrainState, result: Result) -> None:
        try:
            self._finish(state, result)
        finally:
            self._restore_env()

    def _finish(self, state: TrainState, result: Result) -> None:
        if self.run is None:
            return
        wandb, run = self._wandb, self.run
        plots = [Path(p) for p in state.plot_paths if Path(p).exists()]
        if plots:
            try:
                images = {f"plots/{p.stem}": wandb.Image(str(p)) for p in plots}
                wb_step = self._wb_step(state.step)
                run.log({**images, "train/step": state.step}, step=wb_step, commit=True)
                self._last_step = wb_step
            except Exception as err:
                self._warn(
                    f"the plots could not be logged ({_first_line(err)})",
                    f"the W&B run is finished without them; they are in {plots[0].parent}",
                    "pip install pillow (wandb.Image reads the PNG files with it)",
                )
        try:
            run.summary["result/solved"] = result.solved
            run.summary["result/steps"] = result.steps
            run.summary["result/diverged"] = result.diverged
        except Exception as err:
            self._lost(err)
            return
        if state.checkpoint and Path(state.checkpoint).exists():
            try:
                artifact = wandb.Artifact(f"{state.run_dir.name}-checkpoint", type="model")
                artifact.add_file(state.checkpoint, name="last.pt")
                run.log_artifact(artifact)
            except Exception as err:
                self._warn(
                    f"the checkpoint could not be added to the run as an artifact "
                    f"({_first_line(err)})",
                    f"the W&B run is finished without it; the checkpoint is {state.checkpoint}",
                    "set WANDB_DATA_DIR to a writable folder with space for a copy of the "
                    "checkpoint",
                )
        try:
            run.finish()
        except Exception as err:
            self._warn(
                f"finishing the run failed ({_first_line(err)})",
                f"what was logged is in {self.local_dir}; training's results are unaffected",
                f"upload what is there with `wandb sync {self.local_dir}`",
            )
        self.run = None


def read_offline_run(path: str | Path, timeout_s: float = 60.0) -> dict[str, Any]:
    """What a local W&B run holds, read by wandb's own reader of ``.wandb`` files
    (``wandb leet inspect --json``).

    ``path`` is an ``offline-run-*`` folder or the ``.wandb`` file in it (a run cut short by a
    kill reads up to its last complete record). No network, no API key. Returns a dict:

    - ``history``: the history rows in order, ``[{key: value}, ...]`` (``_step`` included);
    - ``summary``: ``{key: value}`` as the run's summary updates left it;
    - ``run``: project, name, group, tags, notes and id of the run (empty if not recorded);
    - ``config``: the run's config (nested dict);
    - ``artifacts``: ``[{"name", "type"}, ...]`` logged artifacts.

    Raises:
        RuntimeError: this wandb has no ``leet inspect`` command, or it failed on ``path``.
    """
    path = Path(path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_ERROR_REPORTING="false")  # no network at all
    proc = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"`wandb leet inspect --json {path}` failed (exit {proc.returncode}): "
            f"{proc.stderr.strip()[-500:]}; reading .wandb files needs a wandb with that "
            "command"
        )
    out: dict[str, Any] = {"history": [], "summary": {}, "run": {}, "config": {}, "artifacts": []}
    for line in proc.stdout.splitlines():
        record = json.loads(line)
        kind = record.get("type")
        body = record.get(kind) or {}
        if kind == "history":
            out["history"].append(dict(body.get("item", {})))
        elif kind == "summary":
            out["summary"].update(body.get("update", {}))
        elif kind == "run" and not out["run"]:
            out["config"] = body.get("config", {}).get("update", {})
            out["run"] = {
                "project": body.get("project", ""),
                "name": body.get("display_name", ""),
                "group": body.get("run_group", ""),
                "tags": list(body.get("tags", [])),
                "notes": body.get("notes", ""),
                "id": body.get("run_id", ""),
            }
        elif kind == "artifact":
            out["artifacts"].append({"name": body.get("name", ""), "type": body.get("type", "")})
    return out
