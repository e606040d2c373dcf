"""Rollouts: integrate a model over a batch of trials with a validated solver configuration.

    rollout(model, stimulus[T, B, I], t_ms[T], solver=SolverConfig(...)) -> Rollout(states[T, B, S], stats)

A model is anything with ``prepare(stimulus) -> Dynamics`` (an ``nn.Module`` whose
``forward(t, y)`` is the drift with t in seconds, ``g(t, y)`` the diagonal diffusion,
``set_grid(t_s)`` and an ``nfe`` counter), ``initial_state(batch_size)`` and
``describe_state_index(i)``. :class:`colenv.models.ColumnNetwork` and
:class:`colenv.models.HopfField` are such models. The stimulus is piecewise constant:
``stimulus[k]`` drives the interval [t_ms[k], t_ms[k+1]).

Solvers (``SOLVERS``):

| family | methods | step |
|---|---|---|
| torchdiffeq fixed | euler, midpoint, heun2, heun3, rk4, explicit_adams, implicit_adams, fixed_adams | ``step_ms`` |
| torchdiffeq adaptive | dopri5, dopri8, bosh3, fehlberg2, adaptive_heun | ``rtol``/``atol`` |
| colenv fast path | expeuler, exprk2, rk4exp (exact decay of the linear parts, own loop; rk4exp with a hand-written discrete adjoint) | ``step_ms`` |
| torchsde (``sde=True``) | euler, milstein, srk, heun, midpoint, euler_heun, reversible_heun | ``step_ms`` (``adaptive``) |
| colenv fast SDE (``sde=True``) | expeuler, exprk2, rk4exp + additive noise kick on v | ``step_ms`` |

The Adams methods are multistep: their history straddles the stimulus jumps on the grid, so
they lose accuracy there (explicit_adams diverges on the stiff test problem of
tests/test_solve.py); they are offered for completeness, not recommended. torchdiffeq's
``scipy_solver`` is not offered (it needs scipy, which colenv does not depend on).

The fast SDE path is the artefact-free one at the default step: torchsde's Euler-Maruyama at
0.5 ms diverges on the 13-column network (docs/benchmarks.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torchdiffeq
import torchsde

from colenv.errors import DivergenceError
from colenv.models.column.integrators import (
    ADJOINT_METHODS,  # fast methods with a hand-written discrete adjoint
    KERNELS,  # where rk4exp runs: the native C kernel or the torch path
)
from colenv.models.column.integrators import BACKWARDS as FAST_BACKWARDS

ODE_FIXED = (
    "euler",
    "midpoint",
    "heun2",
    "heun3",
    "rk4",
    "explicit_adams",
    "implicit_adams",
    "fixed_adams",
)
ODE_ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FAST = ("expeuler", "exprk2", "rk4exp")
SDE_METHODS = ("euler", "milstein", "srk", "heun", "midpoint", "euler_heun", "reversible_heun")
SOLVERS: dict[str, tuple[str, ...]] = {
    "ode_fixed": ODE_FIXED,
    "ode_adaptive": ODE_ADAPTIVE,
    "fast": FAST,
    "sde": SDE_METHODS,
}


@dataclass(frozen=True)
class SolverConfig:
    """How to integrate a rollout. Validated on construction; errors list the allowed values.

    Attributes:
        method: a name from :data:`SOLVERS` (ODE methods, or SDE methods with ``sde=True``).
        step_ms: step of fixed-step methods (and of SDE methods), ms.
        rtol, atol: tolerances of adaptive methods.
        adjoint: backpropagate with the continuous adjoint (torchdiffeq ``odeint_adjoint`` /
            torchsde ``sdeint_adjoint``): memory flat in trial length, more evaluations.
        sde: integrate the SDE (noise on the membrane potential) with torchsde ``sdeint``.
        adaptive: adaptive step for SDE methods (torchsde; costly).
        check_finite: raise :class:`DivergenceError` when the rollout produces NaN/inf.
        max_steps: cap on solver steps for adaptive methods (0 = torchdiffeq default).
        compile: run the fast methods' step under ``torch.compile`` (slow first call, then
            several times faster; eager when False).
        checkpoint_every: fast methods: recompute chunks of this many grid intervals in
            backward, so activation memory stays flat in trial length (0 = off).
        backward: fast methods: how gradients are computed. "discrete_adjoint" (rk4exp): the
            hand-written adjoint of the scheme, run in chunks of ``unroll`` grid intervals
            (same gradient as autograd to float rounding, less time and memory); "autograd":
            autograd through the steps; "auto": the adjoint for rk4exp, autograd for the others.
        unroll: the discrete-adjoint path (rk4exp): grid intervals per chunk, each chunk
            one compiled graph (0 = automatic: 5 with ``compile``, 1 eager). Larger chunks
            cost fewer calls per trial and more compile time (docs/profiling.md).
        kernel: where rk4exp runs. "auto": on the native C kernel (:mod:`colenv.models.column.native`:
            column-structured weight product, trials in vector lanes, its own discrete adjoint)
            where it applies (CPU, float32, no noise, no kappa gradient, backward not
            "autograd") and builds, else on the torch path; "torch": always the torch path (``compile`` and
            ``unroll`` apply to it); "native": the C kernel or an error saying why not.
    """

    method: str = "rk4"
    step_ms: float = 0.5
    rtol: float = 1e-6
    atol: float = 1e-6
    adjoint: bool = False
    sde: bool = False
    adaptive: bool = False
    check_finite: bool = True
    max_steps: int = 0
    compile: bool = False
    checkpoint_every: int = 0
    backward: str = "auto"
    unroll: int = 0
    kernel: str = "auto"

    def __post_init__(self) -> None:
        if self.sde:
            if self.method not in SDE_METHODS + FAST:
                raise ValueError(
                    f"unknown SDE method {self.method!r} (sde=True); allowed: "
                    f"{', '.join(SDE_METHODS + FAST)}"
                )
            if self.method in FAST and self.adaptive:
                raise ValueError(f"adaptive=True is not available for fast method {self.method!r}")
        else:
            allowed = ODE_FIXED + ODE_ADAPTIVE + FAST
            if self.method not in allowed:
                raise ValueError(
                    f"unknown ODE method {self.method!r}; allowed: {', '.join(allowed)} "
                    f"(or sde=True with one of {', '.join(SDE_METHODS)})"
                )
            if self.adaptive:
                raise ValueError(
                    "adaptive=True applies to SDE methods only; ODE adaptivity is chosen by "
                    f"method ({', '.join(ODE_ADAPTIVE)})"
                )
        if self.method in FAST and self.adjoint:
            raise ValueError(
                f"adjoint=True is not available for the fast method {self.method!r}; "
                "it has its own backward (see the backward option)"
            )
        if self.compile and self.method not in FAST:
            raise ValueError(
                f"compile=True applies to the fast methods ({', '.join(FAST)}), not {self.method!r}"
            )
        if not (isinstance(self.step_ms, int | float) and self.step_ms > 0):
            raise ValueError(f"step_ms must be > 0, got {self.step_ms!r}")
        for name in ("rtol", "atol"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and v > 0):
                raise ValueError(f"{name} must be > 0, got {v!r}")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise ValueError(
                f"checkpoint_every must be an integer >= 0, got {self.checkpoint_every!r}"
            )
        if self.checkpoint_every and self.method not in FAST:
            raise ValueError(
                f"checkpoint_every applies to the fast methods ({', '.join(FAST)}), "
                f"not {self.method!r}; use adjoint=True for memory-lean torchdiffeq rollouts"
            )
        if self.backward not in FAST_BACKWARDS:
            raise ValueError(
                f"backward must be one of {', '.join(FAST_BACKWARDS)}, got {self.backward!r}"
            )
        if self.backward != "auto" and self.method not in FAST:
            raise ValueError(
                f"backward={self.backward!r} applies to the fast methods ({', '.join(FAST)}), "
                f"not {self.method!r}; torchdiffeq methods choose with adjoint=True/False"
            )
        if self.backward == "discrete_adjoint" and self.method not in ADJOINT_METHODS:
            raise ValueError(
                f"backward='discrete_adjoint' is implemented for {', '.join(ADJOINT_METHODS)}, "
                f"not {self.method!r}; allowed for it: 'auto', 'autograd'"
            )
        if isinstance(self.unroll, bool) or not isinstance(self.unroll, int) or self.unroll < 0:
            raise ValueError(f"unroll must be an integer >= 0, got {self.unroll!r}")
        if self.unroll and (self.method not in ADJOINT_METHODS or self.backward == "autograd"):
            raise ValueError(
                f"unroll applies to the discrete-adjoint path ({', '.join(ADJOINT_METHODS)} with "
                f"backward 'auto' or 'discrete_adjoint'), not method={self.method!r} with "
                f"backward={self.backward!r}"
            )
        if not isinstance(self.max_steps, int) or self.max_steps < 0:
            raise ValueError(f"max_steps must be an integer >= 0, got {self.max_steps!r}")
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {self.kernel!r}")
        if self.kernel == "native" and (self.method not in ADJOINT_METHODS or self.sde):
            raise ValueError(
                f"kernel='native' applies to method {', '.join(ADJOINT_METHODS)} without sde, "
                f"not method={self.method!r} sde={self.sde!r}; allowed here: 'auto', 'torch'"
            )

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SolverConfig:
        allowed = {f.name for f in fields(cls)}
        for key in raw:
            if key not in allowed:
                raise ValueError(
                    f"unknown solver option {key!r}; allowed: {', '.join(sorted(allowed))}"
                )
        return cls(**raw)


@dataclass
class RolloutStats:
    """What a rollout cost: function evaluations, solver steps (None if adaptive), seconds."""

    method: str
    nfe: int
    steps: int | None
    wall_s: float


@dataclass
class Rollout:
    """Result of :func:`rollout`: ``states`` [T, B, S] at the requested times, and stats."""

    states: torch.Tensor
    stats: RolloutStats = field(repr=False)


def _check_inputs(stimulus: torch.Tensor, t_ms: torch.Tensor) -> float:
    if stimulus.dim() != 3:
        raise ValueError(f"stimulus must be [T, B, I], got shape {tuple(stimulus.shape)}")
    if t_ms.dim() != 1 or t_ms.shape[0] != stimulus.shape[0]:
        raise ValueError(
            f"t_ms must be [T] with T = stimulus.shape[0] = {stimulus.shape[0]}, "
            f"got {tuple(t_ms.shape)}"
        )
    if t_ms.shape[0] < 2:
        raise ValueError("t_ms needs at least 2 time points")
    dt = t_ms[1:] - t_ms[:-1]
    dt_ms = float(dt[0])
    if dt_ms <= 0 or not torch.allclose(dt, dt.new_tensor(dt_ms), rtol=1e-5, atol=1e-6):
        raise ValueError("t_ms must be increasing with a uniform step")
    return dt_ms


def _steps_per_interval(dt_ms: float, step_ms: float) -> int:
    n = round(dt_ms / step_ms)
    if n < 1 or abs(n * step_ms - dt_ms) > 1e-6 * dt_ms:
        raise ValueError(
            f"step_ms={step_ms} must divide the trial's time step dt_ms={dt_ms} "
            "(the stimulus changes on that grid)"
        )
    return n


def rollout(
    model,
    stimulus: torch.Tensor,
    t_ms: torch.Tensor,
    solver: SolverConfig | None = None,
    *,
    y0: torch.Tensor | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Rollout:
    """Integrate ``model`` over a batch of trials.

    Args:
        model: a model (see the module docstring), e.g. a :class:`ColumnNetwork`.
        stimulus: [T, B, I] inputs (Hz); ``stimulus[k]`` acts between t_ms[k] and t_ms[k+1].
        t_ms: [T] output times (ms), uniform; states are returned at these times.
        solver: a :class:`SolverConfig` (default rk4 at 0.5 ms).
        y0: initial state [B, S]; default ``model.initial_state(B)`` (rest).
        seed, generator: the noise source of SDE rollouts (one of them is required there).

    Returns:
        :class:`Rollout` with states [T, B, S] (``states[0] == y0``) and :class:`RolloutStats`.

    Raises:
        DivergenceError: NaN/inf in the states (unless ``solver.check_finite`` is False).
    """
    solver = solver if solver is not None else SolverConfig()
    dt_ms = _check_inputs(stimulus, t_ms)
    batch = stimulus.shape[1]
    y0 = model.initial_state(batch) if y0 is None else y0
    if y0.dim() != 2 or y0.shape[0] != batch:
        raise ValueError(f"y0 must be [B={batch}, S], got {tuple(y0.shape)}")
    dyn = model.prepare(stimulus)
    t_s = t_ms.to(dtype=y0.dtype) * 1e-3
    dyn.set_grid(t_s)
    step_s = solver.step_ms * 1e-3
    start = time.perf_counter()
    steps: int | None = None
    try:
        if solver.method in FAST:
            from colenv.models.column.integrators import fast_rollout

            n_sub = _steps_per_interval(dt_ms, solver.step_ms)
            noise_gen = None
            if solver.sde:
                noise_gen = torch.Generator(device=y0.device)
                noise_gen.manual_seed(_noise_seed(seed, generator))
            states = fast_rollout(
                dyn,
                y0,
                t_s.shape[0],
                n_sub,
                step_s,
                solver.method,
                compile=solver.compile,
                checkpoint_every=solver.checkpoint_every,
                noise=solver.sde,
                generator=noise_gen,
                backward=solver.backward,
                unroll=solver.unroll,
                kernel=solver.kernel,
            )
            steps = (t_s.shape[0] - 1) * n_sub
        elif solver.sde:
            states, steps = _sde(dyn, y0, t_s, solver, step_s, seed, generator, dt_ms)
        else:
            options: dict[str, Any] = {}
            kwargs: dict[str, Any] = {"method": solver.method}
            if solver.method in ODE_FIXED:
                n_sub = _steps_per_interval(dt_ms, solver.step_ms)
                options["step_size"] = step_s
                # evaluate step ends one ulp inside the step, so input jumps on the grid are
                # seen by the step they start, not by the step that ends on them
                options["perturb"] = True
                steps = (t_s.shape[0] - 1) * n_sub
            else:
                kwargs.update(rtol=solver.rtol, atol=solver.atol)
                if solver.max_steps:
                    options["max_num_steps"] = solver.max_steps
                # the input jumps at grid points: tell the step-size controller
                options["jump_t"] = t_s[1:-1]
            kwargs["options"] = options
            if solver.adjoint:
                params = tuple(p for p in model.parameters() if p.requires_grad)
                states = torchdiffeq.odeint_adjoint(dyn, y0, t_s, adjoint_params=params, **kwargs)
            else:
                states = torchdiffeq.odeint(dyn, y0, t_s, **kwargs)
    except AssertionError as err:  # torchdiffeq's "underflow in dt" on NaN states
        raise DivergenceError(
            f"solver {solver.method!r} failed ({err}); the state most likely became NaN/inf. "
            "Try a smaller step or check the weights."
        ) from err
    wall = time.perf_counter() - start
    if solver.check_finite:
        check_finite(states, t_ms, model)
    return Rollout(states, RolloutStats(solver.method, dyn.nfe, steps, wall))


def _noise_seed(seed: int | None, generator: torch.Generator | None) -> int:
    if seed is not None:
        return int(seed)
    if generator is None:
        raise ValueError("SDE rollouts need an explicit noise source: pass seed= or generator=")
    return int(torch.randint(0, 2**62, (1,), generator=generator))


def _sde(dyn, y0, t_s, solver, step_s, seed, generator, dt_ms):
    seed = _noise_seed(seed, generator)
    steps = None
    if not solver.adaptive:
        steps = (t_s.shape[0] - 1) * _steps_per_interval(dt_ms, solver.step_ms)
    bm = torchsde.BrownianInterval(
        t0=float(t_s[0]),
        t1=float(t_s[-1]),
        size=y0.shape,
        dtype=y0.dtype,
        device=y0.device,
        entropy=seed,
        levy_area_approximation="space-time" if solver.method == "srk" else "none",
    )
    kwargs = dict(method=solver.method, dt=step_s, adaptive=solver.adaptive, bm=bm)
    if solver.adaptive:
        kwargs.update(rtol=solver.rtol, atol=solver.atol)
    if solver.adjoint:
        params = tuple(p for p in dyn.parameters() if p.requires_grad)
        states = torchsde.sdeint_adjoint(dyn, y0, t_s, adjoint_params=params, **kwargs)
    else:
        states = torchsde.sdeint(dyn, y0, t_s, **kwargs)
    return states, steps


def check_finite(states: torch.Tensor, t_ms: torch.Tensor, model) -> None:
    """Raise :class:`DivergenceError` naming the first time and state entry that is NaN/inf."""
    # one reduction pass: any NaN/inf makes the sum non-finite (an overflow of the sum of finite
    # states only costs the full check); isfinite(states).all() took 0.5 s at batch 256
    if bool(torch.isfinite(states.sum())) or bool(torch.isfinite(states).all()):
        return
    bad = (~torch.isfinite(states)).nonzero()
    k, b, s = (int(x) for x in bad[0])
    name = model.describe_state_index(s) if hasattr(model, "describe_state_index") else str(s)
    value = float(states[k, b, s].detach())
    raise DivergenceError(
        f"rollout diverged: state {name} of trial {b} is {value} at t = {float(t_ms[k]):.3f} ms "
        f"(first of {bad.shape[0]} non-finite entries). Use a smaller step_ms or a stiffer-stable "
        "method, or pass SolverConfig(check_finite=False) to get the raw states."
    )
