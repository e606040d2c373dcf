"""Where colenv's shipped configs live, in a clone and in an installed wheel.

The default configs sit in the top-level ``config/`` folder of the repository (``model.toml``
and ``tasks/<task>.toml``); the wheel carries the same files as the package data
``colenv._config``. :func:`config_dir` finds whichever is there.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["config_dir", "model_config_path", "task_config_path"]


def config_dir() -> Path:
    """The folder holding ``model.toml`` and ``tasks/``: the installed package data
    ``colenv._config`` when present, else ``config/`` of the source tree."""
    # colenv._config has no __init__.py (it is the config/ folder itself): a namespace
    # package in a wheel, a mapped folder in an editable install; its spec names the folder.
    spec = importlib.util.find_spec("colenv._config")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / "model.toml").is_file():
            return Path(folder)
    source = Path(__file__).resolve().parents[1] / "config"
    if not (source / "model.toml").is_file():
        raise FileNotFoundError(
            "colenv's default configs are missing: neither the package data colenv._config "
            f"nor {source} holds model.toml (a broken install?)"
        )
    return source


def model_config_path() -> Path:
    """``config/model.toml``: the column parameters."""
    return config_dir() / "model.toml"


def task_config_path(task_id: str) -> Path:
    """The shipped training config of a task id: ``colenv/Parity-v0`` -> ``tasks/parity.toml``."""
    name = task_id.split("/")[-1].split("-v")[0].lower()
    return config_dir() / "tasks" / f"{name}.toml"
