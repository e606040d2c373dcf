"""What trainers, callbacks and the runner pass each other: Result, Trainer and TrainState.

This module imports nothing from the rest of ``trainers``, so every other module can import it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["Result", "TrainState", "Trainer", "higher_is_better"]


@dataclass
class Result:
    """What a training run produced."""

    steps: int
    """optimizer steps taken (in total, across resumes)"""
    wall_s: float
    """seconds spent in this fit call"""
    solved: bool
    """the success criterion held at the last ``success.patience`` evaluations in a row"""
    metrics: dict[str, float] = field(default_factory=dict)
    """the last evaluation's metrics (task.evaluate plus "loss")"""
    history: list[dict[str, Any]] = field(default_factory=list)
    """every evaluation: {"step", metrics...}"""
    checkpoint: str | None = None
    """path of the last checkpoint written (last.pt), if any"""
    run_dir: str | None = None
    """the run's folder (checkpoints, plots, wandb/)"""
    diverged: bool = False
    """training stopped on a NaN/inf loss or a diverging rollout"""
    message: str = ""
    """why training stopped (criterion met, budget spent, divergence, a callback, a signal)"""
    interrupted: str = ""
    """the signal that stopped training ("SIGINT", "SIGTERM"; last.pt holds the step it
    stopped at), else empty"""


@runtime_checkable
class Trainer(Protocol):
    """Anything with this method is a trainer. ``callbacks`` is a
    :class:`trainers.callbacks.Callbacks`: its ``begin`` / ``evaluated`` / ``step_end`` / ``end``
    give the trainer the run folder, checkpoints, resume, progress, W&B and plots."""

    def fit(self, model, task, config, callbacks) -> Result: ...


def higher_is_better(metric: str) -> bool:
    """Direction of a success metric: False for metrics named *rmse* / *error* / *loss*."""
    name = metric.lower()
    return not ("rmse" in name or "error" in name or "loss" in name)


@dataclass
class TrainState:
    """Everything a callback may read (and a checkpoint holds); made by
    :meth:`trainers.callbacks.Callbacks.begin`. A trainer updates ``step``, ``loss`` (and
    ``lr``, ``nfe``, ``trials_per_s`` if it has them) before ``callbacks.step_end(state)``."""

    config: Any
    """the TrainConfig of the run"""
    task: Any
    """the TrialTask being trained on"""
    model: torch.nn.Module
    """the model"""
    run_dir: Path
    """the run's folder (created)"""
    callbacks: list = field(default_factory=list)
    """the callbacks of the run (the checkpoint stores their states)"""
    optimizer: torch.optim.Optimizer | None = None
    """the optimizer, if the trainer has one (checkpointed and restored on resume)"""
    scheduler: Any = None
    """the learning-rate scheduler, if any (checkpointed and restored on resume)"""
    trial_generator: torch.Generator = field(default_factory=torch.Generator)
    """CPU generator for the trainer's trials (checkpointed)"""
    step: int = 0
    """optimizer steps completed"""
    loss: float = math.nan
    """training loss of the last step"""
    lr: float = math.nan
    """learning rate used by the last step"""
    nfe: int = 0
    """function evaluations of the last step's rollout"""
    trials_per_s: float = 0.0
    """throughput of the last step (trials / s, forward + backward)"""
    metrics: dict = field(default_factory=dict)
    """the last evaluation's metrics"""
    history: list = field(default_factory=list)
    """every evaluation: {"step", metrics...}"""
    eval_step: int = -1
    """step of the last evaluation"""
    eval_outputs: dict = field(default_factory=dict)
    """the last evaluation's tensors for plots (CPU): "output" [T, B, O], "rates" [T, B, U]"""
    eval_trial: Any = None
    """the trials of the last evaluation (CPU), for plots"""
    threshold: float = math.nan
    """the success threshold in use"""
    solved: bool = False
    """the criterion held at the last evaluation"""
    best: float | None = None
    """best value of the success metric so far"""
    checkpoint: str | None = None
    """path of the last good checkpoint written"""
    diverged: bool = False
    """a NaN/inf loss or rollout stopped training"""
    stop_reason: str = ""
    """why training stopped"""
    interrupted: str = ""
    """the signal that stopped training ("SIGINT", "SIGTERM"), else empty"""
    plot_paths: list = field(default_factory=list)
    """PNG files written by PlotCallback"""
    resumed_from: dict | None = None
    """the config (plain dict) of the checkpoint this run resumed from, else None"""
    start_time: float = 0.0
    """time.perf_counter() when fitting began"""
    redraws: dict = field(default_factory=dict)
    """{step index: draw}: steps computed again after a rejected step draw fresh trials and
    noise (draw 0, the first, is absent); checkpointed, so a resume draws the same"""
    guard: Any = None
    """the trainer's runaway guard, if it has one (an object with ``state_dict()`` and
    ``load_state_dict()``, e.g. :class:`trainers.supervised.RunawayGuard`); checkpointed"""
    guard_state: dict | None = None
    """the guard's state read from the checkpoint a run resumed from, for the trainer to hand
    to its guard (None: none saved)"""
