"""Models by kind: the built-ins, entry points, and ``module.path:ClassName``.

    build_model("ctrnn", {"n_hidden": 64}, n_inputs=2, n_outputs=1, seed=0) -> CTRNN

A model class (any ``torch.nn.Module`` following the rollout protocol of :mod:`colenv.solve`)
has two extra members:

- ``Config``: a :class:`colenv.config.StrictModel` subclass, the options of the model under
  ``[model]`` of a training config (besides ``kind`` and ``initial_state``);
- ``from_config(config, *, n_inputs, n_outputs, seed, device=None, dtype=None)``: a classmethod
  that builds the model from a ``Config`` instance for a task with ``n_inputs`` inputs and
  ``n_outputs`` outputs, drawing every random number from ``seed``. The model keeps the
  instance as ``model.config``, so a checkpoint stores ``{"kind", "options":
  model.config.model_dump()}`` and rebuilds the same model.

The seed contract: a training run passes ``train.seed`` as ``seed``, and it is the only source
of the model's randomness. The same seed must give bit-identical parameters, and two seeds
different ones wherever the initial weights are random (a model that ignores ``seed`` makes
every seed of a study the same run). Draw from ``torch.Generator().manual_seed(seed)`` on the
CPU and then move the tensors to ``device`` (the same network on every device), never from the
global generators. So ``build_model(kind, options, ..., seed=s)`` is the initial model of a
run with ``train.seed = s``. The built-ins: ``hopf_mlp`` and ``ctrnn`` draw all their initial
weights from it; ``columns`` start from the anatomical weights and draw from it the seeded
jitter of their trainable weights (``network.init_jitter``, on by default; a set
``network.init_seed`` overrides the seed for the jitter alone).

Built-in kinds: ``columns`` (:class:`~colenv.models.ColumnNetwork`), ``hopf_mlp``
(:class:`~colenv.models.HopfField`), ``ctrnn`` (:class:`~colenv.models.CTRNN`). Three ways to
add one:

1. ``register_model("mine", MyModel)`` in code that runs before the lookup;
2. an entry point in the group ``colenv.models`` of an installed package
   (``[project.entry-points."colenv.models"] mine = "my_pkg.model:MyModel"``);
3. ``kind = "my_pkg.model:MyModel"`` in the config: imported by path.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Mapping
from typing import Any

import torch

from colenv.config import StrictModel, parse
from colenv.errors import ConfigError

__all__ = [
    "ENTRY_POINT_GROUP",
    "build_model",
    "get_model_class",
    "list_models",
    "register_model",
]

ENTRY_POINT_GROUP = "colenv.models"

_BUILTINS: dict[str, str] = {
    "columns": "colenv.models.column.network:ColumnNetwork",
    "hopf_mlp": "colenv.models.mlp:HopfField",
    "ctrnn": "colenv.models.ctrnn:CTRNN",
}
"""Built-in kinds, imported on first use (so this module imports no model)."""

_REGISTRY: dict[str, type] = {}


def _check_class(kind: str, cls: Any) -> None:
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and issubclass(config, StrictModel)):
        raise ConfigError(
            f"model {kind!r} ({cls!r}) needs a class attribute Config, a "
            "colenv.config.StrictModel subclass describing its options"
        )
    if not callable(getattr(cls, "from_config", None)):
        raise ConfigError(
            f"model {kind!r} ({cls!r}) needs a classmethod from_config(config, *, n_inputs, "
            "n_outputs, seed, device=None, dtype=None)"
        )


def register_model(kind: str, cls: type) -> None:
    """Make ``cls`` available as ``model.kind = kind``; re-registering a kind replaces it.

    Raises:
        ConfigError: ``kind`` is empty or has a ':', or ``cls`` lacks ``Config`` /
            ``from_config``.
    """
    if not isinstance(kind, str) or not kind or ":" in kind:
        raise ConfigError(f"model kind must be a non-empty string without ':', got {kind!r}")
    _check_class(kind, cls)
    _REGISTRY[kind] = cls


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def list_models() -> list[str]:
    """Every known kind: built-ins, registered ones and installed entry points, sorted."""
    return sorted(set(_BUILTINS) | set(_REGISTRY) | set(_entry_points()))


def _import_path(kind: str, path: str) -> type:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(
            f"model.kind = {kind!r}: cannot import module {module_name!r}: {err}"
        ) from err
    cls = getattr(module, attr, None)
    if cls is None:
        raise ConfigError(f"model.kind = {kind!r}: module {module_name!r} has no {attr!r}")
    return cls


def get_model_class(kind: str) -> type:
    """The model class of ``kind``: registered, built-in, an entry point or ``module:Class``.

    Raises:
        ConfigError: an unknown kind (the message lists the known ones), or a class without
            ``Config`` / ``from_config``.
    """
    if not isinstance(kind, str):
        raise ConfigError(f"model.kind must be a string, got {kind!r}")
    if kind in _REGISTRY:
        return _REGISTRY[kind]
    if ":" in kind:
        cls = _import_path(kind, kind)
    elif kind in _BUILTINS:
        cls = _import_path(kind, _BUILTINS[kind])
    elif kind in (eps := _entry_points()):
        cls = eps[kind].load()
    else:
        raise ConfigError(
            f"unknown model.kind {kind!r}; known: {', '.join(list_models())} "
            "(or 'module.path:ClassName', or register_model(kind, cls))"
        )
    _check_class(kind, cls)
    _REGISTRY[kind] = cls
    return cls


def build_model(
    kind: str,
    options: Mapping[str, Any] | StrictModel | None,
    *,
    n_inputs: int,
    n_outputs: int,
    seed: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.nn.Module:
    """Build a model of ``kind`` from its options (a mapping or its ``Config`` instance), its
    random initial weights drawn from ``seed`` (the seed contract in the module docstring).

    Raises:
        ConfigError: unknown kind, bad options (naming ``model.<key>``), or a model that does
            not fit the task's ``n_inputs`` / ``n_outputs``.
    """
    cls = get_model_class(kind)
    config = parse(cls.Config, options, where="model")
    return cls.from_config(
        config, n_inputs=n_inputs, n_outputs=n_outputs, seed=seed, device=device, dtype=dtype
    )
