"""One training run from a config, and the evaluation of a checkpoint.

    result = train(load_config("colenv/XOR-v0", ["train.steps=20"]))
    metrics = evaluate_checkpoint("runs/xor-v0-20260101-120000")

``train`` is what ``python -m trainers train`` calls. :func:`preflight` checks everything that
can be wrong (trainer name, device, task id and kwargs, finite stimuli and targets, the success
metric, the model against the task's inputs and outputs, the solver step against the task's
time grid, a resumed checkpoint against the model) before the run folder is claimed and locked
(:class:`trainers.rundir.RunFolder`), then hands ``fit(model, task, config, callbacks)`` to the
trainer with the default callbacks: progress, checkpoints, early stopping, the task's plots and
W&B. SIGINT and SIGTERM during training stop it at the end of the step in progress, with that
step saved in ``last.pt``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import signal
import sys
import threading
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from colenv import DivergenceError, Trial
from colenv.errors import ConfigError
from trainers.build import build_model, build_task, resolve_device, resolve_dtype
from trainers.callbacks import (
    Callback,
    Callbacks,
    CheckpointCallback,
    EarlyStopping,
    PlotCallback,
    ProgressBar,
    StepCheck,
    resumes_in_place,
)
from trainers.checkpoint import check_compatible, read_checkpoint, resolve_checkpoint
from trainers.registry import get_trainer, import_modules
from trainers.rundir import RunFolder, fresh_run_name
from trainers.supervised import evaluate, forward, step_seed
from trainers.types import Result
from trainers.wandb_logger import MetricsLog, WandbLogger

__all__ = [
    "Prepared",
    "default_callbacks",
    "evaluate_checkpoint",
    "preflight",
    "resume_config",
    "train",
]


def default_callbacks(config) -> list[Callback]:
    """Progress, checkpoints, early stopping, plots, the metrics file and W&B, as the config
    asks."""
    callbacks: list[Callback] = [ProgressBar(), CheckpointCallback(config.checkpoint.every)]
    if config.train.step_check:
        callbacks.append(StepCheck(config.train.step_check, config.train.step_check_every))
    if config.success.stop_on_success:
        callbacks.append(EarlyStopping(config.success.patience))
    if config.logging.plots:
        callbacks.append(PlotCallback())
    # metrics.jsonl: the local, fsync'd record of every evaluation, with or without W&B
    callbacks.append(MetricsLog())
    if config.logging.wandb and config.logging.wandb_mode != "disabled":
        callbacks.append(WandbLogger(config.logging.project, config.logging.wandb_mode))
    return callbacks


@dataclass
class Prepared:
    """What :func:`preflight` checked and built: the trainer class, device, dtype, the task
    and the model (initial weights)."""

    trainer_cls: type
    device: torch.device
    dtype: torch.dtype
    task: Any
    model: torch.nn.Module


def preflight(config) -> Prepared:
    """Check every key and value of a run before anything is written.

    Checks, in order: ``imports``; ``trainer``; ``train.device`` (present here) and ``dtype``;
    ``logging.wandb`` (wandb installed); the task id and ``task_kwargs`` (and
    ``train.task_kwargs``): the task builds and the data of the run (the evaluation grid, the
    training task's grid or, with ``train.conditions = "random"``, a random batch) has finite
    stimuli and targets; ``success.metric`` is a metric the task's ``evaluate``
    reports; the model builds for the task's inputs and outputs; the trainer's own
    ``check(config, task, model)`` if it has one; a rollout of the task's first
    time steps with ``solver`` (its step divides the task's grid, the method suits the model,
    ``model.initial_state`` names a condition, the output has the task's shape, the network
    is finite at its initial weights); a ``resume`` checkpoint fits the task and the model.

    Raises:
        ConfigError, CheckpointError: naming the key, its value and what is allowed.
    """
    import_modules(config.imports)
    trainer_cls = get_trainer(config.trainer)
    device = resolve_device(config.train.device)
    dtype = resolve_dtype(config.train.dtype)
    if (
        config.logging.wandb
        and config.logging.wandb_mode != "disabled"
        and importlib.util.find_spec("wandb") is None
    ):
        raise ConfigError(
            "logging.wandb = true but the wandb package is not installed; install it "
            "(pip install wandb) or set logging.wandb=false"
        )
    task = build_task(config)
    grid = _check_task_data(config, task, "task_kwargs", config.task_kwargs, "all")
    train_task, train_grid = task, grid
    if config.train.task_kwargs:
        kwargs = {**config.task_kwargs, **config.train.task_kwargs}
        try:
            train_task = build_task(config, kwargs)
        except ConfigError as err:
            raise ConfigError(f"train.task_kwargs: {err}") from None
        train_grid = _check_task_data(config, train_task, "train.task_kwargs", kwargs, "all")
    if config.train.conditions == "random":  # the training batches are random draws
        where = "train.task_kwargs" if train_task is not task else "task_kwargs"
        kwargs = {**config.task_kwargs, **config.train.task_kwargs}
        _check_task_data(config, train_task, where, kwargs, None)
    _check_metric(config, task, grid)
    model = build_model(config, task, device, dtype)
    check = getattr(trainer_cls, "check", None)
    if callable(check):  # the trainer's own checks (its options, the model's layout)
        check(config, task, model)
    _probe(config, model, grid, device, dtype, "task_kwargs")
    if train_task is not task and train_grid.dt_ms != grid.dt_ms:
        _probe(config, model, train_grid, device, dtype, "train.task_kwargs")
    if config.resume:
        path = resolve_checkpoint(config.resume)
        ckpt = read_checkpoint(path)
        check_compatible(ckpt, config, model, path)
        if ckpt["step"] > config.train.steps:
            raise ConfigError(
                f"train.steps = {config.train.steps} but {path} is at step {ckpt['step']}: "
                f"nothing is left to train; resume with train.steps > {ckpt['step']}"
            )
    return Prepared(trainer_cls, device, dtype, task, model)


def _kwargs_text(where: str, kwargs) -> str:
    shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return f"{where} {{{shown}}}" if kwargs else f"the default {where}"


def _check_task_data(config, task, where: str, kwargs, conditions: str | None) -> Trial:
    """The task's evaluation grid (``conditions="all"``) or a random batch of 8 (None), float64
    on the CPU, checked finite (``TrialTask.sample_batch`` raises on a non-finite stimulus or
    target): the data the run will train and evaluate on."""
    seed = config.train.seed
    try:
        if conditions == "all":
            return task.sample_batch(conditions="all", seed=seed, dtype=torch.float64)
        return task.sample_batch(8, seed=seed, dtype=torch.float64)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{_kwargs_text(where, kwargs)} of {config.task}: {err}") from None


def _check_metric(config, task, grid: Trial) -> None:
    """``success.metric`` must be a key of what the task's evaluate reports on its grid (read
    from an evaluation of the targets themselves), or ``loss``."""
    try:
        names = [*task.evaluate(grid.target, grid), "loss"]
    except Exception as err:  # a user's task whose evaluate fails on its own targets
        raise ConfigError(
            f"{config.task}: evaluate() fails on the task's own targets ({err!r})"
        ) from err
    if config.success.metric not in names:
        raise ConfigError(
            f"success.metric = {config.success.metric!r} is not a metric of {config.task}; "
            f"allowed: {', '.join(names)}"
        )


def _probe(config, model, grid: Trial, device, dtype, where: str) -> None:
    """Roll the model out over the first time steps of one grid trial (no gradient): what
    would otherwise fail at the first step, after the run folder and W&B run exist."""
    k = min(3, grid.n_steps)
    probe = Trial(
        stimulus=grid.stimulus[:k, :1],
        target=grid.target[:k, :1],
        mask=grid.mask[:k, :1],
        t_ms=grid.t_ms[:k],
        dt_ms=grid.dt_ms,
        conditions={key: v[:1] for key, v in grid.conditions.items()},
    ).to(device=device, dtype=dtype)
    solver = config.solver
    solver = solver.model_copy(update={"fast": solver.fast.model_copy(update={"compile": False})})
    try:
        with torch.no_grad():
            output, _, _ = forward(model, probe, config, solver, step_seed(config.train.seed, -2))
    except ConfigError:
        raise
    except DivergenceError as err:
        raise ConfigError(
            f"model.kind = {config.model.kind!r} is not finite on the first time steps of "
            f"{config.task} at its initial weights, before any training ({err}); the learning "
            "rate and the solver step are not the cause: check the model's options "
            "(model.params, the model parameter file)"
        ) from None
    except (ValueError, TypeError, RuntimeError) as err:
        raise ConfigError(
            f"solver (method = {config.solver.method!r}, step_ms = {config.solver.step_ms:g}) "
            f"and model.kind = {config.model.kind!r} cannot run {config.task} "
            f"(its time step dt_ms = {grid.dt_ms:g} from {where}): {err}"
        ) from None
    want = tuple(probe.target.shape)
    if tuple(getattr(output, "shape", ())) != want:
        raise ConfigError(
            f"model.kind = {config.model.kind!r} outputs shape "
            f"{tuple(getattr(output, 'shape', ()))} but {config.task} needs [T, B, "
            f"{want[-1]}] = {want} (one output per target)"
        )


def open_run(config) -> RunFolder:
    """Claim and lock the run folder of ``config`` (a fresh ``<task>-<timestamp>`` when
    ``run_name`` is empty; the resumed run's own folder when ``resume`` is one of its
    checkpoints)."""
    root = Path(config.logging.run_dir)
    name = config.run_name or fresh_run_name(root, config.task)
    resuming = resumes_in_place(config, root / name)
    return RunFolder.open(root, name, task=config.task, resuming=resuming)


def train(config, callbacks: list[Callback] | None = None) -> Result:
    """Check ``config`` (:func:`preflight`), claim its run folder and fit its task and model
    with its trainer. SIGINT / SIGTERM stop training at the end of the step in progress,
    write ``last.pt`` and return a Result with ``interrupted`` set; a second signal quits at
    once (the last checkpoint written stays intact).

    Raises:
        ConfigError, CheckpointError: anything :func:`preflight` finds, a run folder that
            holds another run, is in use or cannot be written; all before the run folder or
            a W&B run is created.
    """
    prepared = preflight(config)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    try:
        callbacks = list(default_callbacks(config) if callbacks is None else callbacks)
    except ValueError as err:  # e.g. a W&B mode from the environment that W&B does not know
        raise ConfigError(str(err)) from None
    run = open_run(config)
    try:
        config = config.model_copy(
            update={
                "run_name": run.path.name,
                "logging": config.logging.model_copy(update={"run_dir": str(run.path.parent)}),
            }
        )
        bundle = Callbacks(callbacks, run=run)
        with _stop_on_signals(bundle):
            return prepared.trainer_cls().fit(prepared.model, prepared.task, config, bundle)
    finally:
        run.close()


@contextlib.contextmanager
def _stop_on_signals(callbacks: Callbacks):
    """While training: the first SIGINT / SIGTERM asks ``callbacks`` to stop after the step in
    progress (with last.pt written); a second one quits at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}

    def handler(signum, frame):
        name = signal.Signals(signum).name
        if callbacks.interrupted:
            for sig, old in previous.items():
                signal.signal(sig, old)
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        callbacks.interrupted = name
        print(
            f"\n{name}: stopping after the step in progress and saving it to last.pt "
            f"(send {name} again to quit at once without it)",
            file=sys.stderr,
            flush=True,
        )

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _config_from(ckpt: dict[str, Any], overrides: list[str], path: Path):
    from trainers.config import TrainConfig, apply_overrides

    raw = apply_overrides(ckpt["config"], overrides)
    return TrainConfig.from_dict(raw, source=f"checkpoint {path}")


def _code_named(raw: dict[str, Any]) -> dict[str, str]:
    """Modules a saved config would make Python import, each with the key that names it:
    ``imports`` and the module of ``module:Class`` names (installed code, never code stored
    in the checkpoint)."""
    named = {m: "imports" for m in raw.get("imports") or [] if isinstance(m, str)}
    for key, value in (
        ("trainer", raw.get("trainer")),
        ("model.kind", (raw.get("model") or {}).get("kind")),
    ):
        if isinstance(value, str) and ":" in value:
            named.setdefault(value.split(":", 1)[0], key)
    return named


def check_imports(
    raw: dict[str, Any], allowed: Sequence[str], path: Path, overrides: Sequence[str] = ()
) -> None:
    """A checkpoint is data: the modules its config names are imported only when the user
    names them too (``--import``, or ``imports=`` in Python); a name an override replaces
    (``trainer=supervised``) is not imported and needs nothing. Raises ConfigError listing
    the missing ones and the exact flags, before anything is imported."""
    from trainers.config import apply_overrides

    still = _code_named(apply_overrides(raw, list(overrides)))
    missing = {
        m: key for m, key in _code_named(raw).items() if m in still and m not in set(allowed)
    }
    if missing:
        listed = ", ".join(f"{m!r} ({key})" for m, key in missing.items())
        flags = " ".join(f"--import {m}" for m in missing)
        raise ConfigError(
            f"checkpoint {path}: its config names code to import: {listed}. A checkpoint is "
            f"data; colenv imports only modules you name. If you trust them, add {flags} "
            "(Python: imports=[...])"
        )


def run_folder_of(resume: str | Path, checkpoint: Path) -> Path | None:
    """The run folder a resume continues in: ``resume`` itself when it is a folder, the
    folder above ``checkpoints/`` for a file there; None for a loose checkpoint file."""
    given = Path(resume)
    if given.is_dir():
        return given.resolve()
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent.resolve()
    return None


def _task_of(task_arg: str) -> str:
    path = Path(task_arg)
    if path.is_file() and path.suffix == ".toml":
        try:
            return str(tomllib.loads(path.read_text()).get("task", ""))
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"{path}: cannot be read ({err})") from None
    return task_arg


def resume_config(
    resume: str | Path,
    overrides: list[str] | None = None,
    *,
    task: str | None = None,
    imports: Sequence[str] = (),
):
    """The config saved in a checkpoint (or run folder), ``overrides`` applied on top, with
    ``resume`` pointing at that checkpoint.

    The run continues in the folder it was given (``resume`` itself, or the folder of
    ``<folder>/checkpoints/<file>``), wherever the checkpoint's own config says it was: a
    copied run folder continues in the copy. ``run_name=`` / ``logging.run_dir=`` overrides
    branch the run into a new folder instead; a loose checkpoint file starts a new folder.

    Args:
        task: the task id (or TOML path) named on the command line, if any; it must be the
            checkpoint's task.
        imports: modules the user allows to be imported (``--import``); every module the
            checkpoint's config names (``imports``, ``module:Class``) must be one of them.

    Raises:
        CheckpointError: no usable checkpoint there.
        ConfigError: ``task`` is not the checkpoint's task (naming both), the checkpoint
            names a module not in ``imports``, or a bad override.
    """
    path = resolve_checkpoint(resume)
    overrides = [o for o in overrides or [] if not o.startswith("resume=")]
    ckpt = read_checkpoint(path)
    if task is not None:
        want = _task_of(task)
        if want != ckpt["task"]:
            raise ConfigError(
                f"train {task} resume={resume}: that run trained {ckpt['task']!r}, not "
                f"{want!r}. Continue it with `python -m trainers resume {resume}`, or train "
                f"{want} without resume="
            )
    check_imports(ckpt["config"], imports, path, overrides)
    config = _config_from(ckpt, overrides, path)
    check_compatible(ckpt, config, None, path)
    keys = {o.split("=", 1)[0].strip() for o in overrides}
    branch = bool(keys & {"run_name", "logging.run_dir", "logging"})
    folder = run_folder_of(resume, path)
    update: dict[str, Any] = {"resume": str(path)}
    if not branch:
        if folder is None:
            update["run_name"] = ""  # a loose checkpoint file: a new folder
        else:
            update["run_name"] = folder.name
            update["logging"] = config.logging.model_copy(update={"run_dir": str(folder.parent)})
    return config.model_copy(update=update)


def evaluate_checkpoint(
    path: str | Path, overrides: list[str] | None = None, *, imports: Sequence[str] = ()
) -> dict[str, Any]:
    """Rebuild a checkpoint's task and model (any registered kind), load its weights and return
    ``{"step", metrics...}`` on the task's evaluation grid. ``imports``: as for
    :func:`resume_config`.

    Raises:
        CheckpointError: a missing, damaged or foreign file, or a config (after
            ``overrides``) whose task, model kind or parameter shapes differ from the file's.
    """
    p = resolve_checkpoint(path)
    ckpt = read_checkpoint(p)
    check_imports(ckpt["config"], imports, p, overrides or [])
    config = _config_from(ckpt, overrides or [], p)
    check_compatible(ckpt, config, None, p)
    if config.train.threads:  # as train() does: the same thread count as the run
        torch.set_num_threads(config.train.threads)
    device = resolve_device(config.train.device)
    dtype = resolve_dtype(config.train.dtype)
    task = build_task(config)
    model = build_model(config, task, device, dtype)
    check_compatible(ckpt, config, model, p)
    model.load_state_dict(ckpt["state_dict"])
    trial = task.sample_batch(conditions="all", seed=config.train.seed, device=device, dtype=dtype)
    metrics, _, _ = evaluate(model, task, config, trial, config.solver, step=ckpt["step"])
    return {"step": ckpt["step"], **metrics}
