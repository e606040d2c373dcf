"""Training loops for colenv models; ``python -m trainers`` is the command line.

    from trainers import load_config, train
    result = train(load_config("colenv/XOR-v0", ["train.steps=50"]))

A trainer is a class with ``fit(model, task, config, callbacks) -> Result``; the default is
:class:`SupervisedTrainer`. Others plug in with :func:`register_trainer`, the entry-point group
``colenv.trainers``, or ``trainer=module.path:ClassName`` in the config.
"""

from trainers.callbacks import (
    Callback,
    CheckpointCallback,
    EarlyStopping,
    PlotCallback,
    ProgressBar,
    TrainState,
    load_checkpoint,
    save_checkpoint,
)
from trainers.config import ConfigError, TrainConfig, load_config
from trainers.registry import Result, Trainer, get_trainer, list_trainers, register_trainer
from trainers.run import default_callbacks, train
from trainers.supervised import SupervisedTrainer, build_model, build_task

__all__ = [
    "Callback",
    "CheckpointCallback",
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
    "get_trainer",
    "list_trainers",
    "load_checkpoint",
    "load_config",
    "register_trainer",
    "save_checkpoint",
    "train",
]
