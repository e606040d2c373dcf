"""Bifurcation: follow the Hopf normal form driven across its bifurcation.

## Description

The supercritical Hopf normal form with a time-varying bifurcation parameter
mu(t) (time in seconds; see ``colenv/reference/hopf.py``)::

    dx/dt = (mu(t) - x^2 - y^2) x - omega y
    dy/dt = (mu(t) - x^2 - y^2) y + omega x
    mu(t) = a sin(b t + c) + d

For mu < 0 the origin is a stable focus (trajectories spiral in); for mu > 0 it
is unstable and trajectories approach the limit cycle of radius sqrt(mu).
Driving mu(t) back and forth across 0 switches the oscillation on and off.
A model (in colenv, a neural-ODE vector field, not columns) receives mu(t) as
input, starts from the trial's start point ``conditions["x0"]`` and must
reproduce the trajectory (x(t), y(t)). Defaults follow the predecessor project:
a = 1, b = 0.25 rad/s, random phase c ~ U[0, 2 pi), d = 0, omega = 1 rad/s,
start points uniform in [-2, 2]^2, 25 s.

Targets are the normal form's polar solution in float64 (``solve_sine_mu`` in
colenv/reference/hopf.py: exact phase theta0 + omega t, radius from the quadrature
formula with M(t) in closed form), using the continuous mu(t) (the stimulus is mu
sampled at each step); they agree with fine-step RK4 integration of (x, y) to ~1e-10.

## Timing (ms)

| period  | default | kwarg      | input  |
|---------|---------|------------|--------|
| `trial` | 25000   | `trial_ms` | mu(t)  |

``dt_ms = 50`` by default: one rotation (2 pi / omega = 6.28 s) spans ~126 samples
and mu changes by at most a b dt = 0.0125 per step, so the sampled trajectory
and stimulus are smooth, while a trial stays short (500 steps) for training.
How finely a model integrates between samples is the solver's business.

## Inputs (observation), shape [T, B, 1]

| index | meaning         | values                 |
|-------|-----------------|------------------------|
| 0     | mu(t_k)         | d - a .. d + a         |

## Targets, shape [T, B, 2]

| index | meaning | value                                   |
|-------|---------|-----------------------------------------|
| 0     | x(t_k)  | normal-form trajectory from x0          |
| 1     | y(t_k)  |                                         |

The mask is True everywhere (sample 0 is x0 itself).

## Conditions

``x0`` [B, 2] start point, ``mu_amplitude`` [B] (a), ``mu_phase`` [B] (c, rad),
``mu_offset`` [B] (d); b is the kwarg ``mu_frequency_rad_per_s``.
``conditions="all"``: constant mu (a = 0) in (-1, -0.5, 0, 0.25, 0.5, 1) times the
start points (0.1, 0), (1, 1), (-2, 2): 18 trials that spiral in for mu <= 0
and settle on radius sqrt(mu) for mu > 0.

## Success

``evaluate`` returns ``rmse`` over all masked entries, ``radius_rmse`` (phase
blind), per-trial RMSE statistics and ``accuracy``: the fraction of trials whose
RMSE is <= 0.2 (phase errors grow over 25 rotations-worth of radians, so the
threshold allows a few percent of error in omega). Solved at ``accuracy >= 0.9``.
On constant-mu trials ``evaluate`` also reports the attractor the output settles on:
``limit_cycle_max_rel_error`` (final radius, averaged over the last rotation, against
sqrt(mu) for mu > 0) and ``spiral_in_max_radius`` (final radius for mu < 0).
``criterion_met`` is 1.0 when the accuracy criterion holds and, where present, the limit
cycles are within 10 % of sqrt(mu) and the mu < 0 trials end within 0.1 of the origin.

## Gymnasium face

Observation: mu(t_k), ``Box(min(d - a, -1), max(d + a, 1))``. Action: (x, y)
divided by ``action_scale`` (3 by default, the largest radius rounded up),
``Box(-1, 1)``. Reward: ``-sum((action_scale * action - target)^2)``.

## Arguments

``gym.make("colenv/Bifurcation-v0", dt_ms=50.0, trial_ms=25000.0,
mu_amplitude=1.0, mu_frequency_rad_per_s=0.25, mu_offset=0.0,
omega_rad_per_s=1.0, x0_range=2.0)``

## Version History

* v0: initial version.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from colenv.core import Trial, TrialTask, check_output
from colenv.reference.hopf import sine_mu, solve_sine_mu

DEFAULTS = {
    "dt_ms": 50.0,
    "trial_ms": 25000.0,
    "mu_amplitude": 1.0,
    "mu_frequency_rad_per_s": 0.25,
    "mu_offset": 0.0,
    "omega_rad_per_s": 1.0,
    "x0_range": 2.0,
}
GRID_MU = (-1.0, -0.5, 0.0, 0.25, 0.5, 1.0)
GRID_X0 = ((0.1, 0.0), (1.0, 1.0), (-2.0, 2.0))
RMSE_TOLERANCE = 0.2
"""A trial counts as reproduced when its RMSE over the mask is at most this."""


LIMIT_CYCLE_TOLERANCE = 0.10
"""Largest relative error of the final radius against sqrt(mu) on constant mu > 0 trials."""
SPIRAL_IN_TOLERANCE = 0.10
"""Largest final radius on constant mu < 0 trials (the true one is ~0 after 25 s)."""


class Bifurcation(TrialTask):
    """One input mu(t), two outputs (x, y): the driven Hopf normal form."""

    metadata = {
        "render_modes": [],
        "paper": "Hopf normal form (e.g. Strogatz, Nonlinear Dynamics and Chaos, 1994, sec. 8.2)",
        "tags": ["dynamical-system", "bifurcation", "oscillation", "neural-ode", "regression"],
    }
    n_inputs = 1
    n_outputs = 2
    success_threshold = 0.9
    action_signed = True

    def __init__(
        self,
        *,
        dt_ms: float = DEFAULTS["dt_ms"],
        trial_ms: float = DEFAULTS["trial_ms"],
        mu_amplitude: float = DEFAULTS["mu_amplitude"],
        mu_frequency_rad_per_s: float = DEFAULTS["mu_frequency_rad_per_s"],
        mu_offset: float = DEFAULTS["mu_offset"],
        omega_rad_per_s: float = DEFAULTS["omega_rad_per_s"],
        x0_range: float = DEFAULTS["x0_range"],
        render_mode: str | None = None,
        **unknown,
    ) -> None:
        self._reject_unknown(type(self), unknown)
        for name, value in (
            ("mu_amplitude", mu_amplitude),
            ("mu_frequency_rad_per_s", mu_frequency_rad_per_s),
            ("mu_offset", mu_offset),
            ("omega_rad_per_s", omega_rad_per_s),
            ("x0_range", x0_range),
        ):
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if mu_amplitude < 0 or x0_range <= 0:
            raise ValueError(
                f"mu_amplitude must be >= 0 and x0_range > 0, got {mu_amplitude}, {x0_range}"
            )
        self.mu_amplitude = float(mu_amplitude)
        self.mu_frequency_rad_per_s = float(mu_frequency_rad_per_s)
        self.mu_offset = float(mu_offset)
        self.omega_rad_per_s = float(omega_rad_per_s)
        self.x0_range = float(x0_range)
        mu_low = min(self.mu_offset - self.mu_amplitude, min(GRID_MU))
        mu_high = max(self.mu_offset + self.mu_amplitude, max(GRID_MU))
        self.observation_bounds = (mu_low, mu_high)
        # r never exceeds max(r0, sqrt(max mu)), since dr/dt < 0 above sqrt(mu).
        largest_radius = max(
            math.sqrt(2.0) * self.x0_range,
            math.sqrt(max(mu_high, 0.0)),
            max(math.hypot(*x0) for x0 in GRID_X0),
        )
        self.action_scale = float(math.ceil(largest_radius))
        super().__init__(dt_ms=dt_ms, periods_ms={"trial": trial_ms}, render_mode=render_mode)
        self._check_reference_is_finite()

    def _check_reference_is_finite(self) -> None:
        """The reference solution computes exp(2 M(t)), M(t) = integral of mu over [0, t]
        (``colenv.reference.hopf.solve_sine_mu``), which overflows float64 when mu(t) stays
        large for long (e.g. mu_amplitude = 100 over 25 s). Checked here in closed form over
        every start phase and the grid's constant-mu trials: an error naming the arguments,
        not NaN targets."""
        a, b, d = self.mu_amplitude, self.mu_frequency_rad_per_s, self.mu_offset
        t = self.t_ms / 1000.0
        phase = torch.linspace(0.0, 2.0 * math.pi, 65, dtype=torch.float64)[:, None]
        if b == 0.0:
            big_m = (a * torch.sin(phase) + d) * t
        else:
            big_m = -a / b * (torch.cos(b * t + phase) - torch.cos(phase)) + d * t
        exponent = 2.0 * max(float(big_m.max()), max(GRID_MU) * float(t[-1]))
        # exp(2M) and its running integral (a sum of up to 10 T terms) must stay finite
        if exponent + math.log(10.0 * self.n_steps) > 700.0:
            raise ValueError(
                f"mu_amplitude={a:g}, mu_offset={d:g} (mu_frequency_rad_per_s={b:g}, "
                f"trial_ms={self.n_steps * self.dt_ms:g}) give non-finite targets: the "
                "normal form's reference solution overflows float64 when mu(t) stays large "
                f"for long (its radius grows like exp of the integral of mu, here exp("
                f"{exponent / 2:.4g})); use a smaller mu_amplitude or mu_offset, or a shorter "
                "trial_ms"
            )

    def _draw_conditions(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        f64 = torch.float64
        x0 = (2.0 * torch.rand(batch_size, 2, generator=generator, dtype=f64) - 1.0) * self.x0_range
        phase = 2.0 * math.pi * torch.rand(batch_size, generator=generator, dtype=f64)
        return {
            "x0": x0,
            "mu_amplitude": torch.full((batch_size,), self.mu_amplitude, dtype=f64),
            "mu_phase": phase,
            "mu_offset": torch.full((batch_size,), self.mu_offset, dtype=f64),
        }

    def condition_grid(self) -> dict[str, Tensor]:
        mu = torch.tensor(GRID_MU, dtype=torch.float64).repeat_interleave(len(GRID_X0))
        x0 = torch.tensor(GRID_X0, dtype=torch.float64).repeat(len(GRID_MU), 1)
        return {
            "x0": x0,
            "mu_amplitude": torch.zeros_like(mu),
            "mu_phase": torch.zeros_like(mu),
            "mu_offset": mu,
        }

    def _check_conditions(self, conditions: dict[str, Tensor]) -> None:
        for key, value in conditions.items():
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"conditions[{key!r}] must be finite, got {value.tolist()}")

    def _mu(self, t_s: Tensor, conditions: dict[str, Tensor]) -> Tensor:
        return sine_mu(
            t_s,
            conditions["mu_amplitude"].to(torch.float64),
            self.mu_frequency_rad_per_s,
            conditions["mu_phase"].to(torch.float64),
            conditions["mu_offset"].to(torch.float64),
        )

    def _build(self, conditions, generator):
        t_s = self.t_ms / 1000.0  # the normal form's time unit is the second
        batch = conditions["x0"].shape[0]
        stimulus = self._mu(t_s, conditions)[:, :, None]  # [T, B, 1]
        # the polar solution (exact phase, quadrature radius): a few ops over the whole grid;
        # tests/test_tasks_bifurcation.py checks it against RK4 integration of (x, y)
        target = solve_sine_mu(
            conditions["x0"],
            t_s,
            conditions["mu_amplitude"],
            self.mu_frequency_rad_per_s,
            conditions["mu_phase"],
            conditions["mu_offset"],
            omega=self.omega_rad_per_s,
        )
        mask = torch.ones(self.n_steps, batch, 2, dtype=torch.bool)
        return stimulus, target, mask, {}

    def evaluate(self, output: Tensor, trial: Trial) -> dict[str, float]:
        """RMSE, phase-blind radius RMSE and the fraction of trials with RMSE <= 0.2."""
        check_output(output, trial)
        output = output.detach()  # metrics, not part of any graph
        target = trial.target.to(device=output.device, dtype=output.dtype)
        mask = trial.mask.to(output.device)
        error2 = torch.where(mask, (output - target) ** 2, torch.zeros_like(output))
        per_trial = torch.sqrt(error2.sum(dim=(0, 2)) / mask.sum(dim=(0, 2)).clamp(min=1))
        radius_error = output.norm(dim=-1) - target.norm(dim=-1)
        radius_mask = mask.all(dim=-1)
        metrics = {
            "rmse": float(torch.sqrt(error2.sum() / mask.sum().clamp(min=1))),
            "radius_rmse": float(torch.sqrt((radius_error[radius_mask] ** 2).mean())),
            "max_trial_rmse": float(per_trial.max()),
            "accuracy": float((per_trial <= RMSE_TOLERANCE).double().mean()),
            "n_trials": trial.batch_size,
        }
        metrics.update(self._asymptotics(output, trial))
        # the full criterion: trajectories tracked and, where the grid has constant-mu
        # trials, the attractors right (limit cycle within 10 % of sqrt(mu), focus at 0)
        metrics["criterion_met"] = float(
            metrics["accuracy"] >= self.success_threshold
            and metrics.get("limit_cycle_max_rel_error", 0.0) <= LIMIT_CYCLE_TOLERANCE
            and metrics.get("spiral_in_max_radius", 0.0) <= SPIRAL_IN_TOLERANCE
        )
        return metrics

    def _asymptotics(self, output: Tensor, trial: Trial) -> dict[str, float]:
        """Constant-mu trials: the output's final radius (mean over the last rotation,
        2 pi / omega s) against the normal form's attractor: sqrt(mu) for mu > 0 (the limit
        cycle), 0 for mu < 0 (a stable focus). Empty without constant-mu trials."""
        constant = trial.conditions["mu_amplitude"].to(output.device) == 0
        mu = trial.conditions["mu_offset"].to(output.device, output.dtype)
        t_s = trial.t_ms.to(output.device, output.dtype) / 1000.0
        last_turn = t_s >= t_s[-1] - 2 * math.pi / self.omega_rad_per_s
        if not bool(constant.any()) or int(last_turn.sum()) < 2:
            return {}
        final_radius = output[last_turn].norm(dim=-1).mean(dim=0)  # [B]
        out: dict[str, float] = {}
        grow, decay = constant & (mu > 0), constant & (mu < 0)
        if bool(grow.any()):
            rel = (final_radius[grow] - mu[grow].sqrt()).abs() / mu[grow].sqrt()
            out["limit_cycle_max_rel_error"] = float(rel.max())
        if bool(decay.any()):
            out["spiral_in_max_radius"] = float(final_radius[decay].max())
        return out

    def plot(
        self,
        outputs: dict[str, Tensor],
        trial: Trial,
        path: Path,
        title: str,
        *,
        unit_names: Sequence[str] | None = None,
    ) -> list[Path]:
        """``phase_portraits.png``: the (x, y) trajectories, learned (solid) against the normal
        form (dashed) from each start point (dot), one panel per mu(0); on constant-mu trials
        the limit cycle of radius sqrt(mu) (grey circle) for mu > 0."""
        from colenv.tasks.plotting import figure, save

        output = outputs["output"]
        mu = trial.stimulus[0, :, 0]
        levels = sorted({round(float(m), 6) for m in mu})
        constant = trial.conditions["mu_amplitude"] == 0
        fig = figure(2.7 * len(levels), 3.0)
        axes = fig.subplots(1, len(levels), squeeze=False)[0]
        for ax, level in zip(axes, levels, strict=True):
            chosen = (mu - level).abs() < 1e-6
            for b in chosen.nonzero().flatten().tolist():
                (line,) = ax.plot(output[:, b, 0], output[:, b, 1], lw=1)
                color = line.get_color()
                ax.plot(trial.target[:, b, 0], trial.target[:, b, 1], "--", color=color, lw=0.8)
                ax.plot(*trial.target[0, b].tolist(), "o", color=color, ms=4)
            if level > 0 and bool(constant[chosen].all()):
                radius = math.sqrt(level)
                circle = torch.linspace(0, 2 * math.pi, 200)
                ax.plot(radius * circle.cos(), radius * circle.sin(), color="0.6", lw=2, zorder=0)
            ax.set_title(f"mu(0) = {level:g}", fontsize=8)
            ax.set_aspect("equal")
            ax.set_xlabel("x", fontsize=7)
            ax.tick_params(labelsize=6)
        axes[0].set_ylabel("y", fontsize=7)
        fig.suptitle(f"{title}: learned (solid) vs Hopf normal form (dashed)", fontsize=9)
        return [save(fig, Path(path) / "phase_portraits.png")]
