"""Callbacks: hooks with no-op defaults, and the one state object they all receive.

A trainer calls, in this order::

    on_fit_start(state)
    per step:  [every eval_every steps: on_eval_end(state, metrics)]  on_step_end(state)
    on_fit_end(state, result)

``on_step_end`` returning False stops training. A callback that keeps state across steps
implements ``state_dict()`` / ``load_state_dict()``; the checkpoint stores it, so a resumed
run continues with the same callback state.

Callbacks here: :class:`ProgressBar`, :class:`CheckpointCallback`, :class:`EarlyStopping`,
:class:`PlotCallback`; W&B lives in :mod:`trainers.wandb_logger` (imported only when used).
"""

from __future__ import annotations

import math
import os
import random
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "Callback",
    "CheckpointCallback",
    "EarlyStopping",
    "PlotCallback",
    "ProgressBar",
    "TrainState",
    "load_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
]


@dataclass
class TrainState:
    """Everything a callback may read (and a checkpoint holds). Passed, never ``locals()``."""

    config: Any
    """the TrainConfig of the run"""
    task: Any
    """the TrialTask being trained on"""
    model: torch.nn.Module
    """the model (ColumnNetwork or HopfField)"""
    optimizer: torch.optim.Optimizer
    """the optimizer"""
    scheduler: Any
    """the learning-rate scheduler"""
    run_dir: Path
    """the run's folder"""
    callbacks: list = field(default_factory=list)
    """the callbacks of the run (the checkpoint stores their states)"""
    trial_generator: torch.Generator = field(default_factory=torch.Generator)
    """CPU generator of the trials, re-seeded from (seed, step) every step"""
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
    eval_tensors: dict = field(default_factory=dict)
    """the last evaluation's output [T, B, O], rates [T, B, S'], trial (CPU), for plots"""
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
    plot_paths: list = field(default_factory=list)
    """PNG files written by PlotCallback"""


class Callback:
    """Base class: every hook is a no-op."""

    def on_fit_start(self, state: TrainState) -> None:
        """Before the first step (after a resume has restored the state)."""

    def on_step_end(self, state: TrainState) -> bool | None:
        """After each optimizer step (and its evaluation, if any). Return False to stop."""

    def on_eval_end(self, state: TrainState, metrics: dict[str, float]) -> None:
        """After each evaluation on the task's grid."""

    def on_fit_end(self, state: TrainState, result) -> None:
        """After the loop, with the :class:`trainers.Result`."""

    def state_dict(self) -> dict[str, Any]:
        """What to checkpoint for an exact resume."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""


def _callback_key(callbacks: list, i: int) -> str:
    name = type(callbacks[i]).__name__
    same = [j for j, cb in enumerate(callbacks) if type(cb).__name__ == name]
    return name if len(same) == 1 else f"{name}.{same.index(i)}"


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(state: TrainState, path: str | Path) -> Path:
    """Write the full training state to ``path`` atomically (temp file + os.replace).

    A crash while writing leaves the previous file at ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "step": state.step,
        "config": state.config.to_dict(),
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "rng": {
            "python": random.getstate(),
            "numpy": np.random.get_state(),  # noqa: NPY002  (global state other code may use)
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "trials": state.trial_generator.get_state(),
        },
        "callbacks": {
            _callback_key(state.callbacks, i): cb.state_dict()
            for i, cb in enumerate(state.callbacks)
        },
        "metrics": dict(state.metrics),
        "history": list(state.history),
        "eval_step": state.eval_step,
        "solved": state.solved,
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
    """A checkpoint file, or a run dir (-> its checkpoints/last.pt)."""
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoints" / "last.pt"
    if not p.is_file():
        raise FileNotFoundError(f"no checkpoint at {p} (pass a run dir or a .pt file)")
    return p


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict (it holds RNG states, so it is not weights-only)."""
    return torch.load(resolve_checkpoint(path), map_location="cpu", weights_only=False)


def load_checkpoint(path: str | Path, state: TrainState) -> dict[str, Any]:
    """Restore ``state`` (model, optimizer, scheduler, RNGs, callbacks, history) from a file."""
    ckpt = read_checkpoint(path)
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    rng = ckpt["rng"]
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])  # noqa: NPY002
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    state.trial_generator.set_state(rng["trials"])
    saved = ckpt["callbacks"]
    for i, cb in enumerate(state.callbacks):
        key = _callback_key(state.callbacks, i)
        if key in saved:
            cb.load_state_dict(saved[key])
    state.step = ckpt["step"]
    state.metrics = dict(ckpt["metrics"])
    state.history = list(ckpt["history"])
    state.eval_step = ckpt["eval_step"]
    state.solved = ckpt["solved"]
    state.best = ckpt["best"]
    return ckpt


class CheckpointCallback(Callback):
    """Keeps ``checkpoints/last.pt`` (every ``every`` steps, at success, at the end) and
    ``checkpoints/best.pt`` (best success metric). Nothing is written after a divergence, so
    the last good checkpoint stays intact."""

    def __init__(self, every: int = 50) -> None:
        self.every = every

    def _save(self, state: TrainState, name: str) -> Path:
        path = save_checkpoint(state, state.run_dir / "checkpoints" / name)
        if name == "last.pt":
            state.checkpoint = str(path)
        return path

    def on_step_end(self, state: TrainState) -> None:
        if self.every and state.step % self.every == 0:
            self._save(state, "last.pt")

    def on_eval_end(self, state: TrainState, metrics: dict[str, float]) -> None:
        value = metrics.get(state.config.success.metric, math.nan)
        if math.isfinite(value):
            better = state.best is None or (
                value > state.best if state.config.higher_is_better else value < state.best
            )
            if better:
                state.best = value
                self._save(state, "best.pt")
        if state.solved:
            self._save(state, "last.pt")

    def on_fit_end(self, state: TrainState, result) -> None:
        if not state.diverged:
            self._save(state, "last.pt")
            result.checkpoint = state.checkpoint


class EarlyStopping(Callback):
    """Stops once the success criterion held at ``patience`` consecutive evaluations."""

    def __init__(self, patience: int = 1) -> None:
        self.patience = patience
        self.count = 0

    def on_eval_end(self, state: TrainState, metrics: dict[str, float]) -> None:
        self.count = self.count + 1 if state.solved else 0

    def on_step_end(self, state: TrainState) -> bool | None:
        if self.count >= self.patience:
            state.stop_reason = (
                f"solved: {state.config.success.metric} met {state.threshold} at "
                f"{self.count} consecutive evaluation(s), step {state.step}"
            )
            return False
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = state["count"]


class ProgressBar(Callback):
    """A tqdm bar on a terminal; otherwise one printed line per evaluation."""

    def __init__(self, stream=None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.bar = None

    def on_fit_start(self, state: TrainState) -> None:
        if self.stream.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=state.config.train.steps, initial=state.step, desc=state.config.task
            )

    def on_step_end(self, state: TrainState) -> None:
        if self.bar is not None:
            self.bar.update(state.step - self.bar.n)
            self.bar.set_postfix(loss=f"{state.loss:.4g}", refresh=False)

    def on_eval_end(self, state: TrainState, metrics: dict[str, float]) -> None:
        shown = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
        )
        line = f"step {state.step}/{state.config.train.steps}  train/loss={state.loss:.4g}  {shown}"
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, file=self.stream, flush=True)

    def on_fit_end(self, state: TrainState, result) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ----------------------------------------------------------------------------- plots
class PlotCallback(Callback):
    """PNG figures of the last evaluation into ``<run>/plots`` at the end of training.

    Column tasks: outputs vs targets of the evaluation trials, and the population rates of
    each area; Hopf: phase portraits, true vs learned; Decision: the network's choice accuracy
    vs |coherence| next to the Wong-Wang model's (the task targets' choices).
    """

    def __init__(self) -> None:
        self.paths: list[Path] = []

    def on_fit_end(self, state: TrainState, result) -> None:
        if not state.eval_tensors:
            return
        import matplotlib

        matplotlib.use("Agg", force=False)
        out_dir = state.run_dir / "plots"
        out_dir.mkdir(parents=True, exist_ok=True)
        tensors = state.eval_tensors
        trial = tensors["trial"]
        title = f"{state.config.task}, step {state.eval_step}"
        self.paths = []
        if "x0" in trial.conditions and tensors["output"].shape[-1] == 2 and _is_hopf(state):
            self.paths.append(plot_phase_portraits(tensors, out_dir / "phase_portraits.png", title))
        else:
            self.paths.append(plot_outputs(tensors, out_dir / "outputs.png", title))
            names = getattr(state.model, "population_names", None)
            if names is not None:
                self.paths.append(
                    plot_populations(tensors, names, out_dir / "populations.png", title)
                )
        if "coherence_pct" in trial.conditions:
            if hasattr(state.task, "choice_windows"):
                windows = state.task.choice_windows(trial.n_steps)
            else:
                windows = {"end of trial": slice(trial.n_steps - max(1, trial.n_steps // 10), None)}
            self.paths.append(
                plot_psychometric(tensors, windows, out_dir / "psychometric.png", title)
            )
        state.plot_paths = list(self.paths)


def _is_hopf(state: TrainState) -> bool:
    return state.config.model.kind == "hopf_mlp"


def plot_outputs(tensors: dict, path: Path, title: str, max_trials: int = 16) -> Path:
    """Output (solid) vs target (dashed) per evaluation trial; shaded where the mask is on."""
    import matplotlib.pyplot as plt

    trial, output = tensors["trial"], tensors["output"]
    t = trial.t_ms.numpy()
    n = min(trial.batch_size, max_trials)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for b in range(n):
        ax = axes[b // cols][b % cols]
        for o in range(output.shape[-1]):
            (line,) = ax.plot(t, output[:, b, o].numpy(), lw=1.2)
            ax.plot(t, trial.target[:, b, o].numpy(), "--", color=line.get_color(), lw=1)
        on = trial.mask[:, b].any(dim=-1).numpy()
        if on.any():
            ax.fill_between(t, 0, 1, where=on, color="0.9", transform=ax.get_xaxis_transform())
        label = ", ".join(f"{k}={_fmt(v[b])}" for k, v in trial.conditions.items() if v.ndim <= 2)
        ax.set_title(label[:40], fontsize=7)
        ax.tick_params(labelsize=6)
    for b in range(n, rows * cols):
        axes[b // cols][b % cols].axis("off")
    fig.suptitle(f"{title}: output (solid) vs target (dashed), ms", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_populations(tensors: dict, names: list[str], path: Path, title: str) -> Path:
    """Rates (Hz) of the 8 populations, averaged over the columns of each area, trial 0."""
    import matplotlib.pyplot as plt

    rates, trial = tensors["rates"], tensors["trial"]
    t = trial.t_ms.numpy()
    areas: dict[str, dict[str, list[int]]] = {}
    for i, name in enumerate(names):
        area_col, pop = name.split(".")
        areas.setdefault(area_col.split("[")[0], {}).setdefault(pop, []).append(i)
    fig, axes = plt.subplots(1, len(areas), figsize=(4 * len(areas), 3), squeeze=False)
    for ax, (area, pops) in zip(axes[0], areas.items(), strict=True):
        for pop, idx in pops.items():
            ax.plot(t, rates[:, 0, idx].mean(dim=-1).numpy(), label=pop, lw=1)
        ax.set_title(f"area {area}", fontsize=8)
        ax.set_xlabel("ms", fontsize=7)
        ax.set_ylabel("Hz", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0][0].legend(fontsize=6)
    fig.suptitle(f"{title}: population rates, trial 0", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_phase_portraits(tensors: dict, path: Path, title: str) -> Path:
    """(x, y) of each evaluation trial, true (dashed) vs learned (solid), one panel per mu."""
    import matplotlib.pyplot as plt

    trial, output = tensors["trial"], tensors["output"]
    mu = trial.stimulus[0, :, 0]
    levels = sorted({round(float(m), 6) for m in mu})
    fig, axes = plt.subplots(1, len(levels), figsize=(2.6 * len(levels), 2.8), squeeze=False)
    for ax, level in zip(axes[0], levels, strict=True):
        for b in (abs(mu - level) < 1e-6).nonzero().flatten().tolist():
            (line,) = ax.plot(output[:, b, 0], output[:, b, 1], lw=1)
            ax.plot(trial.target[:, b, 0], trial.target[:, b, 1], "--", color=line.get_color())
        ax.set_title(f"mu(0) = {level:g}", fontsize=8)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=6)
    fig.suptitle(f"{title}: learned (solid) vs true (dashed)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def choice_accuracy(rates: torch.Tensor, coherence: torch.Tensor, window: slice) -> dict:
    """Accuracy vs |coherence|: choice = argmax of the mean rate over the steps ``window``,
    correct = pool 1 (index 0) for c' > 0 and pool 2 for c' < 0; c' = 0 is left out."""
    choice = rates[window].mean(dim=0).argmax(dim=-1)
    correct = choice == (coherence < 0).long()
    out: dict[float, float] = {}
    for level in sorted({abs(float(c)) for c in coherence if c != 0}):
        sel = coherence.abs() == level
        out[level] = float(correct[sel].double().mean())
    return out


def plot_psychometric(tensors: dict, windows: dict[str, slice], path: Path, title: str) -> Path:
    """Choice accuracy vs |coherence|: trained network next to the Wong-Wang targets, the
    choice read in each of ``windows`` (name -> steps; the targets in the first)."""
    import matplotlib.pyplot as plt

    trial, output = tensors["trial"], tensors["output"]
    coherence = trial.conditions["coherence_pct"]
    first = next(iter(windows.values()))
    ww = choice_accuracy(trial.target, coherence, first)
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot(list(ww), list(ww.values()), "o--", color="0.4", label="Wong & Wang 2006 (targets)")
    for name, window in windows.items():
        net = choice_accuracy(output, coherence, window)
        ax.plot(list(net), list(net.values()), "o-", label=f"trained columns, {name}")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("|coherence| (%)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _fmt(value: torch.Tensor) -> str:
    if value.ndim == 0:
        v = value.item()
        return f"{v:g}" if isinstance(v, float) else str(v)
    return (
        "".join(str(int(x)) for x in value)
        if not value.is_floating_point()
        else str([round(float(x), 2) for x in value])
    )
