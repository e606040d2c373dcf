"""Checkpoints: the full training state in one file, written atomically, read safely.

A checkpoint holds tensors and plain containers only (``torch.load(weights_only=True)`` reads
it; nothing in it runs code on load)::

    {"format": "colenv-checkpoint", "version": 1, "step": int, "task": "colenv/XOR-v0",
     "model": {"kind", "options", "initial_state", "n_inputs", "n_outputs",
               "shapes": {name: [sizes]}},          # what rebuilds the model
     "config": {...},                                # the run's TrainConfig as a plain dict
     "state_dict": {...}, "optimizer": {...} | None, "scheduler": {...} | None,
     "rng": {"python", "numpy", "torch", "cuda", "trials"},
     "callbacks": {name: state}, "metrics", "history", "eval_step", "solved", "best",
     "redraws": {step: draw},                         # steps redrawn after a rejection
     "guard": {"saved": [[step, [weights], optimizer, scheduler], ...],
               "rejections": int, "rejected_at": int} | None}   # the runaway guard's snapshots

``evaluate`` and ``resume`` rebuild the task and model from ``config`` (so any registered model
kind works, a user's own included) and check them against ``task`` and ``model``: a different
task, kind or parameter shape is a :class:`CheckpointError` naming it.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainers.types import TrainState

__all__ = [
    "FORMAT",
    "VERSION",
    "CheckpointError",
    "check_compatible",
    "config_to_dict",
    "load_checkpoint",
    "read_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
]

FORMAT = "colenv-checkpoint"
VERSION = 1
"""Version of the layout above; a file from a newer version is refused with a message."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, damaged, foreign, from a newer version, or
    not matching the task / model it is loaded into. The message names the file."""


def config_to_dict(config: Any) -> dict[str, Any]:
    """A TrainConfig as a plain nested dict (JSON types): what checkpoints and W&B store."""
    return config.model_dump(mode="json")


def _model_record(state: TrainState) -> dict[str, Any]:
    model, mc = state.model, state.config.model
    options = getattr(model, "config", None) or mc.options
    return {
        "kind": mc.kind,
        "options": options.model_dump(mode="json"),
        "initial_state": mc.initial_state,
        "n_inputs": int(state.task.n_inputs),
        "n_outputs": int(state.task.n_outputs),
        "shapes": {name: list(t.shape) for name, t in model.state_dict().items()},
    }


def _rng_state(state: TrainState) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002  (global RNG)
    return {
        "python": random.getstate(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "trials": state.trial_generator.get_state(),
    }


def _set_rng_state(rng: dict[str, Any], state: TrainState) -> None:
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    n = rng["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            n["name"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    state.trial_generator.set_state(rng["trials"])


def callback_key(callbacks: list, i: int) -> str:
    """The name callback ``i`` is stored under: its class name (``Name.k`` when repeated)."""
    name = type(callbacks[i]).__name__
    same = [j for j, cb in enumerate(callbacks) if type(cb).__name__ == name]
    return name if len(same) == 1 else f"{name}.{same.index(i)}"


def save_checkpoint(state: TrainState, path: str | Path) -> Path:
    """Write the full training state to ``path`` atomically (temp file + os.replace).

    A crash while writing leaves the previous file at ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "step": state.step,
        "task": state.config.task,
        "model": _model_record(state),
        "config": config_to_dict(state.config),
        "state_dict": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict() if state.optimizer is not None else None,
        "scheduler": state.scheduler.state_dict() if state.scheduler is not None else None,
        "rng": _rng_state(state),
        "callbacks": {
            callback_key(state.callbacks, i): cb.state_dict()
            for i, cb in enumerate(state.callbacks)
        },
        "metrics": dict(state.metrics),
        "history": list(state.history),
        "eval_step": state.eval_step,
        "solved": state.solved,
        "redraws": dict(state.redraws),
        "guard": state.guard.state_dict() if state.guard is not None else None,
        "best": state.best,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder: its ``checkpoints/last.pt``, else ``best.pt``.

    Raises:
        CheckpointError: nothing there (the message says what was looked for).
    """
    p = Path(path)
    if p.is_dir():
        folder = p / "checkpoints"
        for name in ("last.pt", "best.pt"):
            if (folder / name).is_file():
                return folder / name
        raise CheckpointError(
            f"no checkpoint in run folder {p} (looked for {folder / 'last.pt'} and best.pt)"
        )
    if not p.is_file():
        raise CheckpointError(f"no checkpoint at {p} (pass a run folder or a .pt file)")
    return p


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict of a file or run folder, loaded with ``weights_only=True``.

    Raises:
        CheckpointError: missing, empty, damaged, not a colenv checkpoint, or a newer format;
            one message naming the file and what is wrong.
    """
    p = resolve_checkpoint(path)
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {p} is empty (0 bytes); was its write interrupted?")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  weights_only runs no code; any failure = damaged
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"checkpoint {p} cannot be read: it is damaged or not a torch checkpoint ({first})"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        what = f"a {type(ckpt).__name__}" if not isinstance(ckpt, dict) else "a dict"
        raise CheckpointError(
            f"{p} is not a colenv checkpoint: it holds {what} without format = {FORMAT!r} "
            "(written by another program, or by colenv before checkpoint format 1)"
        )
    if ckpt.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {p} has format version {ckpt.get('version')!r}; this colenv reads "
            f"version {VERSION}"
        )
    for key, kind in _LAYOUT.items():
        if not isinstance(ckpt.get(key), kind):
            what = "lacks" if key not in ckpt else f"has a {type(ckpt[key]).__name__} under"
            raise CheckpointError(
                f"checkpoint {p} {what} the key {key!r} (a colenv checkpoint holds "
                f"{', '.join(_LAYOUT)}); it is damaged or was not written by colenv"
            )
    for key in ("kind", "options", "shapes"):
        if key not in ckpt["model"]:
            raise CheckpointError(f"checkpoint {p} lacks model.{key}; it is damaged")
    return ckpt


_LAYOUT: dict[str, type | tuple[type, ...]] = {
    "step": int,
    "task": str,
    "model": dict,
    "config": dict,
    "state_dict": dict,
    "optimizer": (dict, type(None)),
    "scheduler": (dict, type(None)),
    "rng": dict,
    "callbacks": dict,
    "metrics": dict,
    "history": list,
    "eval_step": int,
    "solved": bool,
}
"""Top-level keys of a checkpoint and their types (``best`` may be None or a float)."""


def check_compatible(
    ckpt: dict[str, Any], config: Any, model: torch.nn.Module | None, path
) -> None:
    """Errors unless ``ckpt`` was trained on ``config``'s task with a model of the same kind
    and (if ``model`` is given) the same parameter shapes as ``model``."""
    if ckpt["task"] != config.task:
        raise CheckpointError(
            f"checkpoint {path} was trained on task {ckpt['task']!r} but the config asks for "
            f"{config.task!r}"
        )
    saved = ckpt["model"]
    if saved["kind"] != config.model.kind:
        raise CheckpointError(
            f"checkpoint {path} holds a model.kind = {saved['kind']!r} but the config builds "
            f"{config.model.kind!r}"
        )
    if model is None:
        return
    now = {name: list(t.shape) for name, t in model.state_dict().items()}
    tensors = ckpt["state_dict"]
    if not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise CheckpointError(f"checkpoint {path} has a state_dict entry that is not a tensor")
    held = {name: list(t.shape) for name, t in tensors.items()}  # what load_state_dict gets
    for name in sorted(set(held) | set(now)):
        a, b = held.get(name), now.get(name)
        if a != b:
            here = config.model.options.model_dump(mode="json")
            differ = [
                f"model.{key} = {_short(saved['options'].get(key))} in the checkpoint, "
                f"{_short(here.get(key))} in the config"
                for key in sorted(set(saved["options"]) | set(here))
                if saved["options"].get(key) != here.get(key)
            ]
            raise CheckpointError(
                f"checkpoint {path} does not fit the model: {name} is "
                f"{a if a is not None else 'absent'} in the checkpoint and "
                f"{b if b is not None else 'absent'} in the model built from the config"
                + (f" ({'; '.join(differ)})" if differ else "")
            )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def load_checkpoint(path: str | Path, state: TrainState) -> dict[str, Any]:
    """Restore ``state`` (model, optimizer, scheduler, RNGs, callbacks, history) from a file
    or run folder; returns the checkpoint dict."""
    p = resolve_checkpoint(path)
    ckpt = read_checkpoint(p)
    check_compatible(ckpt, state.config, state.model, p)
    state.model.load_state_dict(ckpt["state_dict"])
    if state.optimizer is not None and ckpt["optimizer"] is not None:
        state.optimizer.load_state_dict(ckpt["optimizer"])
    if state.scheduler is not None and ckpt["scheduler"] is not None:
        state.scheduler.load_state_dict(ckpt["scheduler"])
    _set_rng_state(ckpt["rng"], state)
    saved = ckpt["callbacks"]
    for i, cb in enumerate(state.callbacks):
        key = callback_key(state.callbacks, i)
        if key in saved:
            cb.load_state_dict(saved[key])
    state.step = ckpt["step"]
    state.metrics = dict(ckpt["metrics"])
    state.history = list(ckpt["history"])
    state.eval_step = ckpt["eval_step"]
    state.solved = ckpt["solved"]
    state.best = ckpt["best"]
    redraws = ckpt.get("redraws", {})  # absent in checkpoints written before it existed
    if not isinstance(redraws, dict) or not all(
        type(k) is int and type(v) is int and v > 0 for k, v in redraws.items()
    ):
        raise CheckpointError(
            f"checkpoint {p} has redraws = {_short(redraws)}; a colenv checkpoint holds a dict "
            "of step index -> draw (positive int) there; it is damaged"
        )
    state.redraws = dict(redraws)
    guard = ckpt.get("guard")  # absent in checkpoints written before it existed
    if guard is not None and not isinstance(guard, dict):
        raise CheckpointError(
            f"checkpoint {p} has guard = {_short(guard)}; a colenv checkpoint holds the runaway "
            "guard's state (a dict) or None there; it is damaged"
        )
    state.guard_state = guard
    state.checkpoint = str(p)
    state.resumed_from = ckpt["config"]
    return ckpt
