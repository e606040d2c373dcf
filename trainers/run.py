"""One training run from a config: task, model, callbacks, trainer -> Result.

    result = train(load_config("colenv/XOR-v0", ["train.steps=20"]))

This is what ``python -m trainers train`` calls; the trainer itself only sees
``fit(model, task, config, callbacks)``.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import replace
from pathlib import Path

from trainers.callbacks import (
    Callback,
    CheckpointCallback,
    EarlyStopping,
    PlotCallback,
    ProgressBar,
    read_checkpoint,
    resolve_checkpoint,
)
from trainers.config import TrainConfig, apply_overrides
from trainers.registry import Result, get_trainer
from trainers.supervised import build_model, build_task, resolve_device

__all__ = ["default_callbacks", "resume_config", "train"]

DTYPES = {"float32": "float32", "float64": "float64"}


def default_callbacks(config: TrainConfig) -> list[Callback]:
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


def resume_config(resume: str, overrides: list[str]) -> TrainConfig:
    """The config saved in a checkpoint (or run dir), with ``overrides`` applied on top."""
    raw = read_checkpoint(resume)["config"]
    raw = apply_overrides(raw, [o for o in overrides if not o.startswith("resume=")])
    raw["resume"] = str(resolve_checkpoint(resume))
    return TrainConfig.from_dict(raw, source=f"checkpoint {resume}")


def claim_run_name(config: TrainConfig) -> str:
    """``<task>-<timestamp>`` (``-2``, ``-3``, ... when taken), its folder created atomically,
    so two runs started in the same second never share (and overwrite) one run dir."""
    root = Path(config.logging.run_dir)
    root.mkdir(parents=True, exist_ok=True)
    base = f"{config.task.split('/')[-1].lower()}-{time.strftime('%Y%m%d-%H%M%S')}"
    for i in itertools.count(1):
        name = base if i == 1 else f"{base}-{i}"
        try:
            (root / name).mkdir()
        except FileExistsError:
            continue
        return name
    raise AssertionError("unreachable")


def train(config: TrainConfig, callbacks: list[Callback] | None = None) -> Result:
    """Build the task and model of ``config`` and fit them with its trainer."""
    import torch

    if not config.run_name:
        config = replace(config, run_name=claim_run_name(config))
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    task = build_task(config)
    device = resolve_device(config.train.device)
    dtype = getattr(torch, DTYPES[config.train.dtype])
    model = build_model(config, task, device, dtype)
    trainer = get_trainer(config.trainer)()
    if callbacks is None:
        callbacks = default_callbacks(config)
    return trainer.fit(model, task, config, callbacks)
