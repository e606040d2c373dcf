"""Callbacks, and :class:`Callbacks`: the bookkeeping every trainer gets for free.

A trainer receives a :class:`Callbacks` (a list of :class:`Callback`) and calls four methods;
they create the run folder, resume from ``config.resume``, write checkpoints, print progress,
log to W&B and draw the task's plots::

    state = callbacks.begin(model, task, config, optimizer=opt)   # -> TrainState
    while state.step < config.train.steps:
        ...                                           # one update of the model
        state.step += 1
        state.loss = float(loss)
        if state.step % config.train.eval_every == 0:
            callbacks.evaluated(state, metrics, output=output, trial=trial)
        if not callbacks.step_end(state):             # early stopping, or a callback said stop
            break
    return callbacks.end(state)                       # -> Result

Each :class:`Callback` hook is a no-op by default; the order of calls is::

    on_fit_start(state)
    per step:  [after an evaluation: on_eval_end(state, metrics)]  on_step_end(state)
    on_fit_end(state, result)

``on_step_end`` returning False stops training. A callback that keeps state across steps
implements ``state_dict()`` / ``load_state_dict()``; the checkpoint stores it, so a resumed run
continues with the same callback state.

Callbacks here: :class:`ProgressBar`, :class:`CheckpointCallback`, :class:`EarlyStopping`,
:class:`PlotCallback`, :class:`StepCheck`; W&B lives in :mod:`trainers.wandb_logger` (imported only when used).
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from colenv.errors import ConfigError
from trainers.checkpoint import (
    CheckpointError,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from trainers.rundir import RunFolder, fresh_run_name
from trainers.types import Result, TrainState, higher_is_better

__all__ = [
    "Callback",
    "Callbacks",
    "CheckpointCallback",
    "EarlyStopping",
    "PlotCallback",
    "ProgressBar",
    "StepCheck",
    "StepSizeWarning",
    "claim_run_name",
    "resumes_in_place",
]


class Callback:
    """Base class: every hook is a no-op."""

    def on_fit_start(self, state: TrainState) -> None:
        """Before the first step (after a resume has restored the state)."""

    def on_step_end(self, state: TrainState) -> bool | None:
        """After each optimizer step (and its evaluation, if any). Return False to stop."""

    def on_eval_end(self, state: TrainState, metrics: dict[str, float]) -> None:
        """After each evaluation on the task's grid."""

    def on_fit_end(self, state: TrainState, result: Result) -> None:
        """After the loop, with the :class:`trainers.Result`."""

    def state_dict(self) -> dict[str, Any]:
        """What to checkpoint for an exact resume (plain values and tensors only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""


def claim_run_name(config) -> str:
    """``<task>-<timestamp>`` (``-2``, ``-3``, ... when taken), its folder created atomically,
    so two runs started in the same second never share (and overwrite) one run folder."""
    return fresh_run_name(Path(config.logging.run_dir), config.task)


def resumes_in_place(config, run_dir: Path) -> bool:
    """Whether ``config.resume`` is a checkpoint of ``run_dir`` (the run continues there)."""
    if not config.resume:
        return False
    try:
        ckpt = resolve_checkpoint(config.resume).resolve()
    except CheckpointError:
        return False
    return ckpt.parent == (Path(run_dir) / "checkpoints").resolve()


class Callbacks(list):
    """The callbacks of one run, called together; what a trainer uses for its bookkeeping.

    ``run`` is the claimed and locked :class:`trainers.rundir.RunFolder` of the run
    (:func:`trainers.train` opens it before calling the trainer; otherwise :meth:`begin`
    opens it and :meth:`end` releases it). ``interrupted`` is set (to ``"SIGINT"`` or
    ``"SIGTERM"``) by :func:`trainers.train`'s signal handlers: the next :meth:`step_end`
    writes ``last.pt`` and stops training."""

    def __init__(self, callbacks=(), *, run: RunFolder | None = None) -> None:
        super().__init__(callbacks)
        self.run = run
        self.interrupted = ""
        self._owns_run = False

    def begin(
        self,
        model: torch.nn.Module,
        task,
        config,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        trial_generator: torch.Generator | None = None,
    ) -> TrainState:
        """The run's :class:`TrainState`: its folder ``<logging.run_dir>/<run_name>`` claimed
        and locked (a fresh name if ``run_name`` is empty), the success threshold set, the
        model, optimizer, scheduler, RNGs and callback states restored from ``config.resume``
        if set (with a message saying from where and what continues); then every
        ``on_fit_start``."""
        if self.run is None:
            if not config.run_name:
                config = config.model_copy(update={"run_name": claim_run_name(config)})
            run_dir = Path(config.logging.run_dir) / config.run_name
            self.run = RunFolder.open(
                config.logging.run_dir,
                config.run_name,
                task=config.task,
                resuming=resumes_in_place(config, run_dir),
            )
            self._owns_run = True
        elif self.run.path.name != config.run_name:
            config = config.model_copy(
                update={"run_name": self.run.path.name, "logging": _with_run_dir(config, self.run)}
            )
        for leftover in self.run.removed_temp:
            print(f"removed {leftover} (a checkpoint write that was interrupted)", flush=True)
        state = TrainState(
            config=config,
            task=task,
            model=model,
            run_dir=self.run.path,
            callbacks=self,
            optimizer=optimizer,
            scheduler=scheduler,
            trial_generator=trial_generator or torch.Generator(),
        )
        threshold = config.success.threshold
        state.threshold = float(task.success_threshold if threshold is None else threshold)
        if config.resume:
            path = resolve_checkpoint(config.resume)
            ckpt = load_checkpoint(path, state)
            print(resume_message(config, state, path, ckpt), flush=True)
        for cb in self:
            cb.on_fit_start(state)
        state.start_time = time.perf_counter()
        return state

    def evaluated(
        self,
        state: TrainState,
        metrics: dict[str, float],
        *,
        output: torch.Tensor | None = None,
        trial=None,
        rates: torch.Tensor | None = None,
    ) -> None:
        """Record an evaluation at ``state.step``: metrics, history, whether the success
        criterion holds; ``output`` [T, B, O], ``rates`` [T, B, U] and ``trial`` are kept (on
        the CPU) for the plots. Then every ``on_eval_end``."""
        config = state.config
        metric = config.success.metric
        if metric not in metrics:
            raise ConfigError(
                f"success.metric = {metric!r} is not a metric of {config.task}; its metrics: "
                f"{', '.join(metrics)}"
            )
        value = metrics[metric]
        better = higher_is_better(metric)
        state.solved = bool(value >= state.threshold if better else value <= state.threshold)
        state.metrics = dict(metrics)
        state.eval_step = state.step
        state.history.append({"step": state.step, **metrics})
        if output is not None and trial is not None:
            state.eval_outputs = {"output": output.detach().cpu()}
            if rates is not None:
                state.eval_outputs["rates"] = rates.detach().cpu()
            state.eval_trial = trial.to("cpu")
        for cb in self:
            cb.on_eval_end(state, state.metrics)

    def step_end(self, state: TrainState) -> bool:
        """Every ``on_step_end``; False when one of them asks to stop (``state.stop_reason``
        then says why) or when a signal arrived: then ``last.pt`` holds this step (a
        consistent state at a step boundary) and ``state.interrupted`` names the signal."""
        keep_going = [cb.on_step_end(state) for cb in self]
        if any(k is False for k in keep_going):
            state.stop_reason = state.stop_reason or f"stopped by a callback at step {state.step}"
            return False
        if self.interrupted:
            path = save_checkpoint(state, state.run_dir / "checkpoints" / "last.pt")
            state.checkpoint = str(path)
            state.interrupted = self.interrupted
            state.stop_reason = (
                f"interrupted by {self.interrupted} after step {state.step} of "
                f"{state.config.train.steps}; saved {path}. Continue with: "
                f"python -m trainers resume {state.run_dir}"
            )
            return False
        return True

    def end(self, state: TrainState) -> Result:
        """The :class:`Result` of the run, after every ``on_fit_end`` (final checkpoint,
        plots, W&B summary)."""
        result = Result(
            steps=state.step,
            wall_s=time.perf_counter() - state.start_time,
            solved=criterion_streak(state) >= state.config.success.patience,
            metrics=dict(state.metrics),
            history=list(state.history),
            checkpoint=state.checkpoint,
            run_dir=str(state.run_dir),
            diverged=state.diverged,
            message=state.stop_reason or f"stopped at step {state.step}",
            interrupted=state.interrupted,
        )
        try:
            for cb in self:
                cb.on_fit_end(state, result)
        finally:
            if self._owns_run and self.run is not None:
                self.run.close()
        result.checkpoint = state.checkpoint
        return result


def criterion_streak(state: TrainState) -> int:
    """How many evaluations in a row, ending with the last one, met the success criterion
    (one per evaluated step): a run is solved when this reaches ``success.patience``, so a
    run that met it once and then stopped (a divergence, the budget) under patience 2 is not."""
    metric = state.config.success.metric
    up = higher_is_better(metric)
    streak, seen = 0, set()
    for row in reversed(state.history):
        if row.get("step") in seen:
            continue  # the same step evaluated twice counts once
        seen.add(row.get("step"))
        value = row.get(metric, math.nan)
        if not (value >= state.threshold if up else value <= state.threshold):
            break
        streak += 1
    return streak


def _with_run_dir(config, run: RunFolder):
    return config.logging.model_copy(update={"run_dir": str(run.path.parent)})


def resume_message(config, state: TrainState, path: Path, ckpt: dict[str, Any]) -> str:
    """What a resume continues: from which file and step, a changed budget, early stopping."""
    lines = [f"resuming {state.run_dir} from {path} at step {state.step} of {config.train.steps}"]
    if path.name == "best.pt" and not (path.parent / "last.pt").is_file():
        lines.append(
            f"  no last.pt in {path.parent}: using best.pt, written at step {state.step} (the "
            f"best {config.success.metric} so far); the steps after it are trained again"
        )
    old_steps = ckpt["config"].get("train", {}).get("steps")
    if old_steps is not None and old_steps != config.train.steps:
        lines.append(
            f"  train.steps {old_steps} -> {config.train.steps}: the budget and the "
            f"learning-rate schedule follow the new total, as if the run had started with "
            f"train.steps={config.train.steps}"
        )
    metric, best = config.success.metric, state.best
    best_text = f"{best:.4g}" if isinstance(best, float) else "none yet"
    stopping = [cb for cb in state.callbacks if isinstance(cb, EarlyStopping)]
    if stopping:
        es = stopping[0]
        op = ">=" if higher_is_better(metric) else "<="
        lines.append(
            f"  early stopping: {metric} {op} {state.threshold:g} has held at {es.count} "
            f"evaluation(s) in a row so far; training stops when it holds at {es.patience} "
            f"(success.patience); best {metric} so far {best_text} (best.pt)"
            + (
                "; it already does, so training stops after the next step "
                "(success.stop_on_success=false trains on)"
                if es.count >= es.patience
                else ""
            )
        )
    else:
        lines.append(f"  best {metric} so far {best_text} (best.pt); no early stopping")
    return "\n".join(lines)


class CheckpointCallback(Callback):
    """Keeps ``checkpoints/last.pt`` (every ``every`` steps, at success, at the end) and
    ``checkpoints/best.pt`` (best success metric). Both are written at the end of a step,
    after every callback has seen its evaluation, so either one resumes exactly. Nothing is
    written after a divergence, so the last good checkpoint stays intact."""

    def __init__(self, every: int = 50) -> None:
        self.every = every
        self._best_pending = False
        self._last_pending = False

    def _save(self, state: TrainState, name: str) -> Path:
        path = save_checkpoint(state, state.run_dir / "checkpoints" / name)
        if name == "last.pt":
            state.checkpoint = str(path)
        return path

    def _flush(self, state: TrainState) -> None:
        if self._best_pending:
            self._save(state, "best.pt")
        if self._last_pending or (self.every and state.step % self.every == 0):
            self._save(state, "last.pt")
        self._best_pending = self._last_pending = False

    def on_step_end(self, state: TrainState) -> None:
        self._flush(state)

    def on_eval_end(self, state: TrainState, metrics: dict[str, float]) -> None:
        metric = state.config.success.metric
        value = metrics.get(metric, math.nan)
        if math.isfinite(value):
            up = higher_is_better(metric)
            if state.best is None or (value > state.best if up else value < state.best):
                state.best = value
                self._best_pending = True
        if state.solved:
            self._last_pending = True

    def on_fit_end(self, state: TrainState, result: Result) -> None:
        if state.diverged:
            return
        if self._best_pending:
            self._save(state, "best.pt")
            self._best_pending = False
        if not state.interrupted:  # an interrupted run's last.pt is written already
            self._save(state, "last.pt")


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
                f"solved: {state.config.success.metric} met {state.threshold:g} at "
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
        self.stream = stream
        self.bar = None

    def _out(self):
        return self.stream if self.stream is not None else sys.stdout

    def on_fit_start(self, state: TrainState) -> None:
        if self._out().isatty():
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
            print(line, file=self._out(), flush=True)

    def on_fit_end(self, state: TrainState, result: Result) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class PlotCallback(Callback):
    """At the end of training, the task draws the last evaluation into ``<run>/plots``
    (``task.plot``: each task draws what its science needs)."""

    def __init__(self) -> None:
        self.paths: list[Path] = []

    def on_fit_end(self, state: TrainState, result: Result) -> None:
        if not state.eval_outputs or state.eval_trial is None or state.interrupted:
            return
        plot = getattr(state.task, "plot", None)
        if plot is None:
            return
        self.paths = list(
            plot(
                state.eval_outputs,
                state.eval_trial,
                state.run_dir / "plots",
                f"{state.config.task}, step {state.eval_step}",
                unit_names=getattr(state.model, "population_names", None),
            )
        )
        state.plot_paths = list(self.paths)


class StepSizeWarning(UserWarning):
    """The solver's step is too large for the network being trained (see :class:`StepCheck`)."""


class StepCheck(Callback):
    """At the first evaluation of a run, roll the evaluation trials out again at half
    ``solver.step_ms`` and warn (:class:`StepSizeWarning`) when the outputs differ by more
    than ``tol`` (``train.step_check``; Hz for rate tasks), naming the difference and the
    step to use: the largest of step/2, step/4, step/8 that agrees with its own half, or "below
    step/8". With ``every`` > 0 (``train.step_check_every``) the check runs again at every
    ``every``-th evaluation after the first: training can stiffen a network that started
    well within the step. The check runs noise-free (an SDE run's fixed-step drift is checked)
    and only for fixed-step solvers; adaptive solvers control their own error.

    Runaways are caught elsewhere (``solver.max_rate_hz``); this catches a step that is stable
    but inaccurate, which training would otherwise fit to."""

    levels = 3

    def __init__(self, tol: float, every: int = 0) -> None:
        self.tol = float(tol)
        self.every = int(every)
        self.evaluations = 0
        self.report: dict[str, Any] | None = None
        """what the last check found: ``{"step", "step_ms", "diff", "suggest_ms"}`` (None
        before it ran)"""
        self.reports: list[dict[str, Any]] = []
        """every check's report, in order"""

    def on_eval_end(self, state: TrainState, metrics: dict[str, float]) -> None:
        if state.eval_trial is None:
            return
        self.evaluations += 1
        k = self.evaluations - 1  # evaluations since the first
        if k and not (self.every and k % self.every == 0):
            return
        solver = state.config.solver
        if "adaptive" in type(solver).families(solver.method, solver.sde):
            return
        if solver.sde and "fast" not in type(solver).families(solver.method, True):
            return  # a torchsde scheme: no noise-free twin of the same method
        from colenv import DivergenceError
        from trainers.supervised import forward

        param = next(iter(state.model.parameters()), None)
        trial = state.eval_trial.to(param.device if param is not None else None)

        def run(step_ms: float) -> torch.Tensor | None:
            try:
                with torch.no_grad():
                    out, _, _ = forward(
                        state.model,
                        trial,
                        state.config,
                        solver.replace(step_ms=step_ms, sde=False),
                        0,
                    )
                return out
            except DivergenceError:
                return None

        h = solver.step_ms
        coarse, fine = run(h), run(h / 2)
        diff = _max_diff(coarse, fine)
        self.report = {"step": state.step, "step_ms": h, "diff": diff, "suggest_ms": h}
        self.reports.append(self.report)
        if diff <= self.tol:
            return
        suggest = None
        for level in range(1, self.levels + 1):
            step = h / 2**level
            finer = run(step / 2)
            if _max_diff(fine, finer) <= self.tol:
                suggest = step
                break
            fine = finer
        self.report["suggest_ms"] = suggest
        said = "inf (the rollout ran away)" if math.isinf(diff) else f"{diff:.3g}"
        advice = (
            f"use solver.step_ms = {suggest:g} (it agrees with its own half step)"
            if suggest is not None
            else f"even solver.step_ms = {h / 2**self.levels:g} does not agree with its half; "
            "use a smaller step or an adaptive method"
        )
        warnings.warn(
            f"solver.step_ms = {h:g} is too large for this network: at step {state.step} its "
            f"evaluation rollout differs from one at step_ms = {h / 2:g} by {said} (output "
            f"units) > train.step_check = {self.tol:g}; {advice}",
            StepSizeWarning,
            stacklevel=2,
        )


def _max_diff(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    if a is None or b is None:
        return math.inf
    d = (a - b).abs().max()
    return float(d) if bool(torch.isfinite(d)) else math.inf
