"""The default trainer: backpropagation through the solver, read top to bottom.

    for each step: batch -> rollout -> readout -> masked MSE (+ rate penalty) -> backward
                   -> clip -> optimizer and schedule step -> model.project_()
                   -> every eval_every steps: metrics on the task's evaluation grid

``train.task_kwargs`` lets the training trials come from a variant of the task (shorter
trials, a wider condition distribution) while evaluation stays on the task of ``task_kwargs``.

Every random number comes from ``config.train.seed``: the model init, and each step's trials,
drawn from a generator seeded by (seed, step) so that a resumed run sees exactly the batches an
uninterrupted one would. With ``solver.sde = true`` the evaluation at step k integrates
``eval.noise_draws`` noisy copies of every grid condition, its noise seeded by (seed, k)
(:func:`eval_seed`): the same run evaluates the same way every time. A NaN/inf loss or a diverging rollout stops training with a message
naming the step and the last good checkpoint (which is left as it was); with
``train.max_rejections`` the :class:`RunawayGuard` first undoes the update that caused it and
retries at half the learning rate.
"""

from __future__ import annotations

import collections
import copy
import math
import random
import time

import numpy as np
import torch

from colenv import DivergenceError, Trial, rollout
from colenv.errors import ConfigError
from trainers.build import build_task
from trainers.callbacks import Callbacks
from trainers.types import Result, TrainState

__all__ = [
    "RunawayGuard",
    "Schedule",
    "SupervisedTrainer",
    "eval_seed",
    "evaluate",
    "forward",
    "noise_draws",
    "masked_mse",
]


class SupervisedTrainer:
    """Backprop through the rollout on the masked MSE to the task's targets."""

    def fit(self, model, task, config, callbacks) -> Result:
        t = config.train
        seed_everything(t.seed)
        param = next(model.parameters())
        device, dtype = param.device, param.dtype
        solver = config.solver
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError(
                "nothing trains: the model has no parameter with requires_grad (for columns, "
                "set e.g. model.network.input.trainable=true)"
            )
        train_task = task
        if t.task_kwargs:  # training trials from a variant of the task; evaluation on `task`
            try:
                train_task = build_task(config, {**config.task_kwargs, **t.task_kwargs})
            except ConfigError as err:
                raise ConfigError(f"train.task_kwargs: {err}") from err
        eval_trial = task.sample_batch(conditions="all", seed=t.seed, device=device, dtype=dtype)
        optimizer = make_optimizer(t, params)
        scheduler = make_scheduler(t, optimizer)
        guard = RunawayGuard(params, optimizer, scheduler, t.max_rejections)
        callbacks = callbacks if isinstance(callbacks, Callbacks) else Callbacks(callbacks)
        state = callbacks.begin(model, task, config, optimizer=optimizer, scheduler=scheduler)
        state.guard = guard
        if state.guard_state is not None:  # a resume: the snapshots the run had (see restore)
            changed = [
                key
                for key in ("lr", "steps", "schedule")
                if state.resumed_from["train"].get(key) != getattr(t, key)
            ]
            if changed:
                print(
                    "  the runaway guard starts without snapshots: train."
                    + ", train.".join(changed)
                    + " changed, so those taken before the checkpoint no longer fit the run",
                    flush=True,
                )
            else:
                guard.load_state_dict(state.guard_state, where=state.checkpoint)
        if state.resumed_from is not None:  # a resume with a new train.lr scales the schedule
            rescale_lr(optimizer, scheduler, t.lr / state.resumed_from["train"]["lr"])
            scheduler.follow()  # a new train.steps: the schedule of the new total, at this step
            print(
                f"  learning rate at step {state.step}: {optimizer.param_groups[0]['lr']:.4g} "
                f"({t.schedule} schedule over train.steps = {t.steps})",
                flush=True,
            )
        diagnosis: str | None = None  # half-step check of the first runaway rollout, once

        while state.step < t.steps:
            # --- the batch of this step, seeded by (seed, step): a resume sees the same ones
            step_start = time.perf_counter()
            noise_seed = step_seed(t.seed, state.step, state.redraws.get(state.step, 0))
            state.trial_generator.manual_seed(noise_seed)
            trial = draw_batch(train_task, t, state.trial_generator, device, dtype)

            # --- forward and loss, backward and clipping; a runaway or NaN is a failure
            failure, hint = None, ""
            try:
                output, states, stats = forward(model, trial, config, solver, noise_seed)
                loss = masked_mse(output, trial.target, trial.mask)
                loss = loss + rate_penalty(model, states, t)
                if not torch.isfinite(loss):
                    raise DivergenceError(f"loss is {float(loss)}")
            except DivergenceError as err:
                if diagnosis is None:
                    diagnosis = step_diagnosis(model, trial, config, noise_seed, state.step + 1)
                failure, hint = str(err), diagnosis
            else:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                failure = clip_gradients(model, params, t.grad_clip, loss.detach().item())

            # --- a failure: undo the previous update and retry at half the lr, or stop
            if failure is not None:
                if guard.should_retry():
                    lr = guard.restore(state.step)
                    redo = range(guard.saved_step, state.step + 1)
                    print(
                        f"step {state.step + 1} rejected ({failure}); "
                        + (
                            f"steps {redo[0] + 1}-{redo[-1] + 1} run"
                            if len(redo) > 1
                            else f"step {redo[0] + 1} runs"
                        )
                        + f" again on fresh trials and noise; learning rate halved to {lr:.3g}"
                        + (f".{hint}" if hint else ""),
                        flush=True,
                    )
                    # every step run again draws afresh: under noise a failure can be the
                    # draw's (a rare excursion), which the same draw would repeat
                    for k in redo:
                        state.redraws[k] = state.redraws.get(k, 0) + 1
                    state.step = guard.saved_step  # redo from the update that tipped it over
                    continue
                state.diverged = True
                state.stop_reason = (
                    f"training diverged at step {state.step + 1}: {failure}. The last good "
                    f"checkpoint is {last_good_checkpoint(state)}; resume from it with a "
                    f"smaller train.lr or solver.step_ms.{hint}"
                )
                break

            # --- the update
            guard.snapshot(state.step)
            optimizer.step()
            scheduler.step()
            model.project_()

            # --- bookkeeping: progress, checkpoints, evaluation, early stopping
            state.step += 1
            state.loss = loss.detach().item()
            state.lr = optimizer.param_groups[0]["lr"]
            state.nfe = stats.nfe
            state.trials_per_s = trial.batch_size / (time.perf_counter() - step_start)
            if state.step % t.eval_every == 0 or state.step == t.steps:
                evaluate_into(state, eval_trial)
            if not callbacks.step_end(state):
                break
        else:
            state.stop_reason = f"budget of {t.steps} steps spent"

        if not (state.diverged or state.interrupted) and state.eval_step != state.step:
            evaluate_into(state, eval_trial)  # final metrics of the final weights
        return callbacks.end(state)


# ----------------------------------------------------------------------------- the guard
class RunawayGuard:
    """Rolls back the updates that made the next step diverge (``train.max_rejections``).

    Before each update, :meth:`snapshot` keeps the weights, optimizer and schedule (the last
    ``max_rejections`` + 1 snapshots). When a step fails, :meth:`should_retry` says whether to
    roll back (a snapshot exists and fewer than ``max_rejections`` rollbacks ran in a row) and
    :meth:`restore` puts a snapshot back with half the learning rate; training then redoes
    the steps from the one whose update that snapshot preceded (:attr:`saved_step`). The first
    rollback undoes the last update. A redone step that fails on the restored weights
    themselves shows those are bad too (an update a few steps back crossed into a runaway
    regime, where the loss is finite and then explodes), so the next rollback goes one
    update further back. The count restarts once an update past the rejected step survives.
    ``max_rejections = 0`` keeps no snapshot (no copy cost) and never retries.
    """

    def __init__(self, params, optimizer, scheduler, max_rejections: int) -> None:
        self.params = params
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.max_rejections = max_rejections
        self.saved: collections.deque = collections.deque(maxlen=max_rejections + 1)
        self.rejections = 0
        self.rejected_at = -1

    @property
    def saved_step(self) -> int:
        """The step (0-based) whose update the newest snapshot precedes; -1 without one."""
        return self.saved[-1][0] if self.saved else -1

    def snapshot(self, step: int) -> None:
        """Keep the state before the update of ``step`` (0-based)."""
        if step > self.rejected_at:  # a fresh update survived: the rejection run is over
            self.rejections = 0
        if self.max_rejections:
            while self.saved and self.saved[-1][0] >= step:  # a redo replaces what it redoes
                self.saved.pop()
            self.saved.append((step, *self._copy([p.detach().clone() for p in self.params])))

    def _copy(self, weights: list) -> tuple:
        return (
            weights,
            copy.deepcopy(self.optimizer.state_dict()),
            copy.deepcopy(self.scheduler.state_dict()),
        )

    def state_dict(self) -> dict:
        """The snapshots and the rejection count, for a checkpoint: a run resumed from it
        rolls back exactly as the uninterrupted run would have."""
        return {
            "saved": [[step, list(w), opt, sched] for step, w, opt, sched in self.saved],
            "rejections": self.rejections,
            "rejected_at": self.rejected_at,
        }

    def load_state_dict(self, state: dict, where: str = "the checkpoint") -> None:
        """Restore :meth:`state_dict` (the newest ``max_rejections`` + 1 snapshots); a
        CheckpointError naming ``where`` if it does not fit this run's parameters."""
        from trainers.checkpoint import CheckpointError

        saved = []
        try:
            for step, weights, opt, sched in state["saved"]:
                if len(weights) != len(self.params):
                    raise ValueError(f"{len(weights)} weights for {len(self.params)} parameters")
                for p, w in zip(self.params, weights, strict=True):
                    if tuple(w.shape) != tuple(p.shape):
                        raise ValueError(f"a weight of shape {tuple(w.shape)} for {tuple(p.shape)}")
                moved = [
                    w.to(device=p.device, dtype=p.dtype)
                    for p, w in zip(self.params, weights, strict=True)
                ]
                saved.append((int(step), moved, dict(opt), dict(sched)))
            rejections, rejected_at = int(state["rejections"]), int(state["rejected_at"])
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise CheckpointError(
                f"{where}: the runaway guard's state does not fit this run "
                f"({type(err).__name__}: {err}); it is damaged"
            ) from None
        self.saved.clear()
        if self.max_rejections:
            self.saved.extend(saved[-self.saved.maxlen :])
        self.rejections, self.rejected_at = rejections, rejected_at

    def should_retry(self) -> bool:
        return bool(self.saved) and self.rejections < self.max_rejections

    def restore(self, step: int) -> float:
        """Step ``step`` (0-based) failed: put a snapshot back with half the learning rate
        and return the new rate; training goes on from step :attr:`saved_step`. A failure of
        the step the newest snapshot precedes (its own weights) drops that snapshot first."""
        assert self.saved
        if step == self.saved[-1][0] and len(self.saved) > 1:
            self.saved.pop()
        self.rejections += 1
        self.rejected_at = max(step, self.rejected_at)
        saved_step, weights, opt_state, sched_state = self.saved[-1]
        with torch.no_grad():
            for p, saved in zip(self.params, weights, strict=True):
                p.copy_(saved)
        self.optimizer.load_state_dict(opt_state)
        self.scheduler.load_state_dict(sched_state)
        rescale_lr(self.optimizer, self.scheduler, 0.5)
        self.saved[-1] = (saved_step, *self._copy(weights))  # kept, at the new rate
        return self.optimizer.param_groups[0]["lr"]


# ----------------------------------------------------------------------------- helpers
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (the global RNG, for any code that uses it)
    torch.manual_seed(seed)


def step_seed(seed: int, step: int, draw: int = 0) -> int:
    """The seed of step ``step``'s trials (and SDE noise): distinct for every (seed, step).

    ``draw`` > 0: the seed of the step's ``draw``-th redraw (a step computed again after a
    rejection, :class:`RunawayGuard`), from numpy's SeedSequence of (seed, step, draw): a
    62-bit value independent of the first draws' seeds."""
    if draw == 0:
        return (seed * 1_000_003 + step) % (2**62)
    entropy = (seed, step % (2**62), draw)
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return ((int(state[0]) << 30) ^ int(state[1])) % (2**62)


def draw_batch(task, t, generator: torch.Generator, device, dtype) -> Trial:
    """``train.conditions = "all"``: the evaluation grid; "random": ``batch_size`` trials."""
    if t.conditions == "all":
        return task.sample_batch(conditions="all", generator=generator, device=device, dtype=dtype)
    return task.sample_batch(t.batch_size, generator=generator, device=device, dtype=dtype)


def masked_mse(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (output - target)^2 over the entries where ``mask`` is True."""
    return ((output - target) ** 2)[mask].mean()


def initial_state(trial: Trial, config) -> torch.Tensor | None:
    """y0 of ``model.initial_state``: None (the model's rest) or ``condition:<key>``."""
    init = config.model.initial_state
    if init == "rest":
        return None
    key = init.split(":", 1)[1]
    if key not in trial.conditions:
        raise ConfigError(
            f"model.initial_state = {init!r} but the task's trials have no condition {key!r}; "
            f"conditions: {', '.join(trial.conditions)}"
        )
    return trial.conditions[key].to(dtype=trial.stimulus.dtype)


def rates_of(model, states: torch.Tensor) -> torch.Tensor | None:
    """The model's rates (Hz) of ``states``, if it has them (``model.rates``)."""
    rates = getattr(model, "rates", None)
    return rates(states) if rates is not None else None


def forward(model, trial: Trial, config, solver, noise_seed: int):
    """Rollout + readout of a batch: (output [T, B, O], states [T, B, S], stats)."""
    result = rollout(
        model,
        trial.stimulus,
        trial.t_ms,
        solver,
        y0=initial_state(trial, config),
        seed=noise_seed if solver.sde else None,
    )
    return model.readout(result.states), result.states, result.stats


def rate_penalty(model, states: torch.Tensor, t) -> torch.Tensor | float:
    """Mean squared excess of the rates over ``train.rate_limit_hz`` times
    ``train.rate_penalty``; raises DivergenceError above ``train.runaway_hz``. 0 for models
    without rates or with both off."""
    if not (t.rate_limit_hz or t.runaway_hz):
        return 0.0
    rates = rates_of(model, states)
    if rates is None:
        return 0.0
    peak = float(rates.detach().max())
    if t.runaway_hz and peak > t.runaway_hz:
        raise DivergenceError(f"rates reached {peak:.4g} Hz (train.runaway_hz = {t.runaway_hz})")
    if not t.rate_limit_hz:
        return 0.0
    return t.rate_penalty * (rates - t.rate_limit_hz).clamp(min=0.0).pow(2).mean()


def clip_gradients(model, params, grad_clip: float, loss: float) -> str | None:
    """Clip the gradient norm to ``grad_clip`` (0 = off); a message if a gradient is not finite.

    The norm is torch's (in the gradients' dtype). Where that overflows although every
    gradient is finite (float32 gradients above ~1e19: an exploding gradient through a long
    rollout), it is taken in float64 instead and the gradients are scaled down to
    ``grad_clip`` as usual: clipping is the remedy for exploding gradients, so only
    non-finite gradients (NaN, inf) fail the step."""
    max_norm = grad_clip if grad_clip > 0 else math.inf
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    if not torch.isfinite(norm):
        bad = [
            name
            for name, p in model.named_parameters()
            if p.grad is not None and not bool(torch.isfinite(p.grad).all())
        ]
        if bad:
            return f"gradient norm is {float(norm)} (non-finite in {', '.join(bad)}) at loss {loss:.6g}"  # fmt: skip
        norm = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g.double()) for g in grads])
        )
        if not torch.isfinite(norm):  # beyond float64 too: nothing to scale
            return f"gradient norm overflows float64 at loss {loss:.6g}"
        if grad_clip <= 0:
            return (
                f"gradient norm is {float(norm):.3g}, beyond {norm_dtype(grads)} (set "
                f"train.grad_clip > 0 to clip it) at loss {loss:.6g}"
            )
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return None


def norm_dtype(grads) -> str:
    return str(grads[0].dtype).removeprefix("torch.") if grads else "the dtype"


def eval_seed(seed: int, step: int) -> int:
    """The SDE noise seed of the evaluation at ``step`` (0 before training): distinct from
    every training step's (:func:`step_seed` of a step >= 0) and fixed for a (seed, step)."""
    return step_seed(seed, -1 - step)


def noise_draws(config, solver) -> int:
    """Noisy trials per grid condition an evaluation integrates: ``eval.noise_draws`` with
    ``solver.sde``; 1 without (a noise-free rollout is deterministic, so more would repeat
    the same trial)."""
    return config.eval.noise_draws if solver.sde else 1


def evaluate(model, task, config, trial: Trial, solver, *, step: int = 0):
    """Metrics on ``trial`` (task.evaluate + ``loss``), the output and the rates (or None).

    With ``solver.sde`` and ``eval.noise_draws = K > 1`` the grid is integrated K times in one
    batch (draw d of condition i is trial d * G + i), each copy with its own noise from
    :func:`eval_seed` (``train.seed``, ``step``). The task scores all K * G trials, so
    ``accuracy`` is the fraction of noisy trials that are correct (each scored by its own
    window mean), ``loss`` the masked MSE over all of them, and the metrics gain
    ``noise_draws`` = K. The output and rates returned are those of the first draw ([T, G, .],
    aligned with ``trial``, for plots).
    """
    draws = noise_draws(config, solver)
    grid = trial.batch_size
    batch = trial if draws == 1 else trial[torch.arange(draws * grid) % grid]
    with torch.no_grad():
        output, states, _ = forward(
            model, batch, config, solver, eval_seed(config.train.seed, step)
        )
        metrics = dict(task.evaluate(output, batch))
        metrics["loss"] = float(masked_mse(output, batch.target, batch.mask))
        if draws > 1:
            metrics["noise_draws"] = draws
        rates = rates_of(model, states[:, :grid])
        return metrics, output[:, :grid], rates


def evaluate_into(state: TrainState, eval_trial: Trial) -> None:
    """Evaluate on the grid and hand the metrics to the callbacks (a diverging evaluation
    counts as NaN metrics, not as a crash)."""
    config = state.config
    try:
        metrics, output, rates = evaluate(
            state.model, state.task, config, eval_trial, config.solver, step=state.step
        )
    except DivergenceError as err:
        print(f"evaluation at step {state.step} diverged: {err}", flush=True)
        metrics, output, rates = {"loss": math.nan, config.success.metric: math.nan}, None, None
    state.callbacks.evaluated(state, metrics, output=output, trial=eval_trial, rates=rates)


def last_good_checkpoint(state: TrainState) -> str:
    """``last.pt`` if written, else ``best.pt`` (both are written only while training was
    finite), else a note that there is none yet."""
    if state.checkpoint:
        return state.checkpoint
    best = state.run_dir / "checkpoints" / "best.pt"
    return str(best) if best.is_file() else "(none written yet)"


def step_diagnosis(model, trial: Trial, config, noise_seed: int, step: int) -> str:
    """After a runaway rollout: rerun it at half the solver step (no grad). A fixed-step scheme
    too coarse for a stiff network runs away where the dynamics does not; then the learning
    rate is not the cause. Returns a sentence for the error message (naming training
    ``step``), or "" when halving does not help or the solver has no fixed step."""
    solver = config.solver
    if solver.sde or "adaptive" in type(solver).families(solver.method, solver.sde):
        return ""
    half = solver.model_copy(
        update={
            "step_ms": solver.step_ms / 2,
            "fast": solver.fast.model_copy(update={"compile": False, "unroll": 0}),
        }
    )
    try:
        with torch.no_grad():
            _, states, _ = forward(model, trial, config, half, noise_seed)
    except DivergenceError:
        return ""
    rates = rates_of(model, states)
    peak = float((rates if rates is not None else states).abs().max())
    limit = config.train.runaway_hz or math.inf
    if not math.isfinite(peak) or peak > limit:
        return ""
    return (
        f" At step {step}, the same rollout at half the step (solver.step_ms={half.step_ms:g}) "
        f"stayed within {peak:.4g} Hz: the step is too large for these weights (a stiff "
        f"network runs away numerically), not the learning rate; try "
        f"solver.step_ms={half.step_ms:g}."
    )


def make_optimizer(t, params) -> torch.optim.Optimizer:
    """``train.optimizer``: adam | adamw | sgd (momentum 0.9)."""
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, weight_decay=t.weight_decay, momentum=0.9)


def make_scheduler(t, optimizer) -> Schedule:
    """``train.schedule`` over ``train.steps``: see :class:`Schedule`."""
    return Schedule(optimizer, t.schedule, t.steps)


class Schedule(torch.optim.lr_scheduler.LambdaLR):
    """The learning rate as a closed form of the step and the total ``steps``:

    - ``cosine``: ``lr * (1 + cos(pi * step / steps)) / 2`` (to 0 at ``steps``),
    - ``step``: ``lr * 0.1 ** (step // (steps // 3))``,
    - ``constant``: ``lr``.

    A checkpoint keeps the step and the base rates, not the total: a run resumed with a larger
    ``train.steps`` follows the schedule of the new total from the step it resumes at, as if
    it had been started with it (the cosine horizon moves, the rate does not restart).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str, steps: int) -> None:
        if kind not in ("cosine", "step", "constant"):
            raise ConfigError(
                f"train.schedule = {kind!r} is not allowed; allowed: cosine, step, constant"
            )
        self.kind = kind
        self.steps = max(int(steps), 1)
        super().__init__(optimizer, self.factor)

    def factor(self, step: int) -> float:
        """Learning rate at ``step`` relative to the base rate."""
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(step, self.steps) / self.steps))
        if self.kind == "step":
            return 0.1 ** (step // max(self.steps // 3, 1))
        return 1.0

    def state_dict(self) -> dict:
        return {
            "kind": self.kind,
            "steps": self.steps,
            "last_epoch": self.last_epoch,
            "_step_count": self._step_count,
            "base_lrs": [float(lr) for lr in self.base_lrs],
        }

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the step and base rates; the kind and total stay this schedule's own."""
        self.last_epoch = int(state_dict["last_epoch"])
        self._step_count = int(state_dict.get("_step_count", self.last_epoch + 1))
        self.base_lrs = [float(lr) for lr in state_dict["base_lrs"]]
        self.follow()

    def follow(self) -> None:
        """Set the optimizer's rates to this schedule's at the current step."""
        lrs = [base * self.factor(self.last_epoch) for base in self.base_lrs]
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        self._last_lr = lrs


def rescale_lr(optimizer, scheduler, ratio: float) -> None:
    """Scale the learning rate and its schedule by ``ratio`` (a resume with a new train.lr,
    or a rollback)."""
    if ratio == 1.0:
        return
    for group in optimizer.param_groups:
        group["lr"] *= ratio
        if "initial_lr" in group:
            group["initial_lr"] *= ratio
    scheduler.base_lrs = [lr * ratio for lr in scheduler.base_lrs]
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
