"""Trials and the task base class: the two faces of a task.

A task knows stimuli and targets, never networks. It shows them two ways, and
both read the same trial:

1. Supervised: ``task.sample_batch(batch_size, seed=...) -> Trial``, whole trials
   as tensors ``stimulus [T, B, I]``, ``target [T, B, O]``, ``mask [T, B, O]``.
2. Gymnasium: one episode = one trial. ``reset(seed=s)`` draws the trial that
   ``sample_batch(1, seed=s)`` returns; each ``step(action)`` scores the action
   against the target at the current time step and shows the next stimulus.

Time runs on a uniform grid ``t_ms[k] = k * dt_ms``, ``k = 0 .. T-1``; the
stimulus at ``t_ms[k]`` is held constant on ``[t_k, t_{k+1})`` and the target at
``t_ms[k]`` is what the model output should be at that instant. A trial is a
sequence of named periods (e.g. ``pre_stimulus``, ``stimulus``), each a whole
number of steps.

All random numbers are drawn on the CPU from one ``torch.Generator`` and built
into tensors in float64 there; only the finished trial moves to the requested
device and dtype. So a seed gives the same batch on every device.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

__all__ = ["Trial", "TrialTask"]


@dataclass
class Trial:
    """A batch of trials, aligned in time.

    Shapes: T time steps, B trials, I inputs, O outputs.
    """

    stimulus: Tensor
    """[T, B, I] input at ``t_ms[k]``, constant on ``[t_k, t_{k+1})``."""
    target: Tensor
    """[T, B, O] desired output at ``t_ms[k]``."""
    mask: Tensor
    """[T, B, O] bool, True where the loss counts."""
    t_ms: Tensor
    """[T] time of each step (ms); ``t_ms[0] = 0``, uniform step ``dt_ms``."""
    dt_ms: float
    """Step of the time grid (ms)."""
    conditions: dict[str, Tensor] = field(default_factory=dict)
    """What defines each trial (e.g. ``bits``, ``coherence_pct``); each ``[B, ...]``."""

    def __post_init__(self) -> None:
        if self.stimulus.ndim != 3 or self.target.ndim != 3:
            raise ValueError(
                "stimulus and target must be [T, B, I] and [T, B, O], got "
                f"{tuple(self.stimulus.shape)} and {tuple(self.target.shape)}"
            )
        if self.mask.shape != self.target.shape or self.mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be a bool tensor shaped like target {tuple(self.target.shape)}, "
                f"got {self.mask.dtype} {tuple(self.mask.shape)}"
            )
        n_steps, batch = self.stimulus.shape[:2]
        if self.target.shape[:2] != (n_steps, batch) or self.t_ms.shape != (n_steps,):
            raise ValueError(
                f"time and batch axes disagree: stimulus {tuple(self.stimulus.shape)}, "
                f"target {tuple(self.target.shape)}, t_ms {tuple(self.t_ms.shape)}"
            )
        for key, value in self.conditions.items():
            if value.ndim < 1 or value.shape[0] != batch:
                raise ValueError(
                    f"conditions[{key!r}] must have batch size {batch} on axis 0, "
                    f"got shape {tuple(value.shape)}"
                )

    @property
    def batch_size(self) -> int:
        """Number of trials B."""
        return self.stimulus.shape[1]

    @property
    def n_steps(self) -> int:
        """Number of time steps T."""
        return self.stimulus.shape[0]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """This trial on ``device``; floating tensors (conditions too) get ``dtype``, masks stay bool."""

        def move(x: Tensor) -> Tensor:
            if dtype is not None and x.is_floating_point():
                return x.to(device=device, dtype=dtype)
            return x.to(device=device)

        return Trial(
            stimulus=move(self.stimulus),
            target=move(self.target),
            mask=self.mask.to(device=device),
            t_ms=move(self.t_ms),
            dt_ms=self.dt_ms,
            conditions={k: move(v) for k, v in self.conditions.items()},
        )

    def __getitem__(self, idx: int | slice | Tensor | list[int]) -> Trial:
        """Select trials along B; an int keeps the batch axis (B = 1)."""
        if isinstance(idx, int):
            if not -self.batch_size <= idx < self.batch_size:
                raise IndexError(f"trial index {idx} out of range for batch size {self.batch_size}")
            idx = slice(idx % self.batch_size, idx % self.batch_size + 1)
        elif isinstance(idx, list):
            idx = torch.as_tensor(idx, dtype=torch.long)
        if isinstance(idx, Tensor):
            idx = idx.to(self.stimulus.device)
        return Trial(
            stimulus=self.stimulus[:, idx],
            target=self.target[:, idx],
            mask=self.mask[:, idx],
            t_ms=self.t_ms,
            dt_ms=self.dt_ms,
            conditions={k: v[idx] for k, v in self.conditions.items()},
        )


def steps_in(duration_ms: float, dt_ms: float, name: str) -> int:
    """Number of steps of ``dt_ms`` in ``duration_ms``; errors unless it is a whole number > 0."""
    if not _is_number(duration_ms) or not duration_ms > 0:
        raise ValueError(f"{name} must be a finite number of ms > 0, got {duration_ms!r}")
    n = duration_ms / dt_ms
    if abs(n - round(n)) > 1e-9 * max(1.0, n):
        raise ValueError(
            f"dt_ms={dt_ms} does not divide {name}={duration_ms} ms; choose dt_ms so that "
            "every period is a whole number of steps"
        )
    return round(n)


def _show_value(value: Tensor) -> str:
    """One trial's condition, short: a number or a list."""
    if value.ndim == 0:
        return f"{value.item():g}" if value.is_floating_point() else str(value.item())
    return str([round(x, 6) if isinstance(x, float) else x for x in value.tolist()])


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class TrialTask(gym.Env):
    """Base of all colenv tasks: timing, ``sample_batch`` and the Gymnasium face.

    A subclass sets the class attributes below, calls ``super().__init__`` with its
    timing, and implements four methods, each on CPU tensors:

    - ``_draw_conditions(batch_size, generator) -> dict`` random trial conditions,
    - ``condition_grid() -> dict`` the deterministic evaluation set,
    - ``_build(conditions, generator) -> (stimulus, target, mask, extra_conditions)``
      in float64 (``generator`` feeds any noise of the trial),
    - ``evaluate(output, trial) -> dict`` the success criterion,

    and may override ``plot`` to draw a model's answers as its science needs (the default
    draws each output against its target).

    Gymnasium wants actions in ``[-1, 1]`` or ``[0, 1]`` (``check_env`` warns
    otherwise), so an action is an output divided by ``action_scale``: the output
    the reward scores is ``action * action_scale`` (for rate tasks, Hz).
    """

    metadata: dict[str, Any] = {"render_modes": [], "paper": "", "tags": []}
    n_inputs: int
    n_outputs: int
    success_threshold: float
    action_scale: float
    """Output units per unit of action (e.g. 50 Hz); the action space is [0, 1] or [-1, 1]."""
    action_signed: bool = False
    """True: action space [-1, 1] (signed outputs); False: [0, 1] (rates)."""
    observation_bounds: tuple[float, float]
    """(low, high) of every stimulus value; sets the observation space."""

    def __init__(
        self, *, dt_ms: float, periods_ms: Mapping[str, float], render_mode: str | None = None
    ) -> None:
        if render_mode is not None:
            raise ValueError(
                f"render_mode={render_mode!r} is not supported; {type(self).__name__} "
                "has no render modes (allowed: None)"
            )
        self.render_mode = None
        if not _is_number(dt_ms) or not dt_ms > 0:
            raise ValueError(f"dt_ms must be a finite number > 0, got {dt_ms!r}")
        self.dt_ms = float(dt_ms)
        self.periods_ms = {name: float(ms) for name, ms in periods_ms.items()}
        self._period_steps: dict[str, slice] = {}
        start = 0
        for name, ms in periods_ms.items():
            n = steps_in(ms, self.dt_ms, f"{name}_ms")
            self._period_steps[name] = slice(start, start + n)
            start += n
        self.n_steps = start

        low, high = self.observation_bounds
        self.observation_space = gym.spaces.Box(
            low=low, high=high, shape=(self.n_inputs,), dtype=np.float32
        )
        self.action_space = gym.spaces.Box(
            low=-1.0 if self.action_signed else 0.0,
            high=1.0,
            shape=(self.n_outputs,),
            dtype=np.float32,
        )
        self._episode: dict[str, np.ndarray] | None = None
        self._k = 0

    @staticmethod
    def _reject_unknown(cls: type, unknown: Mapping[str, Any]) -> None:
        """Raise on keyword arguments the task does not know, listing the allowed ones."""
        if unknown:
            allowed = [
                p.name
                for p in inspect.signature(cls.__init__).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY
            ]
            raise TypeError(
                f"{cls.__name__} got unknown keyword argument(s) {sorted(unknown)}; "
                f"allowed: {', '.join(allowed)}"
            )

    # ------------------------------------------------------------------ timing
    def period(self, name: str) -> slice:
        """Step indices of a named period."""
        if name not in self._period_steps:
            raise KeyError(f"unknown period {name!r}; periods: {list(self._period_steps)}")
        return self._period_steps[name]

    @property
    def t_ms(self) -> Tensor:
        """[T] float64 time grid (ms)."""
        return torch.arange(self.n_steps, dtype=torch.float64) * self.dt_ms

    # --------------------------------------------------------- subclass hooks
    def _draw_conditions(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        raise NotImplementedError

    def condition_grid(self) -> dict[str, Tensor]:
        """The deterministic evaluation set used by ``conditions="all"``; each ``[G, ...]``."""
        raise NotImplementedError

    def _build(
        self, conditions: dict[str, Tensor], generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def evaluate(self, output: Tensor, trial: Trial) -> dict[str, float]:
        """The task's success criterion on model outputs ``[T, B, O]``."""
        raise NotImplementedError

    def plot(
        self,
        outputs: dict[str, Tensor],
        trial: Trial,
        path: Path,
        title: str,
        *,
        unit_names: Sequence[str] | None = None,
    ) -> list[Path]:
        """Draw a model's answers to ``trial`` as PNG files in the folder ``path``.

        Args:
            outputs: ``"output"`` [T, B, O] (CPU) and, if the model has rates, ``"rates"``
                [T, B, U] (Hz).
            trial: the trials answered (CPU), e.g. the evaluation grid.
            title: a heading for every figure (task, step).
            unit_names: names of the U rate units (a column network's "area[col].Pop").

        Returns:
            The files written. This default draws ``outputs.png`` (each output against its
            target, one panel per trial) and, with rates, ``populations.png`` of trial 0;
            tasks override it to draw what their science needs.
        """
        from colenv.tasks.plotting import condition_text, plot_outputs, plot_unit_rates

        path = Path(path)
        paths = [
            plot_outputs(
                outputs["output"],
                trial,
                path / "outputs.png",
                title,
                label=lambda b: condition_text(trial, b),
            )
        ]
        if "rates" in outputs:
            paths.append(
                plot_unit_rates(
                    outputs["rates"],
                    trial,
                    0,
                    path / "populations.png",
                    f"{title}: rates, trial 0 ({condition_text(trial, 0)})",
                    unit_names=unit_names,
                )
            )
        return paths

    # ---------------------------------------------------------- supervised face
    def sample_batch(
        self,
        batch_size: int | None = None,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        conditions: str | Mapping[str, Any] | None = None,
    ) -> Trial:
        """Draw a batch of whole trials.

        Args:
            batch_size: number of trials B >= 1. With ``conditions`` it may be None
                (one trial per condition) or a multiple of the number of conditions
                (the condition list is repeated, trial i gets condition i % G).
            seed: seeds a fresh CPU generator; the same seed gives the same batch
                on every device. Exclusive with ``generator``.
            generator: a CPU ``torch.Generator`` to draw from (advanced in place).
                Neither seed nor generator: torch's global generator.
            device, dtype: where the trial lives; floating tensors get ``dtype``.
            conditions: None (random conditions), ``"all"`` (``condition_grid()``)
                or a dict with the keys of ``condition_grid()``, each ``[B, ...]``.

        Returns:
            Trial with stimulus [T, B, n_inputs], target and mask [T, B, n_outputs].
        """
        gen = self._generator(seed, generator)
        conds = self._resolve_conditions(batch_size, conditions, gen)
        stimulus, target, mask, extra = self._build(conds, gen)
        for name, values in (("stimulus", stimulus), ("target", target)):
            self._check_finite(name, values, conds)
        trial = Trial(
            stimulus=stimulus,
            target=target,
            mask=mask,
            t_ms=self.t_ms,
            dt_ms=self.dt_ms,
            conditions={**conds, **extra},
        )
        return trial.to(device=device, dtype=dtype)

    def _check_finite(self, name: str, values: Tensor, conditions: dict[str, Tensor]) -> None:
        """ValueError naming the first non-finite entry of a built stimulus or target: the
        task's arguments (or the conditions given) produce values no model can be trained
        on."""
        bad = ~torch.isfinite(values)
        if not bool(bad.any()):
            return
        k, b, i = (int(x) for x in bad.nonzero()[0])
        shown = ", ".join(f"{key}={_show_value(value[b])}" for key, value in conditions.items())
        raise ValueError(
            f"{type(self).__name__} builds a non-finite {name} ({float(values[k, b, i])} at "
            f"t = {k * self.dt_ms:g} ms, trial {b}, {'input' if name == 'stimulus' else 'output'} "
            f"{i}; {int(bad.sum())} entries in all) for the conditions {shown}: the task's "
            "arguments are outside the range its reference solution can compute"
        )

    @staticmethod
    def _generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
        if seed is not None and generator is not None:
            raise ValueError("pass either seed= or generator=, not both")
        if generator is not None:
            if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
                raise ValueError(
                    "generator must be a CPU torch.Generator (random numbers are drawn on the "
                    f"CPU so every device gets the same data), got {generator!r}"
                )
            return generator
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
                raise ValueError(f"seed must be an int >= 0, got {seed!r}")
            return torch.Generator(device="cpu").manual_seed(int(seed))
        return torch.default_generator

    def _resolve_conditions(
        self,
        batch_size: int | None,
        conditions: str | Mapping[str, Any] | None,
        gen: torch.Generator,
    ) -> dict[str, Tensor]:
        if batch_size is not None and (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, int | np.integer)
            or batch_size < 1
        ):
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if conditions is None:
            if batch_size is None:
                raise ValueError("batch_size is required unless conditions are given")
            return self._draw_conditions(int(batch_size), gen)

        grid = self.condition_grid()
        if isinstance(conditions, str):
            if conditions != "all":
                raise ValueError(
                    f"conditions={conditions!r} is unknown; allowed: None, 'all', or a dict "
                    f"with keys {sorted(grid)}"
                )
            conds = grid
        elif isinstance(conditions, Mapping):
            if set(conditions) != set(grid):
                raise ValueError(
                    f"conditions dict has keys {sorted(conditions)}; it must have exactly "
                    f"{sorted(grid)}"
                )
            conds = {}
            for k, v in conditions.items():
                given = torch.as_tensor(v)
                if not grid[k].is_floating_point() and (
                    given.is_floating_point() or given.is_complex()
                ):
                    if not bool((torch.isfinite(given) & (given == given.round())).all()):
                        allowed = grid[k].unique()
                        values = (
                            ", ".join(str(int(x)) for x in allowed)
                            if allowed.numel() <= 16
                            else "integers"
                        )
                        raise ValueError(
                            f"conditions[{k!r}] must be whole numbers (allowed values: "
                            f"{values}), got {given.tolist()}"
                        )
                conds[k] = given.to(grid[k].dtype)
            sizes = {k: (v.shape[0] if v.ndim else None) for k, v in conds.items()}
            for k, v in conds.items():
                if v.shape[1:] != grid[k].shape[1:] or v.ndim == 0:
                    raise ValueError(
                        f"conditions[{k!r}] must have shape [B, *{list(grid[k].shape[1:])}], "
                        f"got {tuple(v.shape)}"
                    )
            if len(set(sizes.values())) != 1:
                raise ValueError(f"conditions disagree on the batch size: {sizes}")
            self._check_conditions(conds)
        else:
            raise ValueError(
                f"conditions must be None, 'all' or a dict, got {type(conditions).__name__}"
            )

        n = next(iter(conds.values())).shape[0]
        if batch_size is None or batch_size == n:
            return conds
        if batch_size % n:
            raise ValueError(
                f"batch_size={batch_size} must be a multiple of the {n} given conditions "
                "(or None for one trial each)"
            )
        index = torch.arange(batch_size) % n
        return {k: v[index] for k, v in conds.items()}

    def _check_conditions(self, conditions: dict[str, Tensor]) -> None:
        """Validate user-given conditions (values); subclasses override."""

    # ---------------------------------------------------------- gymnasium face
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode: draw one trial and show its first stimulus.

        ``reset(seed=s)`` shows the trial of ``sample_batch(1, seed=s)``; without a
        seed, the trial's seed is drawn from ``self.np_random``. ``options`` may hold
        ``{"conditions": {...}}`` (one trial's conditions, each ``[1, ...]``).
        """
        super().reset(seed=seed)
        trial_seed = seed if seed is not None else int(self.np_random.integers(2**62))
        options = dict(options or {})
        conditions = options.pop("conditions", None)
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; allowed: 'conditions'")
        if conditions is not None and not isinstance(conditions, Mapping):
            raise ValueError("options['conditions'] must be a dict of one trial's conditions")
        trial = self.sample_batch(1, seed=trial_seed, conditions=conditions)
        self._episode = {
            "stimulus": trial.stimulus[:, 0].numpy(),
            "target": trial.target[:, 0].numpy(),
            "mask": trial.mask[:, 0].numpy(),
        }
        self._conditions = {k: v[0].numpy() for k, v in trial.conditions.items()}
        self._k = 0
        info = {
            "t_ms": 0.0,
            "trial_seed": trial_seed,
            "conditions": {k: v.copy() for k, v in self._conditions.items()},
        }
        return self._episode["stimulus"][0].copy(), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Score ``action`` (output / ``action_scale``) at the current step, show the next stimulus.

        reward = -sum(mask * (action * action_scale - target)^2) at this step.
        The episode terminates after the last step of the trial; its final
        observation is zero input (the trial is over). There is no truncation:
        a trial has a fixed length.
        """
        if self._episode is None:
            raise RuntimeError("call reset() before step()")
        if self._k >= self.n_steps:
            raise RuntimeError("the trial has ended (terminated=True); call reset()")
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (self.n_outputs,):
            raise ValueError(
                f"action must have shape ({self.n_outputs},) (one value per output), "
                f"got shape {a.shape}"
            )
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action must be finite, got {a.tolist()}")
        low, high = self.action_space.low, self.action_space.high
        if np.any(a < low) or np.any(a > high):
            raise ValueError(
                f"action {a.tolist()} is outside the action space [{float(low.min()):g}, "
                f"{float(high.max()):g}] (an action is an output divided by action_scale = "
                f"{self.action_scale:g})"
            )
        k = self._k
        target = self._episode["target"][k]
        mask = self._episode["mask"][k]
        error = (a * self.action_scale - target.astype(np.float64)) ** 2
        reward = -float(np.sum(error[mask]))
        self._k = k + 1
        terminated = self._k == self.n_steps
        if terminated:
            obs = np.zeros(self.n_inputs, dtype=np.float32)
        else:
            obs = self._episode["stimulus"][self._k].copy()
        info = {"t_ms": k * self.dt_ms, "target": target.copy(), "mask": mask.copy()}
        return obs, reward, terminated, False, info


def window_means(output: Tensor, trial: Trial) -> tuple[Tensor, Tensor, Tensor]:
    """Mean over each trial's scoring window (its masked steps) of the output and the target.

    Args:
        output: [T, B, O] model output, in the units of ``trial.target``.
        trial: the trials the output answers; ``trial.mask`` marks the window of each output.

    Returns:
        ``(output_mean, target_mean, scored)``, each [B, O]: the window means (0 where an
        output has no masked step) and whether the output has a window at all.
    """
    check_output(output, trial)
    output = output.detach()  # metrics, not part of any graph
    target = trial.target.to(device=output.device, dtype=output.dtype)
    mask = trial.mask.to(output.device)
    weight = mask.to(output.dtype)
    count = weight.sum(dim=0)  # [B, O]
    scored = count > 0
    denom = count.clamp(min=1.0)
    return (output * weight).sum(dim=0) / denom, (target * weight).sum(dim=0) / denom, scored


def window_accuracy(output: Tensor, trial: Trial, tolerance: float) -> dict[str, float]:
    """Per-trial correct when the WINDOW-AVERAGED output is within ``tolerance`` of the
    window-averaged target, for every output that has a window (its masked steps).

    Averaging over the window (rather than asking for the tolerance at every sample) scores a
    noisy network that does the task as doing it: a rate that fluctuates by +-8 Hz around the
    target is correct, a constant 6 Hz offset is not (tolerance 5 Hz). A noise-free trace that
    has settled scores as before; one still drifting through the window scores by its mean.

    Args:
        output: [T, B, O] model output, in the units of ``trial.target``.
        trial: the trials the output answers.
        tolerance: largest allowed deviation of the window mean (e.g. 5 Hz).

    Returns:
        ``accuracy`` (fraction of correct trials), ``n_correct``, ``n_trials``,
        ``window_error_hz`` (root mean square over trials and outputs of the window-mean
        error) and ``rmse_hz`` (root mean squared error over all masked entries, sample by
        sample: it includes the fluctuations that the window mean averages out).
    """
    out_mean, target_mean, scored = window_means(output, trial)
    error = (out_mean - target_mean).abs()
    correct = torch.where(scored, error <= tolerance, True).all(dim=1)  # [B]
    n_correct = int(correct.sum())
    output = output.detach()
    target = trial.target.to(device=output.device, dtype=output.dtype)
    mask = trial.mask.to(output.device)
    rmse = torch.sqrt(((output - target)[mask] ** 2).mean()) if mask.any() else torch.zeros(())
    window_error = torch.sqrt((error[scored] ** 2).mean()) if scored.any() else torch.zeros(())
    return {
        "accuracy": n_correct / trial.batch_size,
        "n_correct": n_correct,
        "n_trials": trial.batch_size,
        "window_error_hz": float(window_error),
        "rmse_hz": float(rmse),
    }


def check_output(output: Tensor, trial: Trial) -> None:
    """Errors unless ``output`` is a tensor shaped like ``trial.target``."""
    if not isinstance(output, Tensor) or output.shape != trial.target.shape:
        raise ValueError(
            f"output must be a tensor of shape [T, B, O] = {tuple(trial.target.shape)}, "
            f"got {tuple(getattr(output, 'shape', ()))}"
        )
