"""Trainers by name: the built-in ones, entry points, and ``module.path:ClassName``.

A trainer is any class whose instances have ``fit(model, task, config, callbacks) -> Result``.
Three ways to make one available to ``python -m trainers train ... trainer=<name>``:

1. ``register_trainer("mine", MyTrainer)`` in code that runs before the lookup;
2. an entry point in the group ``colenv.trainers`` of an installed package
   (``[project.entry-points."colenv.trainers"] mine = "my_pkg.train:MyTrainer"``),
   loaded the first time an unknown name is looked up;
3. ``trainer = "my_pkg.train:MyTrainer"`` in the config: imported by path.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "ENTRY_POINT_GROUP",
    "Result",
    "Trainer",
    "get_trainer",
    "list_trainers",
    "register_trainer",
]

ENTRY_POINT_GROUP = "colenv.trainers"


@dataclass
class Result:
    """What a training run produced."""

    steps: int
    """optimizer steps taken (in total, across resumes)"""
    wall_s: float
    """seconds spent in this fit call"""
    solved: bool
    """the success criterion held at the last evaluation"""
    metrics: dict[str, float] = field(default_factory=dict)
    """the last evaluation's metrics (task.evaluate plus eval/loss as "loss")"""
    history: list[dict[str, Any]] = field(default_factory=list)
    """every evaluation: {"step", metrics...}"""
    checkpoint: str | None = None
    """path of the last checkpoint written (last.pt), if any"""
    run_dir: str | None = None
    """the run's folder (checkpoints, plots, wandb/)"""
    diverged: bool = False
    """training stopped on a NaN/inf loss or a diverging rollout"""
    message: str = ""
    """why training stopped (criterion met, budget spent, divergence, a callback)"""


@runtime_checkable
class Trainer(Protocol):
    """Anything with this method is a trainer."""

    def fit(self, model, task, config, callbacks) -> Result: ...


_REGISTRY: dict[str, type] = {}


def register_trainer(name: str, cls: type) -> None:
    """Make ``cls`` available as ``trainer = name``; re-registering a name replaces it."""
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"trainer name must be a non-empty string without ':', got {name!r}")
    if not callable(getattr(cls, "fit", None)):
        raise TypeError(f"{cls!r} has no fit(model, task, config, callbacks) method")
    _REGISTRY[name] = cls


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def list_trainers() -> list[str]:
    """Registered names and installed entry points (not loaded), sorted."""
    _ensure_builtins()
    return sorted(set(_REGISTRY) | set(_entry_points()))


def get_trainer(name: str) -> type:
    """The trainer class of ``name``: registered, an entry point, or ``module.path:ClassName``."""
    _ensure_builtins()
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ValueError(
                f"trainer {name!r}: cannot import module {module_name!r}: {err}"
            ) from err
        cls = getattr(module, attr, None)
        if cls is None:
            raise ValueError(f"trainer {name!r}: module {module_name!r} has no {attr!r}")
        if not callable(getattr(cls, "fit", None)):
            raise ValueError(f"trainer {name!r} has no fit(model, task, config, callbacks) method")
        return cls
    if name in _REGISTRY:
        return _REGISTRY[name]
    eps = _entry_points()
    if name in eps:
        cls = eps[name].load()
        register_trainer(name, cls)
        return cls
    raise ValueError(
        f"unknown trainer {name!r}; registered: {', '.join(list_trainers())} "
        "(or 'module.path:ClassName')"
    )


def _ensure_builtins() -> None:
    if "supervised" not in _REGISTRY:
        from trainers.supervised import SupervisedTrainer

        _REGISTRY["supervised"] = SupervisedTrainer
