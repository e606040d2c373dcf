"""Trainers by name: the built-in one, registered ones, entry points, ``module.path:ClassName``.

A trainer is any class whose instances have ``fit(model, task, config, callbacks) -> Result``
(:class:`trainers.types.Trainer`). Three ways to make one available to
``python -m trainers train ... trainer=<name>``:

1. ``register_trainer("mine", MyTrainer)`` in a module imported before the lookup: the config
   key ``imports = ["my_pkg.train"]`` or the CLI option ``--import my_pkg.train``;
2. an entry point in the group ``colenv.trainers`` of an installed package
   (``[project.entry-points."colenv.trainers"] mine = "my_pkg.train:MyTrainer"``),
   loaded the first time its name is looked up;
3. ``trainer = "my_pkg.train:MyTrainer"`` in the config: imported by path.

The built-in ``supervised`` and ``curriculum`` (Parity's staged trainer) are imported only when
looked up (this module imports no trainer).
"""

from __future__ import annotations

import importlib
import importlib.metadata

from colenv.errors import ConfigError

__all__ = [
    "ENTRY_POINT_GROUP",
    "get_trainer",
    "import_modules",
    "list_trainers",
    "register_trainer",
]

ENTRY_POINT_GROUP = "colenv.trainers"

_BUILTINS: dict[str, str] = {
    "supervised": "trainers.supervised:SupervisedTrainer",
    "curriculum": "trainers.curriculum:CurriculumTrainer",
}
_REGISTRY: dict[str, type] = {}


def register_trainer(name: str, cls: type) -> None:
    """Make ``cls`` available as ``trainer = name``; re-registering a name replaces it."""
    if not isinstance(name, str) or not name or ":" in name:
        raise ConfigError(f"trainer name must be a non-empty string without ':', got {name!r}")
    if not callable(getattr(cls, "fit", None)):
        raise ConfigError(f"{cls!r} has no fit(model, task, config, callbacks) method")
    _REGISTRY[name] = cls


def import_modules(modules) -> None:
    """Import each module named in ``modules`` (where users register their trainers, models
    and tasks); an import failure is a ConfigError naming the module."""
    for name in modules or ():
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ConfigError(f"imports: cannot import module {name!r}: {err}") from err


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def list_trainers() -> list[str]:
    """Built-in, registered and entry-point names (entry points not loaded), sorted."""
    return sorted(set(_BUILTINS) | set(_REGISTRY) | set(_entry_points()))


def _load(name: str, path: str) -> type:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"trainer {name!r}: cannot import module {module_name!r}: {err}") from err
    cls = getattr(module, attr, None)
    if cls is None:
        raise ConfigError(f"trainer {name!r}: module {module_name!r} has no {attr!r}")
    if not callable(getattr(cls, "fit", None)):
        raise ConfigError(f"trainer {name!r} has no fit(model, task, config, callbacks) method")
    return cls


def get_trainer(name: str) -> type:
    """The trainer class of ``name``: registered, built-in, an entry point or
    ``module.path:ClassName``.

    Raises:
        ConfigError: an unknown name (the message lists the registered ones) or a class
            without ``fit``.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        return _load(name, name)
    if name in _BUILTINS:
        cls = _load(name, _BUILTINS[name])
    elif name in (eps := _entry_points()):
        cls = eps[name].load()
    else:
        raise ConfigError(
            f"unknown trainer {name!r}; registered: {', '.join(list_trainers())} "
            "(or 'module.path:ClassName'; a trainer registered in your own module needs "
            'imports = ["my_pkg.train"] in the config or --import my_pkg.train)'
        )
    register_trainer(name, cls)
    return cls
