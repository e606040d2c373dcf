"""One training run from a config, and the evaluation of a checkpoint.

    result = train(load_config("colenv/XOR-v0", ["train.steps=20"]))
    metrics = evaluate_checkpoint("runs/xor-v0-20260101-120000")

``train`` is what ``python -m trainers train`` calls. It checks everything that can be wrong
(trainer name, device, task id, model options) before it creates the run folder, then hands
``fit(model, task, config, callbacks)`` to the trainer with the default callbacks: progress,
checkpoints, early stopping, the task's plots and W&B.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from trainers.build import build_model, build_task, resolve_device, resolve_dtype
from trainers.callbacks import (
    Callback,
    Callbacks,
    CheckpointCallback,
    EarlyStopping,
    PlotCallback,
    ProgressBar,
    claim_run_name,
)
from trainers.checkpoint import check_compatible, read_checkpoint, resolve_checkpoint
from trainers.registry import get_trainer, import_modules
from trainers.supervised import evaluate
from trainers.types import Result

__all__ = ["default_callbacks", "evaluate_checkpoint", "resume_config", "train"]


def default_callbacks(config) -> list[Callback]:
    """Progress, checkpoints, early stopping, plots and W&B, as the config asks."""
    callbacks: list[Callback] = [ProgressBar(), CheckpointCallback(config.checkpoint.every)]
    if config.success.stop_on_success:
        callbacks.append(EarlyStopping(config.success.patience))
    if config.logging.plots:
        callbacks.append(PlotCallback())
    if config.logging.wandb and config.logging.wandb_mode != "disabled":
        from trainers.wandb_logger import WandbLogger

        callbacks.append(WandbLogger(config.logging.project, config.logging.wandb_mode))
    return callbacks


def train(config, callbacks: list[Callback] | None = None) -> Result:
    """Build the task and model of ``config`` and fit them with its trainer.

    Raises:
        ConfigError: an unknown trainer, a device that is not here, an unknown task id or
            model options that do not fit the task; before any run folder is created.
    """
    import_modules(config.imports)
    trainer_cls = get_trainer(config.trainer)
    device = resolve_device(config.train.device)
    dtype = resolve_dtype(config.train.dtype)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    task = build_task(config)
    model = build_model(config, task, device, dtype)
    if not config.run_name:
        config = config.model_copy(update={"run_name": claim_run_name(config)})
    callbacks = Callbacks(default_callbacks(config) if callbacks is None else callbacks)
    return trainer_cls().fit(model, task, config, callbacks)


def _config_from(ckpt: dict[str, Any], overrides: list[str], path: Path):
    from trainers.config import TrainConfig, apply_overrides

    raw = apply_overrides(ckpt["config"], overrides)
    return TrainConfig.from_dict(raw, source=f"checkpoint {path}")


def resume_config(resume: str | Path, overrides: list[str] | None = None):
    """The config saved in a checkpoint (or run folder), ``overrides`` applied on top, with
    ``resume`` pointing at that checkpoint."""
    path = resolve_checkpoint(resume)
    overrides = [o for o in overrides or [] if not o.startswith("resume=")]
    ckpt = read_checkpoint(path)
    config = _config_from(ckpt, overrides, path)
    check_compatible(ckpt, config, None, path)
    return config.model_copy(update={"resume": str(path)})


def evaluate_checkpoint(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Rebuild a checkpoint's task and model (any registered kind), load its weights and return
    ``{"step", metrics...}`` on the task's evaluation grid.

    Raises:
        CheckpointError: a missing, damaged or foreign file, or a config (after
            ``overrides``) whose task, model kind or parameter shapes differ from the file's.
    """
    p = resolve_checkpoint(path)
    ckpt = read_checkpoint(p)
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
    metrics, _, _ = evaluate(model, task, config, trial, config.solver)
    return {"step": ckpt["step"], **metrics}
