"""Rollouts: integrate a model over a batch of trials with a validated solver configuration.

    rollout(model, stimulus[T, B, I], t_ms[T], solver=SolverConfig(...)) -> Rollout(states[T, B, S], stats)

A model is anything with ``prepare(stimulus) -> dynamics`` (an ``nn.Module`` whose
``forward(t, y)`` is the drift with t in seconds, with ``set_grid(t_s)`` and an ``nfe``
counter), ``initial_state(batch_size)`` and optionally ``describe_state_index(i)`` (names a
state entry in divergence errors). For SDE methods the dynamics also provide torchsde's
``f``, ``g`` (diagonal diffusion), ``noise_type`` and ``sde_type``; for the fast methods they
provide ``fast_rollout(y0, n_points, n_sub, h, method, options, noise=, generator=)``, the
model's own scheme (the column model's :class:`colenv.models.Dynamics` does). This module
knows no model: it checks what the dynamics offer and says what is missing. The stimulus is
piecewise constant: ``stimulus[k]`` drives the interval [t_ms[k], t_ms[k+1]).

Solvers (``SOLVERS``) and the option table each family reads (:meth:`SolverConfig.families`):

| family | methods | step | options |
|---|---|---|---|
| torchdiffeq fixed | euler, midpoint, heun2, heun3, rk4, explicit_adams, implicit_adams, fixed_adams | ``step_ms`` | none |
| torchdiffeq adaptive | dopri5, dopri8, bosh3, fehlberg2, adaptive_heun | error control | ``[solver.adaptive]`` |
| fast (the model's own scheme) | expeuler, exprk2, rk4exp | ``step_ms`` | ``[solver.fast]`` |
| torchsde (``sde=True``) | euler, milstein, srk, heun, midpoint, euler_heun, reversible_heun | ``step_ms`` | ``[solver.torchsde]`` |
| fast SDE (``sde=True``) | expeuler, exprk2, rk4exp + additive noise kick on v | ``step_ms`` | ``[solver.fast]`` |

The Adams methods are multistep: their history straddles the stimulus jumps on the grid, so
they lose accuracy there (explicit_adams diverges on the stiff test problem of
tests/test_solve.py); they are offered for completeness, not recommended. torchdiffeq's
``scipy_solver`` is not offered.

The fast SDE path is the artefact-free one at the default step: torchsde's Euler-Maruyama at
0.5 ms diverges on the 13-column network (docs/benchmarks.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
import torchdiffeq
import torchsde
from pydantic import Field, ValidationInfo, field_validator, model_validator

from colenv.config import StrictModel, parse
from colenv.errors import ConfigError, DivergenceError

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
ADJOINT_METHODS = ("rk4exp",)  # fast methods with a hand-written discrete adjoint
Backward = Literal["auto", "discrete_adjoint", "autograd"]
Kernel = Literal["auto", "torch", "native"]
BACKWARDS: tuple[str, ...] = get_args(Backward)
KERNELS: tuple[str, ...] = get_args(Kernel)
_ALL_METHODS = tuple(dict.fromkeys(ODE_FIXED + ODE_ADAPTIVE + FAST + SDE_METHODS))
_TABLES = ("adaptive", "fast", "torchsde")
# flat keys of the old [solver] table -> the option table they moved to
_MOVED = {
    "rtol": ("adaptive", "torchsde"),
    "atol": ("adaptive", "torchsde"),
    "max_steps": ("adaptive",),
    "compile": ("fast",),
    "checkpoint_every": ("fast",),
    "backward": ("fast",),
    "unroll": ("fast",),
    "kernel": ("fast",),
}


def _show(values: tuple[str, ...]) -> str:
    return ", ".join(values)


class _ParseOnCall(type(StrictModel)):
    """Direct construction of a solver config goes through :func:`colenv.config.parse`, so a
    bad argument is one :class:`ConfigError` naming the key (``solver.fast.kernel = 'gpu':
    ...``); :class:`SolverConfig` also takes its method positionally
    (``SolverConfig("rk4exp", step_ms=0.5)``). Validation of a nested [solver] table (a
    trainer's config) does not pass here and reports the same messages through its parser."""

    def __call__(cls, *args: Any, **options: Any):
        positional = cls.__dict__.get("__positional__", ())
        if len(args) > len(positional):
            raise ConfigError(
                f"{cls.__name__} takes {len(positional)} positional argument(s) "
                f"({', '.join(positional) or 'none'}), got {len(args)}; name the others"
            )
        for name, value in zip(positional, args, strict=False):
            if name in options:
                raise ConfigError(f"{cls.__name__} got {name} twice (positionally and {name}=)")
            options[name] = value
        where = cls.__dict__.get("__where__", "")
        if where == "solver":
            _check_moved(options)
        return parse(cls, options, where=where)


class AdaptiveOptions(StrictModel, metaclass=_ParseOnCall):
    """``[solver.adaptive]``: error control of torchdiffeq's adaptive methods
    (dopri5, dopri8, bosh3, fehlberg2, adaptive_heun)."""

    __where__ = "solver.adaptive"

    rtol: float = Field(1e-6, gt=0, description="relative tolerance of the step-size control")
    atol: float = Field(1e-6, gt=0, description="absolute tolerance of the step-size control")
    max_steps: int = Field(0, ge=0, description="cap on solver steps (0 = torchdiffeq's default)")


class FastOptions(StrictModel, metaclass=_ParseOnCall):
    """``[solver.fast]``: the fast methods expeuler, exprk2 and rk4exp, which the model
    integrates with its own scheme (the column model: exact decay of the linear parts,
    rk4exp with a hand-written discrete adjoint and a native C kernel on CPU)."""

    __where__ = "solver.fast"

    compile: bool = Field(
        False,
        description="run the torch path's steps as cached torch.compile graphs (slow first "
        "call, then several times faster); the native kernel needs none",
    )
    checkpoint_every: int = Field(
        0,
        ge=0,
        description="recompute chunks of this many grid intervals in backward, so activation "
        "memory stays flat in trial length (0 = off; native kernel: its segment length)",
    )
    backward: Backward = Field(
        "auto",
        description="how gradients are computed: 'discrete_adjoint' (rk4exp: the scheme's "
        "hand-written adjoint), 'autograd' (through the steps), 'auto' (the adjoint for "
        "rk4exp, autograd for the others)",
    )
    unroll: int = Field(
        0,
        ge=0,
        description="grid intervals per chunk (one compiled graph) of rk4exp's discrete-adjoint "
        "torch path (0 = 5 with compile, else 1)",
    )
    kernel: Kernel = Field(
        "auto",
        description="where rk4exp runs: 'native' (the C kernel: CPU, float32, no noise, no "
        "kappa gradient), 'torch', or 'auto' (native where it applies and builds)",
    )

    def problem(self, method: str, sde: bool = False) -> str | None:
        """Why these options cannot run ``method`` (with or without ``sde``): a message
        naming the option (``solver.fast.<key> = <value>: ...``), or None."""
        adjoint = method in ADJOINT_METHODS
        with_backward = f"method {method!r} with backward={self.backward!r}"
        if self.backward == "discrete_adjoint" and not adjoint:
            return (
                f"solver.fast.backward = 'discrete_adjoint': implemented for "
                f"{_show(ADJOINT_METHODS)}, not {method!r}; allowed for it: 'auto', 'autograd'"
            )
        if self.unroll and (not adjoint or self.backward == "autograd"):
            return (
                f"solver.fast.unroll = {self.unroll}: applies to the discrete-adjoint path "
                f"({_show(ADJOINT_METHODS)} with backward 'auto' or 'discrete_adjoint'), not "
                f"{with_backward}"
            )
        if self.kernel == "native" and (not adjoint or sde):
            return (
                f"solver.fast.kernel = 'native': applies to method {_show(ADJOINT_METHODS)} "
                f"without sde, not method {method!r} with sde={sde!r}; allowed here: 'auto', "
                "'torch'"
            )
        if sde and self.checkpoint_every and (not adjoint or self.backward == "autograd"):
            return (
                f"solver.fast.checkpoint_every = {self.checkpoint_every}: with sde=true it needs "
                f"the discrete adjoint ({_show(ADJOINT_METHODS)} with backward 'auto' or "
                f"'discrete_adjoint'), not {with_backward}"
            )
        return None

    def check(self, method: str, sde: bool = False) -> None:
        """Raise :class:`ConfigError` naming the option where these options cannot run
        ``method`` (the rule :class:`SolverConfig` applies on construction)."""
        why = self.problem(method, sde)
        if why is not None:
            raise ConfigError(why)


class TorchsdeOptions(StrictModel, metaclass=_ParseOnCall):
    """``[solver.torchsde]``: torchsde's methods (``sde = true`` with euler, milstein, srk,
    heun, midpoint, euler_heun, reversible_heun)."""

    __where__ = "solver.torchsde"

    adaptive: bool = Field(False, description="adaptive step with error control (costly)")
    rtol: float = Field(1e-6, gt=0, description="relative tolerance of the adaptive step")
    atol: float = Field(1e-6, gt=0, description="absolute tolerance of the adaptive step")


_DEFAULTS = {"adaptive": AdaptiveOptions(), "fast": FastOptions(), "torchsde": TorchsdeOptions()}


def _check_moved(raw: Any) -> None:
    """ConfigError for a key of the old flat [solver] table, saying where it moved."""
    if not isinstance(raw, dict):
        return
    for key, tables in _MOVED.items():
        if key in raw:
            if len(tables) > 1:  # name the one the method reads, if it reads one of them
                try:
                    reads = SolverConfig.families(raw.get("method", "rk4"), bool(raw.get("sde")))
                except ConfigError:
                    reads = ()
                tables = tuple(t for t in tables if t in reads) or tables
            where = " or ".join(f"solver.{t}.{key}" for t in tables)
            raise ConfigError(f"solver.{key} moved to {where}")
    if isinstance(raw.get("adaptive"), bool):
        raise ConfigError(
            "solver.adaptive (the adaptive SDE step) moved to solver.torchsde.adaptive; "
            "solver.adaptive is now the table of torchdiffeq's adaptive-step options"
        )


class SolverConfig(StrictModel, metaclass=_ParseOnCall):
    """How to integrate a rollout: a method, its step, and the option table of its family.

    ``SolverConfig("rk4exp", step_ms=0.5, fast=FastOptions(compile=True))``; in TOML the
    [solver] table with [solver.adaptive], [solver.fast] or [solver.torchsde] below it. Each
    option table applies to one family of methods (:meth:`families`); setting a table that
    does not apply to the method is an error, and so is a key of the old flat layout
    (``solver.compile`` moved to ``solver.fast.compile``). Errors are
    :class:`colenv.ConfigError` naming the key and what is allowed.
    """

    __where__ = "solver"
    __positional__ = ("method",)

    method: str = Field(
        "rk4",
        description="integration method: an ODE method, or with sde=true an SDE method "
        "(colenv.solve.SOLVERS)",
    )
    step_ms: float = Field(
        0.5, gt=0, description="step of fixed-step, fast and SDE methods (ms); divides the grid"
    )
    sde: bool = Field(False, description="integrate the model's SDE (its noise) instead of the ODE")
    check_finite: bool = Field(
        True, description="raise DivergenceError naming the first NaN/inf state"
    )
    adjoint: bool = Field(
        False,
        description="torchdiffeq/torchsde methods: backpropagate with the continuous adjoint "
        "(memory flat in trial length, more evaluations)",
    )
    adaptive: AdaptiveOptions = Field(
        AdaptiveOptions(), description="options of torchdiffeq's adaptive methods"
    )
    fast: FastOptions = Field(FastOptions(), description="options of the fast methods")
    torchsde: TorchsdeOptions = Field(
        TorchsdeOptions(), description="options of torchsde's methods (sde=true)"
    )

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, raw: Any) -> Any:
        _check_moved(raw)
        return raw

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        if method not in _ALL_METHODS:
            raise ValueError(
                f"unknown method {method!r}; allowed: {_show(ODE_FIXED + ODE_ADAPTIVE + FAST)} "
                f"(ODE), or with sde=true {_show(SDE_METHODS + FAST)}"
            )
        return method

    @field_validator("sde")
    @classmethod
    def _method_has_sde(cls, sde: bool, info: ValidationInfo) -> bool:
        method = info.data.get("method")
        if method is None:  # already reported
            return sde
        if sde and method not in SDE_METHODS + FAST:
            raise ValueError(
                f"method {method!r} is an ODE method; with sde=true allowed: "
                f"{_show(SDE_METHODS + FAST)}"
            )
        if not sde and method not in ODE_FIXED + ODE_ADAPTIVE + FAST:
            raise ValueError(f"method {method!r} is an SDE method (torchsde): set sde=true")
        return sde

    @field_validator("adjoint")
    @classmethod
    def _adjoint_applies(cls, adjoint: bool, info: ValidationInfo) -> bool:
        method = info.data.get("method")
        if adjoint and method in FAST:
            raise ConfigError(
                f"solver.adjoint = true is for torchdiffeq/torchsde methods, not the fast "
                f"method {method!r}: it has its own backward (solver.fast.backward)"
            )
        return adjoint

    @field_validator("adaptive", "fast", "torchsde")
    @classmethod
    def _table_applies(cls, options: StrictModel, info: ValidationInfo) -> StrictModel:
        method, sde = info.data.get("method"), info.data.get("sde")
        if method is None or sde is None:  # already reported
            return options
        name = info.field_name
        if options != _DEFAULTS[name] and name not in cls.families(method, sde):
            applies = {
                "adaptive": f"torchdiffeq's adaptive methods ({_show(ODE_ADAPTIVE)})",
                "fast": f"the fast methods ({_show(FAST)})",
                "torchsde": f"torchsde's methods with sde=true ({_show(SDE_METHODS)})",
            }[name]
            raise ConfigError(
                f"solver.{name} applies to {applies}, not method {method!r}"
                + (" with sde=true" if sde else "")
                + "; remove the table or choose such a method"
            )
        if name == "fast":
            options.check(method, sde)
        return options

    @classmethod
    def families(cls, method: str, sde: bool = False) -> tuple[str, ...]:
        """The option tables ("adaptive", "fast", "torchsde") that apply to ``method``.

        Raises:
            ConfigError: ``method`` is unknown (with this ``sde``); the message lists the
                allowed methods.
        """
        if sde:
            if method in FAST:
                return ("fast",)
            if method in SDE_METHODS:
                return ("torchsde",)
            raise ConfigError(
                f"unknown SDE method {method!r} (sde=true); allowed: {_show(SDE_METHODS + FAST)}"
            )
        if method in FAST:
            return ("fast",)
        if method in ODE_ADAPTIVE:
            return ("adaptive",)
        if method in ODE_FIXED:
            return ()
        raise ConfigError(
            f"unknown ODE method {method!r}; allowed: {_show(ODE_FIXED + ODE_ADAPTIVE + FAST)} "
            f"(or sde=true with one of {_show(SDE_METHODS)})"
        )

    def replace(self, **changes: Any) -> SolverConfig:
        """A validated copy with ``changes``; a mapping for an option table updates only the
        keys it names (``replace(step_ms=0.25, fast={"compile": False})``)."""
        data = self.model_dump()
        for key, value in changes.items():
            if key in _TABLES and isinstance(value, dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return type(self)(**data)


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


_SDE_INTERFACE = ("f", "g", "noise_type", "sde_type")


def _check_dynamics(model, dyn, solver: SolverConfig) -> None:
    """ConfigError where the model's dynamics lack what the solver method needs."""
    name = type(model).__name__
    if solver.method in FAST and not callable(getattr(dyn, "fast_rollout", None)):
        raise ConfigError(
            f"solver method {solver.method!r} needs a model that provides its own fast scheme "
            f"(Dynamics.fast_rollout); {name} provides none; use one of "
            f"{_show(ODE_FIXED + ODE_ADAPTIVE)}"
            + (f" (or with sde=true {_show(SDE_METHODS)})" if solver.sde else "")
        )
    if solver.sde:
        needed = ("g",) if solver.method in FAST else _SDE_INTERFACE
        missing = [a for a in needed if not hasattr(dyn, a)]
        if missing:
            raise ConfigError(
                f"sde=true needs dynamics with a diffusion (torchsde's {_show(_SDE_INTERFACE)}); "
                f"the dynamics of {name} ({type(dyn).__name__}) lack {_show(tuple(missing))}; "
                "integrate its ODE (sde=false) instead"
            )


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
        stimulus: [T, B, I] inputs; ``stimulus[k]`` acts between t_ms[k] and t_ms[k+1].
        t_ms: [T] output times (ms), uniform; states are returned at these times.
        solver: a :class:`SolverConfig` (default rk4 at 0.5 ms).
        y0: initial state [B, S]; default ``model.initial_state(B)`` (rest).
        seed, generator: the noise source of SDE rollouts (one of them is required there).

    Returns:
        :class:`Rollout` with states [T, B, S] (``states[0] == y0``) and :class:`RolloutStats`.

    Raises:
        ConfigError: the model's dynamics lack what the method needs (a fast scheme, a
            diffusion).
        DivergenceError: NaN/inf in the states (unless ``solver.check_finite`` is False).
    """
    solver = solver if solver is not None else SolverConfig()
    dt_ms = _check_inputs(stimulus, t_ms)
    batch = stimulus.shape[1]
    y0 = model.initial_state(batch) if y0 is None else y0
    if y0.dim() != 2 or y0.shape[0] != batch:
        raise ValueError(f"y0 must be [B={batch}, S], got {tuple(y0.shape)}")
    dyn = model.prepare(stimulus)
    _check_dynamics(model, dyn, solver)
    t_s = t_ms.to(dtype=y0.dtype) * 1e-3
    dyn.set_grid(t_s)
    step_s = solver.step_ms * 1e-3
    start = time.perf_counter()
    steps: int | None = None
    try:
        if solver.method in FAST:
            n_sub = _steps_per_interval(dt_ms, solver.step_ms)
            noise_gen = None
            if solver.sde:
                noise_gen = torch.Generator(device=y0.device)
                noise_gen.manual_seed(_noise_seed(seed, generator))
            states = dyn.fast_rollout(
                y0,
                t_s.shape[0],
                n_sub,
                step_s,
                solver.method,
                solver.fast,
                noise=solver.sde,
                generator=noise_gen,
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
                kwargs.update(rtol=solver.adaptive.rtol, atol=solver.adaptive.atol)
                if solver.adaptive.max_steps:
                    options["max_num_steps"] = solver.adaptive.max_steps
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


def _sde(dyn, y0, t_s, solver: SolverConfig, step_s, seed, generator, dt_ms):
    seed = _noise_seed(seed, generator)
    opts = solver.torchsde
    steps = None
    if not opts.adaptive:
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
    kwargs = dict(method=solver.method, dt=step_s, adaptive=opts.adaptive, bm=bm)
    if opts.adaptive:
        kwargs.update(rtol=opts.rtol, atol=opts.atol)
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
