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
| fast (the model's own scheme) | expeuler, exprk2, rk4exp, ros2, exprb2 | ``step_ms`` | ``[solver.fast]`` |
| torchsde (``sde=True``) | euler, milstein, srk, heun, midpoint, euler_heun, reversible_heun | ``step_ms`` | ``[solver.torchsde]`` |
| fast SDE (``sde=True``) | expeuler, exprk2, rk4exp, ros2, exprb2 + additive noise kick on v | ``step_ms`` | ``[solver.fast]`` |

ros2 is the column model's linearly implicit (Rosenbrock-W) step for stiff networks
(:mod:`colenv.models.column.rosenbrock`, docs/numerics.md); exprb2 its exponential
Rosenbrock-Euler step with a restart at every change of the drive, the one that keeps the
stiff Decision network within 0.5 Hz of float64 at 0.5 ms
(:mod:`colenv.models.column.exprb`, docs/numerics.md).

The Adams methods are multistep: their history straddles the stimulus jumps on the grid, so
they lose accuracy there (explicit_adams diverges on the stiff test problem of
tests/test_solve.py); they are offered for completeness, not recommended. torchdiffeq's
``scipy_solver`` is not offered.

The fast SDE path is the artefact-free one at the default step: torchsde's Euler-Maruyama at
0.5 ms runs away on the 13-column network (docs/numerics.md). Its noise increments are drawn
once per rollout from the seed or generator and passed to the scheme (torch or, for rk4exp on
CPU in float32, the native kernel), so a seed reproduces a rollout exactly.
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
FAST = ("expeuler", "exprk2", "rk4exp", "ros2", "exprb2")
SDE_METHODS = ("euler", "milstein", "srk", "heun", "midpoint", "euler_heun", "reversible_heun")
SOLVERS: dict[str, tuple[str, ...]] = {
    "ode_fixed": ODE_FIXED,
    "ode_adaptive": ODE_ADAPTIVE,
    "fast": FAST,
    "sde": SDE_METHODS,
}
# fast methods with a hand-written discrete adjoint (exprb2: its native kernel's)
ADJOINT_METHODS = ("rk4exp", "exprb2")
NATIVE_METHODS = ("rk4exp", "ros2", "exprb2")  # with a native C kernel (ros2: forward only)
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
    "max_steps": ("adaptive", "torchsde"),
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


# default cap of an adaptive rollout's steps: AUTO_STEPS_BASE + AUTO_STEPS_PER_INTERVAL per grid
# interval (dopri5 takes about 1 step per 1 ms interval on the shipped column networks); where
# autograd records every step (a gradient without the adjoint) the GRAD_ values, which keep a
# runaway XOR network at batch 16 over a 1 s trial under 2 GB
AUTO_STEPS_BASE = 1000
AUTO_STEPS_PER_INTERVAL = 20
GRAD_STEPS_BASE = 100
GRAD_STEPS_PER_INTERVAL = 4
# default bound on a model's rates (Hz), SolverConfig.max_rate_hz
MAX_RATE_HZ = 1e4


class AdaptiveOptions(StrictModel, metaclass=_ParseOnCall):
    """``[solver.adaptive]``: error control of torchdiffeq's adaptive methods
    (dopri5, dopri8, bosh3, fehlberg2, adaptive_heun)."""

    __where__ = "solver.adaptive"

    rtol: float = Field(1e-6, gt=0, description="relative tolerance of the step-size control")
    atol: float = Field(1e-6, gt=0, description="absolute tolerance of the step-size control")
    max_steps: int = Field(
        0,
        ge=0,
        description="cap on the solver's steps (accepted and rejected) over the whole rollout; "
        "above it the rollout stops with DivergenceError instead of taking ever smaller steps "
        "(a runaway or stiff network), which bounds time and the memory a gradient keeps; "
        f"0 = {AUTO_STEPS_BASE} + {AUTO_STEPS_PER_INTERVAL} per grid interval, or where autograd "
        f"records the steps (a gradient without solver.adjoint) {GRAD_STEPS_BASE} + "
        f"{GRAD_STEPS_PER_INTERVAL} per grid interval (a column network takes about 1 per 1 ms "
        "interval)",
    )


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
        description="how gradients are computed: 'discrete_adjoint' (rk4exp, exprb2: the "
        "scheme's hand-written adjoint; exprb2's is its native kernel's), 'autograd' (through "
        "the steps, torch path), 'auto' (the adjoint for rk4exp and native exprb2, autograd "
        "for the others)",
    )
    unroll: int = Field(
        0,
        ge=0,
        description="grid intervals per chunk (one compiled graph) of rk4exp's discrete-adjoint "
        "torch path (0 = 5 with compile, else 1)",
    )
    kernel: Kernel = Field(
        "auto",
        description="where rk4exp and exprb2 run: 'native' (the C kernel with its discrete "
        "adjoint: CPU, float32, ODE or SDE, gated or not, no kappa gradient), 'torch', or "
        "'auto' (native where it applies and builds); ros2: its native forward where no "
        "gradient is needed and the network has no gating",
    )

    onset_refine: int = Field(
        16,
        ge=1,
        description="exprb2: steps of step_ms / onset_refine inside the onset window after "
        "every change of the drive (1 = no refinement)",
    )
    onset_window_ms: float = Field(
        5.0,
        ge=0,
        allow_inf_nan=False,
        description="exprb2: length (ms) of the refined window after every change of the "
        "piecewise-constant drive and after the initial state (0 = no refinement)",
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
        if self.unroll and (method != "rk4exp" or self.backward == "autograd"):
            return (
                f"solver.fast.unroll = {self.unroll}: applies to rk4exp's discrete-adjoint "
                f"torch path (backward 'auto' or 'discrete_adjoint'), not {with_backward}"
            )
        if self.kernel == "native" and method not in NATIVE_METHODS:
            return (
                "solver.fast.kernel = 'native': applies to method rk4exp (with or without "
                "sde; its forward and adjoint), exprb2 (the same) and ros2 (its forward), not "
                f"method {method!r}; allowed here: 'auto', 'torch'"
            )
        if method == "exprb2" and self.backward == "discrete_adjoint" and self.kernel == "torch":
            return (
                "solver.fast.backward = 'discrete_adjoint': exprb2's discrete adjoint is its "
                "native kernel's, not kernel = 'torch' (there its gradient is autograd); use "
                "backward 'auto' or 'autograd', or kernel 'auto' or 'native'"
            )
        if method in ("ros2", "exprb2") and self.checkpoint_every:
            return (
                f"solver.fast.checkpoint_every = {self.checkpoint_every}: not implemented for "
                f"method {method!r} (its gradient is autograd through the steps); use 0"
            )
        for key in ("onset_refine", "onset_window_ms"):
            value = getattr(self, key)
            if method != "exprb2" and value != type(self).model_fields[key].default:
                return (
                    f"solver.fast.{key} = {value}: applies to method 'exprb2' (its restart "
                    f"after a change of the drive), not {method!r}; remove it"
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
    max_steps: int = Field(
        0,
        ge=0,
        description="bound on the adaptive step's steps over the whole rollout: its smallest "
        "step is the trial's duration / max_steps (torchsde steps on at that size where the "
        "error control wants less, with a warning), which bounds time and the memory a "
        f"gradient keeps; 0 = as solver.adaptive.max_steps: {AUTO_STEPS_BASE} + "
        f"{AUTO_STEPS_PER_INTERVAL} per grid interval, {GRAD_STEPS_BASE} + "
        f"{GRAD_STEPS_PER_INTERVAL} where autograd records the steps",
    )


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
        True,
        description="raise DivergenceError naming the first NaN/inf state or the first rate "
        "above max_rate_hz (false: return the raw states)",
    )
    max_rate_hz: float = Field(
        MAX_RATE_HZ,
        gt=0,
        allow_inf_nan=False,
        description="bound on the model's rates (model.rates(states), Hz; models without "
        "rates are not bounded): a rollout with a rate above it at any time, in any trial, "
        "ran away and raises DivergenceError (with check_finite). Cortical populations fire "
        "below ~500 Hz (refractory limit) and the shipped column tasks peak below 200 Hz, so "
        "1e4 Hz is far beyond any physiological rate; the trainer's train.runaway_hz guards "
        "below it",
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
        DivergenceError: a NaN/inf input (stimulus, t_ms, y0, a parameter or buffer of the
            model, the model's input drive), named before integrating; an adaptive method
            that needed more than ``solver.adaptive.max_steps`` steps; NaN/inf in the states
            or a rate above ``solver.max_rate_hz`` (these two unless ``solver.check_finite``
            is False).
    """
    solver = solver if solver is not None else SolverConfig()
    dt_ms = _check_inputs(stimulus, t_ms)
    _check_finite_inputs(model, stimulus, t_ms)
    batch = stimulus.shape[1]
    given_y0 = y0 is not None
    y0 = model.initial_state(batch) if y0 is None else y0
    if y0.dim() != 2 or y0.shape[0] != batch:
        raise ValueError(f"y0 must be [B={batch}, S], got {tuple(y0.shape)}")
    _check_finite_y0(model, y0, given_y0)
    dyn = model.prepare(stimulus)
    _check_dynamics(model, dyn, solver)
    _check_finite_drive(model, dyn, t_ms)
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
            steps = getattr(dyn, "fast_steps", (t_s.shape[0] - 1) * n_sub)
        elif solver.sde:
            states, steps = _sde(dyn, y0, t_s, solver, step_s, seed, generator, dt_ms)
        else:
            options: dict[str, Any] = {}
            kwargs: dict[str, Any] = {"method": solver.method}
            func = dyn
            if solver.method in ODE_FIXED:
                n_sub = _steps_per_interval(dt_ms, solver.step_ms)
                options["step_size"] = step_s
                # evaluate step ends one ulp inside the step, so input jumps on the grid are
                # seen by the step they start, not by the step that ends on them
                options["perturb"] = True
                steps = (t_s.shape[0] - 1) * n_sub
            else:
                kwargs.update(rtol=solver.adaptive.rtol, atol=solver.adaptive.atol)
                cap = max_adaptive_steps(solver, t_s.shape[0], _records_steps(model, y0, solver))
                # the whole rollout is capped by counting evaluations (_StepCounter);
                # torchdiffeq's own cap (steps between two output times) stays out of its way
                options["max_num_steps"] = min(2 * cap + 10, 2**31 - 1)
                # the input jumps at grid points: tell the step-size controller
                options["jump_t"] = t_s[1:-1]
                func = _StepCounter(dyn, cap, _EVALS_PER_STEP[solver.method])
            kwargs["options"] = options
            if solver.adjoint:
                params = tuple(p for p in model.parameters() if p.requires_grad)
                states = torchdiffeq.odeint_adjoint(func, y0, t_s, adjoint_params=params, **kwargs)
            else:
                states = torchdiffeq.odeint(func, y0, t_s, **kwargs)
    except _TooManySteps as err:
        raise DivergenceError(
            f"{solver.method} took more than {err.cap} steps between t = {float(t_ms[0]):g} "
            f"and t = {err.t_s * 1e3:.3f} ms (of {float(t_ms[-1]):g} ms); the dynamics are "
            "too stiff or ran away. Raise solver.adaptive.max_steps, or use a fixed-step "
            "method (rk4, or rk4exp for column models)"
        ) from None
    except AssertionError as err:  # torchdiffeq: "underflow in dt" on NaN states, step cap
        if "max_num_steps" in str(err):
            raise DivergenceError(
                f"{solver.method} took more than {options['max_num_steps']} steps between two "
                f"grid points ({err}); the dynamics are too stiff or ran away. Raise "
                "solver.adaptive.max_steps, or use a fixed-step method"
            ) from err
        raise DivergenceError(
            f"solver {solver.method!r} failed ({err}): its step shrank to nothing, so the state "
            f"became NaN/inf or grew faster than the tolerances can follow in {y0.dtype} (the "
            "inputs and parameters are finite). Check the weights, or use a fixed-step method "
            "to see where and how fast the rates run away."
        ) from err
    wall = time.perf_counter() - start
    if solver.check_finite:
        check_states(states, t_ms, model, solver.max_rate_hz)
    return Rollout(states, RolloutStats(solver.method, dyn.nfe, steps, wall))


# function evaluations per step of torchdiffeq's adaptive methods (first-same-as-last counted
# once), for the step cap of the whole rollout
_EVALS_PER_STEP = {"dopri5": 6, "dopri8": 12, "bosh3": 3, "fehlberg2": 3, "adaptive_heun": 2}


def max_adaptive_steps(solver: SolverConfig, n_points: int, records: bool = False) -> int:
    """The step cap of an adaptive rollout over ``n_points`` grid points: the method's
    ``max_steps`` option (``solver.adaptive`` or, with sde, ``solver.torchsde``), or where it
    is 0, ``AUTO_STEPS_BASE + AUTO_STEPS_PER_INTERVAL * (n_points - 1)``, or
    ``GRAD_STEPS_BASE + GRAD_STEPS_PER_INTERVAL * (n_points - 1)`` where autograd ``records``
    every step."""
    cap = solver.torchsde.max_steps if solver.sde else solver.adaptive.max_steps
    if cap:
        return cap
    if records:
        return GRAD_STEPS_BASE + GRAD_STEPS_PER_INTERVAL * (n_points - 1)
    return AUTO_STEPS_BASE + AUTO_STEPS_PER_INTERVAL * (n_points - 1)


def _records_steps(model, y0: torch.Tensor, solver: SolverConfig) -> bool:
    """Whether autograd keeps every solver step (a gradient, without the adjoint)."""
    if solver.adjoint or not torch.is_grad_enabled():
        return False
    return y0.requires_grad or any(p.requires_grad for p in model.parameters())


class _TooManySteps(Exception):
    def __init__(self, cap: int, t_s: float) -> None:
        super().__init__(cap, t_s)
        self.cap, self.t_s = cap, t_s


class _StepCounter(torch.nn.Module):
    """The dynamics, stopping the solver once it evaluated them more often than ``cap`` steps
    take (plus the initial-step estimate); an integer per evaluation, no synchronisation."""

    def __init__(self, dyn, cap: int, evals_per_step: int) -> None:
        super().__init__()
        self.dyn = dyn
        self.cap = cap
        self.limit = cap * evals_per_step + 4
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        if self.calls > self.limit:
            raise _TooManySteps(self.cap, float(torch.as_tensor(t).detach()))
        return self.dyn(t, y)


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
        # torchsde accepts a step at dt_min whatever its error: a floor of duration / cap
        # bounds the steps (and the memory a gradient keeps), as max_steps does for the ODE
        # methods
        cap = max_adaptive_steps(solver, t_s.shape[0], _records_steps(dyn, y0, solver))
        dt_min = min(step_s, (float(t_s[-1]) - float(t_s[0])) / cap)
        kwargs.update(rtol=opts.rtol, atol=opts.atol, dt_min=dt_min)
    if solver.adjoint:
        params = tuple(p for p in dyn.parameters() if p.requires_grad)
        states = torchsde.sdeint_adjoint(dyn, y0, t_s, adjoint_params=params, **kwargs)
    else:
        states = torchsde.sdeint(dyn, y0, t_s, **kwargs)
    return states, steps


# --------------------------------------------------------------------------- input checks
def _first_nonfinite(x: torch.Tensor) -> tuple[int, ...] | None:
    """Index of the first NaN/inf entry of ``x`` (row-major), or None: one reduction pass
    (the sum is non-finite if any entry is; only an overflowing sum costs the full check)."""
    if not x.is_floating_point() or x.numel() == 0:
        return None
    x = x.detach()
    if bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all()):
        return None
    return tuple(int(i) for i in (~torch.isfinite(x)).nonzero()[0])


def _describe(x: torch.Tensor) -> str:
    """'nan', 'inf' or '-inf' for a non-finite scalar tensor."""
    return str(float(x.detach()))


def _check_finite_inputs(model, stimulus: torch.Tensor, t_ms: torch.Tensor) -> None:
    """DivergenceError naming a NaN/inf in t_ms, the stimulus or the model's parameters and
    floating buffers, before anything is integrated."""
    bad = _first_nonfinite(t_ms)
    if bad is not None:
        raise DivergenceError(f"t_ms has {_describe(t_ms[bad])} at index {bad[0]}")
    bad = _first_nonfinite(stimulus)
    if bad is not None:
        k, b, i = bad
        raise DivergenceError(
            f"stimulus has {_describe(stimulus[bad])} at t = {float(t_ms[k]):.3f} ms (index "
            f"{k}), trial {b}, input {i}; the inputs must be finite"
        )
    named = [(f"parameter {n}", p) for n, p in model.named_parameters()]
    named += [(f"buffer {n}", b) for n, b in model.named_buffers() if b.is_floating_point()]
    named = [(n, x) for n, x in named if x.is_floating_point() and x.numel()]
    if not named:
        return
    # one synchronisation for all of them
    finite = torch.stack(
        [torch.isfinite(x.detach()).all().to(named[0][1].device) for _, x in named]
    )
    if bool(finite.all()):
        return
    bad_names = []
    for (name, x), ok in zip(named, finite.tolist(), strict=True):
        if not ok:
            n_bad = int((~torch.isfinite(x.detach())).sum())
            first = _first_nonfinite(x)
            bad_names.append(
                f"{name} has {_describe(x.detach()[first])} ({n_bad} of {x.numel()} entries)"
            )
    raise DivergenceError(
        f"model {type(model).__name__}: {'; '.join(bad_names)}; a rollout needs finite "
        "parameters (reload a checkpoint written while training was finite)"
    )


def _check_finite_y0(model, y0: torch.Tensor, given: bool) -> None:
    bad = _first_nonfinite(y0)
    if bad is None:
        return
    b, s = bad
    source = "y0" if given else f"the initial state ({type(model).__name__}.initial_state)"
    raise DivergenceError(
        f"{source} has {_describe(y0[bad])} in trial {b}, state {_state_name(model, s)}; the "
        "initial state must be finite"
    )


def _check_finite_drive(model, dyn, t_ms: torch.Tensor) -> None:
    """The input drive the model computed from finite weights and stimulus can still overflow
    (huge weights); name it (models whose dynamics expose ``terms.drive``)."""
    drive = getattr(getattr(dyn, "terms", None), "drive", None)
    if not isinstance(drive, torch.Tensor):
        return
    bad = _first_nonfinite(drive)
    if bad is None:
        return
    k, b, p = bad
    raise DivergenceError(
        f"the input drive (weights x stimulus + background) of {_rate_name(model, drive, p)} "
        f"is {_describe(drive[bad])} at t = {float(t_ms[min(k, len(t_ms) - 1)]):.3f} ms, trial "
        f"{b}: the weights overflow {drive.dtype}; check the input and background weights"
    )


def _state_name(model, index: int) -> str:
    describe = getattr(model, "describe_state_index", None)
    return describe(index) if describe is not None else str(index)


def _rate_name(model, rates: torch.Tensor, index: int) -> str:
    """Name of entry ``index`` of a model's rates [..., N]: ``describe_rate_index``, its
    ``population_names``, or its state name where rates and states have the same width."""
    describe = getattr(model, "describe_rate_index", None)
    if describe is not None:
        return describe(index)
    names = getattr(model, "population_names", None)
    if names is not None and len(names) == rates.shape[-1]:
        return str(names[index])
    if getattr(model, "state_size", None) == rates.shape[-1]:
        return _state_name(model, index)
    return f"rate {index}"


# --------------------------------------------------------------------------- output checks
def check_states(states: torch.Tensor, t_ms: torch.Tensor, model, max_rate_hz: float) -> None:
    """Raise :class:`DivergenceError` at the first NaN/inf state or the first rate
    (``model.rates(states)``, for models that have rates) whose magnitude exceeds
    ``max_rate_hz``, whichever comes first in time; the message names the time, the trial and
    the state or population. Two reductions when all is well."""
    rates_of = getattr(model, "rates", None)
    rate_bad = None
    if rates_of is not None:
        with torch.no_grad():
            rates = rates_of(states.detach())
            # per-entry extremes over time and trials (reducing the leading dims of a strided
            # slice is twice as fast as a full reduction); NaN anywhere makes the comparison
            # False
            dims = tuple(range(rates.dim() - 1))
            peak = torch.maximum(rates.amax(dim=dims), -rates.amin(dim=dims)).max()
            if not bool(peak <= max_rate_hz):
                over = ~(rates.abs() <= max_rate_hz)
                rate_bad = tuple(int(i) for i in over.nonzero()[0])
    state_bad = _first_nonfinite(states)
    if state_bad is None and rate_bad is None:
        return
    if rate_bad is not None and (state_bad is None or rate_bad[0] < state_bad[0]):
        k, b, p = rate_bad
        value = float(rates[rate_bad])
        raise DivergenceError(
            f"rollout ran away: the rate of {_rate_name(model, rates, p)} in trial {b} is "
            f"{value:.4g} Hz at t = {float(t_ms[k]):.3f} ms, beyond solver.max_rate_hz = "
            f"{max_rate_hz:g} (no cortical population fires that fast). Check the weights and "
            "learning rate, or use a smaller step_ms or a stiffer-stable method; raise "
            "solver.max_rate_hz if such rates are intended, or pass "
            "SolverConfig(check_finite=False) to get the raw states."
        )
    check_finite(states, t_ms, model)


def check_finite(states: torch.Tensor, t_ms: torch.Tensor, model) -> None:
    """Raise :class:`DivergenceError` naming the first time and state entry that is NaN/inf."""
    # one reduction pass: any NaN/inf makes the sum non-finite (an overflow of the sum of finite
    # states only costs the full check); isfinite(states).all() took 0.5 s at batch 256
    bad = _first_nonfinite(states)
    if bad is None:
        return
    n_bad = int((~torch.isfinite(states.detach())).sum())
    k, b, s = bad
    value = float(states[k, b, s].detach())
    raise DivergenceError(
        f"rollout diverged: state {_state_name(model, s)} of trial {b} is {value} at t = "
        f"{float(t_ms[k]):.3f} ms (first of {n_bad} non-finite entries; the inputs, initial "
        "state and parameters were finite). Use a smaller step_ms or a stiffer-stable "
        "method, or pass SolverConfig(check_finite=False) to get the raw states."
    )
