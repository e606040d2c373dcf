"""The default trainer: backpropagation through the solver, read top to bottom.

    config -> task (gym.make) -> model -> for each step: batch -> rollout -> readout
           -> masked MSE -> backward -> clip -> optimizer and schedule step -> project_()
           -> every eval_every steps: metrics on the task's evaluation grid -> callbacks

``train.task_kwargs`` lets the training trials come from a variant of the task (shorter
trials, a wider condition distribution) while evaluation stays on the task of ``task_kwargs``.

Every random number comes from ``config.train.seed``: the model init, and each step's
trials, drawn from a generator seeded by (seed, step) so that a resumed run sees exactly the
batches an uninterrupted one would. A NaN/inf loss or a diverging rollout stops training
with a message naming the step and the last good checkpoint (which is left as it was).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import colenv
from colenv import DivergenceError, Trial, rollout
from colenv.models import ColumnNetwork, HopfField, NetworkSpec, load_params
from colenv.solve import ODE_ADAPTIVE
from trainers.callbacks import Callback, TrainState, load_checkpoint, resolve_checkpoint
from trainers.config import ConfigError, TrainConfig, flat_params
from trainers.registry import Result

__all__ = [
    "SupervisedTrainer",
    "build_model",
    "build_task",
    "evaluate",
    "masked_mse",
    "resolve_device",
    "run_dir_of",
]


# ----------------------------------------------------------------------------- setup
def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_task(config: TrainConfig) -> colenv.TrialTask:
    """``gym.make(config.task, **config.task_kwargs)``, unwrapped to the TrialTask."""
    try:
        env = gym.make(config.task, **config.task_kwargs)
    except gym.error.Error as err:
        raise ConfigError(f"task {config.task!r}: {err}") from err
    except (TypeError, ValueError) as err:
        raise ConfigError(f"task_kwargs for {config.task!r}: {err}") from err
    return env.unwrapped


def build_model(config: TrainConfig, task, device: torch.device, dtype: torch.dtype):
    """The model of ``config.model``, checked against the task's inputs and outputs."""
    mc = config.model
    if mc.kind == "hopf_mlp":
        generator = torch.Generator().manual_seed(config.train.seed)
        return HopfField(
            mc.mlp.hidden,
            mc.mlp.layers,
            n_inputs=task.n_inputs,
            generator=generator,
            device=device,
            dtype=dtype,
        )
    spec = NetworkSpec.from_dict(mc.network)
    if spec.n_inputs != task.n_inputs:
        raise ConfigError(
            f"model.network.n_inputs = {spec.n_inputs} but {config.task} has {task.n_inputs} "
            "inputs; set model.network.n_inputs to match"
        )
    model = ColumnNetwork(load_params(overrides=flat_params(mc.params)), spec)
    if model.n_outputs != task.n_outputs:
        raise ConfigError(
            f"the network reads out {model.n_outputs} column(s) (last area "
            f"{spec.areas[-1].name!r} has {spec.areas[-1].n_columns}) but {config.task} has "
            f"{task.n_outputs} output(s); make the last area's n_columns match"
        )
    return model.to(device=device, dtype=dtype)


def run_dir_of(config: TrainConfig) -> Path:
    """``<logging.run_dir>/<run_name>``."""
    return Path(config.logging.run_dir) / config.run_name


def masked_mse(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (output - target)^2 over the entries where ``mask`` is True."""
    return ((output - target) ** 2)[mask].mean()


def _last_good_checkpoint(state: TrainState) -> str:
    """``last.pt`` if written, else ``best.pt`` (both are written only while training was
    finite), else a note that there is none yet."""
    if state.checkpoint:
        return state.checkpoint
    best = state.run_dir / "checkpoints" / "best.pt"
    return str(best) if best.is_file() else "(none written yet)"


def _step_seed(seed: int, step: int) -> int:
    """The seed of step ``step``'s trials: distinct for every (seed, step)."""
    return (seed * 1_000_003 + step) % (2**62)


def _initial_state(model, trial: Trial, config: TrainConfig) -> torch.Tensor | None:
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


def forward(model, trial: Trial, config: TrainConfig, solver, noise_seed: int):
    """Rollout + readout of a batch: (output [T, B, O], states [T, B, S], stats)."""
    result = rollout(
        model,
        trial.stimulus,
        trial.t_ms,
        solver,
        y0=_initial_state(model, trial, config),
        seed=noise_seed if solver.sde else None,
    )
    return model.readout(result.states), result.states, result.stats


def evaluate(model, task, config: TrainConfig, trial: Trial, solver) -> tuple[dict, dict]:
    """Metrics on ``trial`` (task.evaluate + ``loss``) and tensors for plots (CPU)."""
    with torch.no_grad():
        output, states, _ = forward(model, trial, config, solver, _step_seed(config.train.seed, -1))
        metrics = dict(task.evaluate(output, trial))
        metrics["loss"] = float(masked_mse(output, trial.target, trial.mask))
        rates = model.rates(states) if isinstance(model, ColumnNetwork) else states
    tensors = {"output": output.cpu(), "rates": rates.cpu(), "trial": trial.to("cpu")}
    return metrics, tensors


def step_diagnosis(
    model, trial: Trial, config: TrainConfig, solver, noise_seed: int, step: int
) -> str:
    """After a runaway rollout: rerun it at half the solver step (eager, no grad). A fixed-step
    scheme that is too coarse for a stiff network runs away where the dynamics does not (e.g.
    Decision's MT columns at 0.25 ms, README "Results"); then the learning rate is not the
    cause. Returns a sentence for the error message (naming training ``step``, where the
    check ran), or "" when halving does not help or the solver has no fixed step (adaptive or
    SDE)."""
    if solver.sde or solver.method in ODE_ADAPTIVE:
        return ""
    half = dataclasses.replace(solver, step_ms=solver.step_ms / 2, compile=False, unroll=0)
    try:
        with torch.no_grad():
            _, states, _ = forward(model, trial, config, half, noise_seed)
    except DivergenceError:
        return ""
    rates = model.rates(states) if isinstance(model, ColumnNetwork) else states
    peak = float(rates.abs().max())
    limit = config.train.runaway_hz or math.inf
    if not math.isfinite(peak) or peak > limit:
        return ""
    return (
        f" At step {step}, the same rollout at half the step (solver.step_ms={half.step_ms:g}) "
        f"stayed within {peak:.4g} Hz: the step is too large for these weights (a stiff "
        f"network runs away numerically), not the learning rate; try "
        f"solver.step_ms={half.step_ms:g}."
    )


def _optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    t = config.train
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, weight_decay=t.weight_decay, momentum=0.9)


def _scheduler(config: TrainConfig, optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    t = config.train
    if t.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(t.steps, 1))
    if t.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(t.steps // 3, 1), gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def _rescale_lr(optimizer, scheduler, ratio: float) -> None:
    """A resume with a new train.lr: scale the restored schedule by new / saved lr."""
    if ratio == 1.0:
        return
    for group in optimizer.param_groups:
        group["lr"] *= ratio
        if "initial_lr" in group:
            group["initial_lr"] *= ratio
    scheduler.base_lrs = [lr * ratio for lr in scheduler.base_lrs]
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (the global RNG, for any code that uses it)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- the trainer
class SupervisedTrainer:
    """Backprop through the rollout on the masked MSE to the task's targets."""

    def fit(self, model, task, config: TrainConfig, callbacks: list[Callback]) -> Result:
        t = config.train
        start = time.perf_counter()
        seed_everything(t.seed)
        device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        solver = config.solver_config()
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError(
                "nothing trains: every connection has trainable = false (set e.g. "
                "model.network.input.trainable=true)"
            )
        # train.task_kwargs: the training trials may come from a variant of the task (e.g.
        # shorter trials); evaluation is always on the task of task_kwargs
        train_task = task
        if t.task_kwargs:
            merged = {**config.task_kwargs, **t.task_kwargs}
            try:
                train_task = build_task(dataclasses.replace(config, task_kwargs=merged))
            except ConfigError as err:
                raise ConfigError(f"train.task_kwargs: {err}") from err
        optimizer = _optimizer(config, params)
        scheduler = _scheduler(config, optimizer)
        state = TrainState(
            config=config,
            task=task,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            run_dir=run_dir_of(config),
            callbacks=callbacks,
            trial_generator=torch.Generator().manual_seed(t.seed),
        )
        state.run_dir.mkdir(parents=True, exist_ok=True)
        eval_trial = task.sample_batch(conditions="all", seed=t.seed, device=device, dtype=dtype)
        if config.resume:
            path = resolve_checkpoint(config.resume)
            saved = load_checkpoint(path, state)
            state.checkpoint = str(path)
            _rescale_lr(optimizer, scheduler, t.lr / saved["config"]["train"]["lr"])
        threshold = (
            config.success.threshold
            if config.success.threshold is not None
            else float(task.success_threshold)
        )
        state.threshold = threshold

        for cb in callbacks:
            cb.on_fit_start(state)

        snapshot, rejections, rejected_at = None, 0, -1  # for train.max_rejections
        diagnosis: str | None = None  # step_diagnosis of the first runaway forward, once
        while state.step < t.steps:
            # --- the batch of this step: seeded by (seed, step), so resumes are exact
            state.trial_generator.manual_seed(_step_seed(t.seed, state.step))
            step_start = time.perf_counter()
            if t.conditions == "all":
                trial = train_task.sample_batch(
                    conditions="all", generator=state.trial_generator, device=device, dtype=dtype
                )
            else:
                trial = train_task.sample_batch(
                    t.batch_size, generator=state.trial_generator, device=device, dtype=dtype
                )

            # --- forward, loss, backward
            in_forward = True
            try:
                output, states, stats = forward(
                    model, trial, config, solver, _step_seed(t.seed, state.step)
                )
                loss = masked_mse(output, trial.target, trial.mask)
                if isinstance(model, ColumnNetwork) and (t.rate_limit_hz or t.runaway_hz):
                    rates = model.rates(states)
                    if t.runaway_hz and float(rates.detach().max()) > t.runaway_hz:
                        raise DivergenceError(
                            f"rates reached {float(rates.detach().max()):.4g} Hz "
                            f"(train.runaway_hz = {t.runaway_hz})"
                        )
                    if t.rate_limit_hz:
                        excess = (rates - t.rate_limit_hz).clamp(min=0.0)
                        loss = loss + t.rate_penalty * excess.pow(2).mean()
                if not torch.isfinite(loss):
                    raise DivergenceError(f"loss is {float(loss)}")
                in_forward = False
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(
                    params, t.grad_clip if t.grad_clip > 0 else math.inf
                )
                if not torch.isfinite(norm):
                    bad = [
                        name
                        for name, p in model.named_parameters()
                        if p.grad is not None and not bool(torch.isfinite(p.grad).all())
                    ]
                    where = f"non-finite in {', '.join(bad)}" if bad else "overflows the dtype"
                    raise DivergenceError(
                        f"gradient norm is {float(norm)} ({where}) at loss {loss.item():.6g}"
                    )
            except DivergenceError as err:
                if in_forward and diagnosis is None:
                    diagnosis = step_diagnosis(
                        model, trial, config, solver, _step_seed(t.seed, state.step), state.step + 1
                    )
                hint = diagnosis if in_forward and diagnosis else ""
                if snapshot is not None and rejections < t.max_rejections:
                    # the last update tipped the network over: undo it, retry at half the lr
                    rejections += 1
                    rejected_at = state.step
                    with torch.no_grad():
                        for p, saved_p in zip(params, snapshot[0], strict=True):
                            p.copy_(saved_p)
                    optimizer.load_state_dict(snapshot[1])
                    scheduler.load_state_dict(snapshot[2])
                    _rescale_lr(optimizer, scheduler, 0.5)
                    state.step -= 1
                    snapshot = None
                    print(
                        f"step {rejected_at + 1} rejected ({err}); learning rate halved to "
                        f"{optimizer.param_groups[0]['lr']:.3g}" + (f".{hint}" if hint else ""),
                        flush=True,
                    )
                    continue
                state.diverged = True
                state.stop_reason = (
                    f"training diverged at step {state.step + 1}: {err}. The last good "
                    f"checkpoint is {_last_good_checkpoint(state)}; resume from it "
                    f"with a smaller train.lr or solver.step_ms.{hint}"
                )
                break
            if t.max_rejections:
                snapshot = (
                    [p.detach().clone() for p in params],
                    copy.deepcopy(optimizer.state_dict()),
                    copy.deepcopy(scheduler.state_dict()),
                )
            if state.step > rejected_at:  # a fresh update survived: the rejection run is over
                rejections = 0
            optimizer.step()
            scheduler.step()
            model.project_()

            # --- bookkeeping for the callbacks
            state.step += 1
            state.loss = loss.detach().item()
            state.lr = optimizer.param_groups[0]["lr"]
            state.nfe = stats.nfe
            state.trials_per_s = trial.batch_size / (time.perf_counter() - step_start)

            if state.step % t.eval_every == 0 or state.step == t.steps:
                self._evaluate(state, eval_trial, solver)
            keep_going = [cb.on_step_end(state) for cb in callbacks]
            if any(k is False for k in keep_going):
                state.stop_reason = (
                    state.stop_reason or f"stopped by a callback at step {state.step}"
                )
                break
        else:
            state.stop_reason = f"budget of {t.steps} steps spent"

        if not state.diverged and state.eval_step != state.step:
            self._evaluate(state, eval_trial, solver)  # final metrics of the final weights
        result = Result(
            steps=state.step,
            wall_s=time.perf_counter() - start,
            solved=state.solved,
            metrics=dict(state.metrics),
            history=list(state.history),
            checkpoint=state.checkpoint,
            run_dir=str(state.run_dir),
            diverged=state.diverged,
            message=state.stop_reason,
        )
        for cb in callbacks:
            cb.on_fit_end(state, result)
        result.checkpoint = state.checkpoint
        return result

    @staticmethod
    def _evaluate(state: TrainState, eval_trial: Trial, solver) -> None:
        config = state.config
        try:
            metrics, tensors = evaluate(state.model, state.task, config, eval_trial, solver)
        except DivergenceError as err:
            metrics, tensors = {"loss": math.nan, config.success.metric: math.nan}, {}
            print(f"evaluation at step {state.step} diverged: {err}")
        if config.success.metric not in metrics:
            raise ConfigError(
                f"success.metric = {config.success.metric!r} is not a metric of "
                f"{config.task}; its metrics: {', '.join(metrics)}"
            )
        value = metrics[config.success.metric]
        if config.higher_is_better:
            state.solved = bool(value >= state.threshold)
        else:
            state.solved = bool(value <= state.threshold)
        state.metrics = metrics
        state.eval_step = state.step
        state.eval_tensors = tensors
        state.history.append({"step": state.step, **metrics})
        for cb in state.callbacks:
            cb.on_eval_end(state, metrics)
