"""Training loops for colenv models; ``python -m trainers`` is the command line.

    from trainers import load_config, train
    result = train(load_config("colenv/XOR-v0", ["train.steps=50"]))

A trainer is a class with ``fit(model, task, config, callbacks) -> Result``; the default is
:class:`SupervisedTrainer`. Others plug in with :func:`register_trainer`, the entry-point group
``colenv.trainers``, or ``trainer = "module.path:ClassName"`` in the config. ``callbacks`` (a
:class:`Callbacks`) gives every trainer the run folder, resume, checkpoints, progress, W&B and
the task's plots: see :mod:`trainers.callbacks`.

Modules: ``types`` (Result, Trainer, TrainState), ``checkpoint``, ``callbacks``,
``wandb_logger``, ``registry`` (trainers by name), ``build`` (device, task, model from a config),
``supervised`` (the default trainer), ``run`` (preflight, train, resume, evaluate), ``rundir``
(run folders: names, locks), ``config``. docs/runs.md says what a run guarantees.
"""

from colenv.errors import ConfigError
from trainers.build import build_model, build_task, resolve_device
from trainers.callbacks import (
    Callback,
    Callbacks,
    CheckpointCallback,
    EarlyStopping,
    PlotCallback,
    ProgressBar,
)
from trainers.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from trainers.config import TrainConfig, load_config
from trainers.registry import get_trainer, list_trainers, register_trainer
from trainers.run import default_callbacks, evaluate_checkpoint, preflight, resume_config, train
from trainers.supervised import SupervisedTrainer
from trainers.types import Result, Trainer, TrainState

__all__ = [
    "Callback",
    "Callbacks",
    "CheckpointCallback",
    "CheckpointError",
    "ConfigError",
    "EarlyStopping",
    "PlotCallback",
    "ProgressBar",
    "Result",
    "SupervisedTrainer",
    "TrainConfig",
    "TrainState",
    "Trainer",
    "build_model",
    "build_task",
    "default_callbacks",
    "evaluate_checkpoint",
    "get_trainer",
    "list_trainers",
    "load_checkpoint",
    "load_config",
    "preflight",
    "read_checkpoint",
    "register_trainer",
    "resolve_device",
    "resume_config",
    "save_checkpoint",
    "train",
]
