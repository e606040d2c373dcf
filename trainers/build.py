"""From a config to the objects of a run: device, task, model.

device = resolve_device(config.train.device)
task = build_task(config)
model = build_model(config, task, device, dtype)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import torch

import colenv
from colenv.errors import ConfigError
from colenv.models.registry import build_model as build_registered_model

__all__ = ["build_model", "build_task", "resolve_device", "resolve_dtype"]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` / ``cuda:N`` only where CUDA is.

    Raises:
        ConfigError: CUDA asked for but not available (or no device N).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            f"train.device = {name!r} but MPS (Apple GPU) is not available here; allowed: "
            "auto, cpu" + (", cuda" if torch.cuda.is_available() else "")
        )
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"train.device = {name!r} but CUDA is not available here; allowed: auto, cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"train.device = {name!r} but this machine has {torch.cuda.device_count()} "
                f"CUDA device(s); allowed: auto, cpu, cuda, cuda:0 .. "
                f"cuda:{torch.cuda.device_count() - 1}"
            )
    return device


def resolve_dtype(name: str) -> torch.dtype:
    """``"float32"`` / ``"float64"`` -> the torch dtype."""
    if name not in ("float32", "float64"):
        raise ConfigError(f"train.dtype = {name!r} is not allowed; allowed: float32, float64")
    return getattr(torch, name)


def build_task(config, task_kwargs: Mapping[str, Any] | None = None) -> colenv.TrialTask:
    """``gym.make(config.task, **task_kwargs)`` (default ``config.task_kwargs``), unwrapped.

    Raises:
        ConfigError: an id that is not registered (listing the colenv ids; Gymnasium would
            silently map an unversioned id to its latest version) or bad task_kwargs.
    """
    kwargs = dict(config.task_kwargs if task_kwargs is None else task_kwargs)
    if config.task not in gym.registry:
        known = [env_id for env_id in gym.registry if env_id.startswith("colenv/")]
        raise ConfigError(
            f"task = {config.task!r} is not a registered Gymnasium id; colenv ids: "
            f"{', '.join(sorted(known))} (a task of your own: gymnasium.register it in a "
            "module named in imports)"
        )
    try:
        env = gym.make(config.task, **kwargs)
    except gym.error.Error as err:
        raise ConfigError(f"task {config.task!r}: {err}") from err
    except (TypeError, ValueError) as err:
        raise ConfigError(f"task_kwargs for {config.task!r}: {err}") from err
    return env.unwrapped


def build_model(config, task, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The model of ``config.model`` (any registered kind) for ``task``'s inputs and outputs,
    its random initial weights drawn from ``config.train.seed`` (the seed contract of
    :mod:`colenv.models.registry`: the same seed, the same model; for columns the seed of the
    jitter of their trainable weights)."""
    return build_registered_model(
        config.model.kind,
        config.model.options,
        n_inputs=task.n_inputs,
        n_outputs=task.n_outputs,
        seed=config.train.seed,
        device=device,
        dtype=dtype,
    )
