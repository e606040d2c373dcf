"""The column model's fast schemes: exponential integrators of its equations (ColumnTerms).

Every state variable of the column model obeys a linear decay plus a forcing that depends on
the state only through the rates phi = f(v - a) (:class:`colenv.models.column.network.
ColumnTerms` holds the weights, drive, adaptation and constants of one rollout):

    dv/dt = -v / tau_m + N_v,   N_v = phi @ w_t + drive
    da/dt = -a / tau_a + kappa phi / tau_a
    dr/dt = -r / tau_s + phi / tau_s

Exponential time differencing (Cox & Matthews 2002, J Comput Phys 176:430) integrates each
decay exactly, so the 0.5 ms synaptic filter r no longer limits the step (dt/tau_s = 2 was
the predecessor's stability edge) and only the recurrent coupling through phi stays explicit:

    expeuler:  x' = E x + tau (1 - E) N(x_n)                       (order 1)
    exprk2:    x* = E x + tau (1 - E) N(x_n)                       (ETD2RK, order 2)
               x' = x* + tau^2 (E - 1 + h / tau) / h (N(x*) - N(x_n))
    rk4exp:    classical RK4 on (v, a); r filtered exactly against the quadratic through the
               stage rates at 0, h/2 and h (exponential quadrature; :func:`_rk4exp_step`)
    with E = exp(-h / tau) per variable.

The loop runs over time only; each step is a few batched ops on [B, P] tensors, and outputs
are collected in a list and stacked once. The input drive of grid interval k is constant
across its sub-steps, exactly as the piecewise-constant stimulus demands. The transfer
function comes from :mod:`colenv.models.column.transfer` (its one definition).

Speed: time goes to per-op overhead. rk4exp, the training default, has a hand-written
backward: the discrete adjoint of the scheme (:class:`_Rk4expAdjoint`; the same gradient as
autograd through the steps, to float rounding). Forward stores per stage only the rate phi and
its slope; backward runs the adjoint recursion (one [B, P] x [P, P] product per stage, like
forward) and forms the weight gradient of a chunk in one large product. Both run over chunks
of ``unroll`` grid intervals; with ``compile=True`` each chunk is one ``torch.compile`` graph
(C++ wrapper on CPU), cached per (kind, step, n_sub, constants, unroll, shapes, dtype, device)
so a training loop compiles once; if compilation fails the loop warns and runs eager.
Activation memory is two [B, P] tensors per stage (about a tenth of autograd's);
``checkpoint_every`` keeps only segment starts and recomputes each segment in backward, so it
no longer grows with trial length (only the returned states do).

On CPU in float32, rk4exp (ODE and SDE) runs by default on the native C kernel instead
(:mod:`colenv.models.column.native`: the same scheme and discrete adjoint with a
column-structured weight product and the trials in vector lanes; ``kernel="torch"`` keeps this
module's path, which serves GPUs, float64 and a kappa gradient).

SDE (additive noise sigma dW on v, ``terms.sigma``): every path splits each step into the
deterministic step above and then a kick on v, v += s xi with xi ~ N(0, 1) and
s = sigma sqrt(tau_m (1 - exp(-2 h / tau_m)) / 2), the standard deviation of the exact
Ornstein-Uhlenbeck increment over one step (= sigma sqrt(h) (1 - h / (2 tau_m) + O(h^2)); strong
order 1 for additive noise as with sigma sqrt(h), and the stationary variance of v of an
isolated population is noise_std^2 at any step instead of noise_std^2 (1 + h / tau_m + ...)).
The increments are drawn once per rollout from the given generator
(:func:`noise_increments`, [n_int, n_sub, B, P]) and are inputs of the scheme: the torch paths
and the native kernel consume the same tensor, so a seed reproduces a rollout exactly and the
gradient is pathwise (docs/numerics.md).

expeuler and exprk2 (and rk4exp with ``backward="autograd"``) run autograd through the steps
(the transfer function's closed-form gradient, :func:`colenv.models.column.transfer.
transfer_g`), one compiled graph per grid interval, ``checkpoint_every`` through
``torch.utils.checkpoint``.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from colenv.errors import ConfigError
from colenv.models.column.transfer import rate_function
from colenv.solve import ADJOINT_METHODS, FastOptions

if TYPE_CHECKING:
    from colenv.models.column.network import ColumnTerms

STAGES = {
    "expeuler": 1,
    "exprk2": 2,
    "rk4exp": 4,
    "ros2": 2,
    "exprb2": 1,
}  # drift evaluations per step
DEFAULT_UNROLL = 5  # grid intervals per compiled graph of the adjoint path (docs/profiling.md)


def _etd_coefficients(tau: float, h: float) -> tuple[float, float, float]:
    """(E, c1, c2) with E = exp(-h/tau), c1 = tau (1 - E), c2 = tau^2 (E - 1 + h/tau) / h."""
    x = h / tau
    e = math.exp(-x)
    c1 = -tau * math.expm1(-x)
    # (E - 1 + x) / x^2 loses precision for tiny x (tau_a = 10 s): use its series there
    if x < 1e-4:
        c2 = h * (0.5 - x / 6.0 + x * x / 24.0)
    else:
        c2 = tau * tau * (math.expm1(-x) + x) / h
    return e, c1, c2


@functools.lru_cache(maxsize=64)
def _filter_weights(tau: float, h: float) -> tuple[float, float, float]:
    """Weights of int_0^h exp(-(h - s)/tau)/tau q(s) ds for the quadratic q through
    (0, q0), (h/2, qm), (h, q1): returns (w0, wm / 2, w1) (wm halved: applied to p2 + p3).
    Computed with 32-point Gauss-Legendre in float64 (the integrand is smooth)."""
    import numpy as np

    x, w = np.polynomial.legendre.leggauss(32)
    s = 0.5 * h * (x + 1.0)
    kern = np.exp(-(h - s) / tau) / tau * 0.5 * h * w
    z = s / h
    l0 = (2 * z - 1) * (z - 1)
    lm = 4 * z * (1 - z)
    l1 = z * (2 * z - 1)
    return float(kern @ l0), float(kern @ lm) / 2.0, float(kern @ l1)


# (method, n_sub, h, constants, compile, shape, dtype, device) -> interval function
_INTERVAL_CACHE: dict[tuple, Callable] = {}

IntervalFn = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]


def _rk4exp_step(h: float, c: dict) -> Callable:
    """The rk4exp scheme, defined once: ``step(v, a, r, drive, w_t, ka, phi) -> (v, a, r)``.

    One step of h seconds from v, a, r [B, P] under drive [B, P], with w_t [P source, P
    target], ``ka`` = kappa / tau_a [P] and ``phi(x)`` the rate of x = v - a (any form of
    :func:`colenv.models.column.transfer.rate_function`; the adjoint's also records what it
    stores).
    Classical RK4 on (v, a); r filtered exactly against the quadratic through the stage rates
    at 0, h/2 and h (exponential quadrature, :func:`_filter_weights`). Both the autograd
    interval (:func:`_make_interval`) and the discrete adjoint's chunks
    (:func:`_make_rk4exp_chunk`, whose backward :func:`_make_rk4exp_chunk_backward` reverses
    these stages) step with it.
    """
    inv_tau_m, inv_tau_a = 1.0 / c["tau_m"], 1.0 / c["tau_a"]
    e_r = math.exp(-h / c["tau_s"])
    w0, wm, w1 = _filter_weights(c["tau_s"], h)
    h2, h6 = 0.5 * h, h / 6.0

    def deriv(v, a, drive, w_t, ka, phi):
        p = phi(v - a)
        # mm minus (not plus: inductor turns mm + x back into addmm, which first copies x into
        # its output); the subtraction fuses into the next kernel
        dv = torch.mm(p, w_t) - (v * inv_tau_m - drive)
        return p, dv, ka * p - a * inv_tau_a

    def step(v, a, r, drive, w_t, ka, phi):
        p1, dv1, da1 = deriv(v, a, drive, w_t, ka, phi)
        p2, dv2, da2 = deriv(v + h2 * dv1, a + h2 * da1, drive, w_t, ka, phi)
        p3, dv3, da3 = deriv(v + h2 * dv2, a + h2 * da2, drive, w_t, ka, phi)
        p4, dv4, da4 = deriv(v + h * dv3, a + h * da3, drive, w_t, ka, phi)
        v = v + h6 * (dv1 + 2.0 * (dv2 + dv3) + dv4)
        a = a + h6 * (da1 + 2.0 * (da2 + da3) + da4)
        r = e_r * r + w0 * p1 + wm * (p2 + p3) + w1 * p4
        return v, a, r

    return step


def _make_interval(method: str, n_sub: int, h: float, c: dict) -> IntervalFn:
    """One grid interval of ``method``: ``fn(v, a, r, drive, w_t, kappa, dw) -> (v, a, r, y)``.

    v, a, r, drive: [B, P]; w_t: [P, P] (source x target); kappa: [P]; y = cat(v, a, r);
    dw: None, or [n_sub, B, P] noise increments added to v after each deterministic step.
    The ``n_sub`` steps are unrolled (one graph per interval under torch.compile); the rates
    go through the transfer function's autograd form (closed-form gradient).
    """
    inv_tau_a, inv_tau_s = 1.0 / c["tau_a"], 1.0 / c["tau_s"]
    e_v, c1_v, c2_v = _etd_coefficients(c["tau_m"], h)
    e_a, c1_a, c2_a = _etd_coefficients(c["tau_a"], h)
    e_r, c1_r, c2_r = _etd_coefficients(c["tau_s"], h)
    phi = rate_function(c, "autograd")

    def rates(v, a):
        return phi(v - a)

    if method == "expeuler":
        a_pred, r_coef = c1_a * inv_tau_a, c1_r * inv_tau_s

        def interval(v, a, r, drive, w_t, kappa, dw=None):
            ka = kappa * a_pred
            for i in range(n_sub):
                p = rates(v, a)
                v = e_v * v + c1_v * torch.addmm(drive, p, w_t)
                a = e_a * a + ka * p
                r = e_r * r + r_coef * p
                if dw is not None:
                    v = v + dw[i]
            return v, a, r, torch.cat([v, a, r], dim=-1)

    elif method == "exprk2":
        # x' = E x + (c1 - c2) N(x_n) + c2 N(x*): one combined update per variable
        v_n, v_s = c1_v - c2_v, c2_v
        a_n, a_s, a_pred = (c1_a - c2_a) * inv_tau_a, c2_a * inv_tau_a, c1_a * inv_tau_a
        r_n, r_s = (c1_r - c2_r) * inv_tau_s, c2_r * inv_tau_s

        def interval(v, a, r, drive, w_t, kappa, dw=None):
            k_pred, k_n, k_s = kappa * a_pred, kappa * a_n, kappa * a_s
            for i in range(n_sub):
                p = rates(v, a)
                n_v = torch.addmm(drive, p, w_t)
                v1 = e_v * v + c1_v * n_v
                a1 = e_a * a + k_pred * p
                p1 = rates(v1, a1)
                n_v1 = torch.addmm(drive, p1, w_t)
                v = e_v * v + v_n * n_v + v_s * n_v1
                a = e_a * a + k_n * p + k_s * p1
                r = e_r * r + r_n * p + r_s * p1
                if dw is not None:
                    v = v + dw[i]
            return v, a, r, torch.cat([v, a, r], dim=-1)

    elif method == "rk4exp":
        step = _rk4exp_step(h, c)

        def interval(v, a, r, drive, w_t, kappa, dw=None):
            ka = kappa * inv_tau_a
            for i in range(n_sub):
                v, a, r = step(v, a, r, drive, w_t, ka, phi)
                if dw is not None:
                    v = v + dw[i]
            return v, a, r, torch.cat([v, a, r], dim=-1)

    else:
        raise ConfigError(f"unknown fast method {method!r}; allowed: {', '.join(STAGES)}")
    return interval


def noise_scale(sigma: float, tau_m: float, h: float) -> float:
    """Standard deviation of the noise kick on v after one step of h seconds: the exact
    Ornstein-Uhlenbeck increment of dv = -v / tau_m dt + sigma dW over h,
    sigma sqrt(tau_m (1 - exp(-2 h / tau_m)) / 2)."""
    return sigma * math.sqrt(-0.5 * tau_m * math.expm1(-2.0 * h / tau_m))


def noise_increments(
    terms: ColumnTerms,
    n_int: int,
    n_sub: int,
    h: float,
    like: torch.Tensor,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """The SDE's kicks on v of one rollout, [n_int, n_sub, B, P] (dtype and device of ``like``
    [B, P]): ``noise_scale`` times standard normals drawn in one call from ``generator``, so
    every path (torch autograd, torch adjoint, native) sees the same increments for a seed.
    Memory: 4 n_int n_sub B P bytes in float32, two thirds of the returned states at n_sub = 2
    (13 MB for the parity network at batch 16 over 1 s at 0.5 ms)."""
    scale = noise_scale(terms.sigma, terms.constants["tau_m"], h)
    xi = torch.randn(
        (n_int, n_sub, *like.shape), generator=generator, dtype=like.dtype, device=like.device
    )
    return xi.mul_(scale)


def _fresh_code(fn: Callable) -> Callable:
    """``fn`` with its own code object: dynamo keeps its compiled graphs (and counts its
    recompile limit) per code object, so every cached configuration gets its own budget."""
    import types

    return types.FunctionType(
        fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )


class _Compiled:
    """A torch.compile'd interval that falls back to eager (with a warning) if compiling fails."""

    def __init__(self, eager: IntervalFn, options: dict | None = None) -> None:
        self.eager = eager
        self.fn: IntervalFn = torch.compile(
            _fresh_code(eager), dynamic=False, fullgraph=True, options=options
        )
        self.failed = False
        self.compiled_once = False

    def __call__(self, *args):
        if self.compiled_once:
            return self.fn(*args)
        if self.failed:
            return self.eager(*args)
        try:  # the first call traces and compiles; only its failures fall back to eager
            out = self.fn(*args)
        except Exception as err:
            warnings.warn(
                f"torch.compile of the fast path failed ({type(err).__name__}: {err}); "
                "running eager",
                RuntimeWarning,
                stacklevel=3,
            )
            self.failed = True
            return self.eager(*args)
        self.compiled_once = True
        return out


def _cached(key: tuple, like: torch.Tensor, compile: bool, make: Callable, options=None):
    """The step function ``make()`` for ``key`` and the shape, dtype and device of ``like``,
    built (and wrapped in :class:`_Compiled` if ``compile``) once per process."""
    key = (*key, compile, tuple(like.shape), like.dtype, str(like.device))
    fn = _INTERVAL_CACHE.get(key)
    if fn is None:
        fn = make()
        if compile:
            fn = _Compiled(fn, options)
        _INTERVAL_CACHE[key] = fn
    return fn


def interval_function(
    method: str, n_sub: int, h: float, c: dict, *, compile: bool, like: torch.Tensor
) -> IntervalFn:
    """The (cached) interval function for this configuration; ``like`` is a [B, P] state."""
    key = (method, n_sub, float(h), tuple(sorted(c.items())))
    return _cached(key, like, compile, lambda: _make_interval(method, n_sub, h, c))


# ----------------------------------------------------------------------------- discrete adjoint
# rk4exp's backward written out by hand (the discrete adjoint of the scheme: the same gradient
# as autograd through the steps, to float rounding) and run over chunks of ``unroll`` grid
# intervals, each chunk one compiled graph. Forward stores per stage only phi and its slope
# dphi/d(v - a); backward runs the adjoint recursion from them (one [B, P] x [P, P] product per
# stage, as forward) and forms the weight gradient of a whole chunk in one matrix product.
# Per-interval tensors travel as lists (one graph input or output each), so the unrolled
# intervals of a chunk share their generated kernels instead of each baking in its offsets.


def _make_rk4exp_chunk(n_sub: int, h: float, c: dict, unroll: int, *, store: bool) -> Callable:
    """Forward over ``unroll`` grid intervals of rk4exp (:func:`_rk4exp_step`).

    ``chunk(v, a, r, drives, w_t, kappa, dws) -> (v, a, r, ys[, ps, ss])``: drives a list of
    ``unroll`` [B, P]; w_t [P source, P target] (contiguous); dws None or a list of
    ``unroll * n_sub`` noise kicks [B, P] added to v after each step; ys [unroll, B, 3P] the
    states at the interval ends. With ``store``: ps, ss [unroll * n_sub * 4, B, P], the rates
    phi and their slopes dphi/d(v - a) of every stage, in step order.
    """
    inv_tau_a = 1.0 / c["tau_a"]
    step = _rk4exp_step(h, c)
    rate = rate_function(c, "value")
    rate_slope = rate_function(c, "slope")

    def chunk(v, a, r, drives, w_t, kappa, dws):
        ka = kappa * inv_tau_a
        ys, ps, ss = [], [], []
        phi = rate
        if store:

            def phi(x):  # the rate, recording it and its slope for the adjoint
                p, s = rate_slope(x)
                ps.append(p)
                ss.append(s)
                return p

        for k in range(unroll):
            drive = drives[k]
            for i in range(n_sub):
                v, a, r = step(v, a, r, drive, w_t, ka, phi)
                if dws is not None:
                    v = v + dws[k * n_sub + i]
            ys.append(torch.cat([v, a, r], dim=-1))
        if store:
            return v, a, r, torch.stack(ys), torch.stack(ps), torch.stack(ss)
        return v, a, r, torch.stack(ys)

    return chunk


def _make_rk4exp_chunk_backward(n_sub: int, h: float, c: dict, unroll: int) -> Callable:
    """Adjoint of :func:`_make_rk4exp_chunk` over the same ``unroll`` intervals.

    ``back(lv, la, lr, g_wt, g_ys, ps, ss, w, kappa) -> (lv, la, lr, g_wt, g_drives)``: lv,
    la, lr [B, P] the adjoint of the state after the chunk; g_ys a list of ``unroll`` [B, 3P]
    loss gradients of the chunk's outputs; ps [unroll * n_sub * 4, B, P] from the forward and
    ss the same slopes as a list of ``unroll`` [n_sub * 4, B, P] (one graph input per
    interval: the intervals then share kernels); w [P target, P source] (contiguous); g_wt
    [P, P] the weight gradient so far. Returns the adjoint before the chunk, g_wt plus this
    chunk's part and g_drives [unroll, B, P].

    Per step, reverse of RK4 on (v, a) with stages x_i = x + c_i h k_{i-1} and the filter
    r' = e_r r + w0 p1 + wm (p2 + p3) + w1 p4; with s_i = dphi_i / du_i:
        g_dv_i = b_i lv + c_{i+1} h g_v_{i+1}          (b = h/6 [1, 2, 2, 1]; same for a)
        g_p_i  = g_dv_i W + kappa/tau_a g_da_i + w_r,i lr
        g_v_i  = s_i g_p_i - g_dv_i / tau_m,   g_a_i = -s_i g_p_i - g_da_i / tau_a
        lv += sum_i g_v_i,  la += sum_i g_a_i,  lr *= e_r,  g_Wt += sum_i p_i^T g_dv_i.
    """
    inv_tau_m, inv_tau_a = 1.0 / c["tau_m"], 1.0 / c["tau_a"]
    e_r = math.exp(-h / c["tau_s"])
    w0, wm, w1 = _filter_weights(c["tau_s"], h)
    h2, h6 = 0.5 * h, h / 6.0
    h3 = 2.0 * h6

    def stage(g_dv, g_da, g_p_r, s, w, ka):
        g_p = torch.mm(g_dv, w) - (-g_p_r - ka * g_da)  # mm minus: see the forward
        g_u = s * g_p
        return g_u - g_dv * inv_tau_m, -g_u - g_da * inv_tau_a

    def back(lv, la, lr, g_wt, g_ys, ps, ss, w, kappa):
        P = lv.shape[-1]
        ka = kappa * inv_tau_a
        g_drives: list = [None] * unroll
        g_dvs: list = [None] * (unroll * n_sub * 4)
        for k in range(unroll - 1, -1, -1):
            g = g_ys[k]
            lv = lv + g[:, :P]
            la = la + g[:, P : 2 * P]
            lr = lr + g[:, 2 * P :]
            g_drive = None
            s_k = ss[k]
            for i in range(n_sub - 1, -1, -1):
                j = (k * n_sub + i) * 4
                lr_m = wm * lr
                g_dv4, g_da4 = h6 * lv, h6 * la
                g_v4, g_a4 = stage(g_dv4, g_da4, w1 * lr, s_k[4 * i + 3], w, ka)
                g_dv3, g_da3 = h3 * lv + h * g_v4, h3 * la + h * g_a4
                g_v3, g_a3 = stage(g_dv3, g_da3, lr_m, s_k[4 * i + 2], w, ka)
                g_dv2, g_da2 = h3 * lv + h2 * g_v3, h3 * la + h2 * g_a3
                g_v2, g_a2 = stage(g_dv2, g_da2, lr_m, s_k[4 * i + 1], w, ka)
                g_dv1, g_da1 = h6 * lv + h2 * g_v2, h6 * la + h2 * g_a2
                g_v1, g_a1 = stage(g_dv1, g_da1, w0 * lr, s_k[4 * i], w, ka)
                lv = lv + g_v1 + g_v2 + g_v3 + g_v4
                la = la + g_a1 + g_a2 + g_a3 + g_a4
                lr = e_r * lr
                g_dvs[j : j + 4] = [g_dv1, g_dv2, g_dv3, g_dv4]
                g_step = g_dv1 + g_dv2 + g_dv3 + g_dv4
                g_drive = g_step if g_drive is None else g_drive + g_step
            g_drives[k] = g_drive
        g_wt = torch.addmm(g_wt, ps.reshape(-1, P).t(), torch.cat(g_dvs))
        return lv, la, lr, g_wt, torch.stack(g_drives)

    return back


def chunk_function(
    kind: str, n_sub: int, h: float, c: dict, unroll: int, *, compile: bool, like: torch.Tensor
) -> Callable:
    """The (cached) rk4exp chunk function: kind "forward", "store" or "backward"."""

    def make():
        if kind == "backward":
            return _make_rk4exp_chunk_backward(n_sub, h, c, unroll)
        return _make_rk4exp_chunk(n_sub, h, c, unroll, store=kind == "store")

    key = ("chunk", kind, n_sub, float(h), tuple(sorted(c.items())), unroll)
    # C++ wrapper on CPU: the graph's ~100 kernel and matmul calls per chunk are made from C++
    # instead of Python (about 30 % of the rollout time when measured)
    options = {"cpp_wrapper": True} if like.device.type == "cpu" else None
    return _cached(key, like, compile, make, options)


class _Plan:
    """What one chunked rk4exp rollout needs besides its tensors."""

    def __init__(self, terms, n_points, n_sub, h, unroll, compile, checkpoint_every, dws, like):
        self.P = terms.n_pop
        self.n_sub = n_sub
        self.n_int = n_points - 1
        self.unroll = unroll
        self.n_chunks = -(-self.n_int // unroll)
        # checkpoint segments: whole chunks, at least checkpoint_every intervals each
        self.seg = -(-checkpoint_every // unroll) if checkpoint_every else 0
        self.dws = dws
        args = (n_sub, h, terms.constants, unroll)
        self.fn = lambda kind: chunk_function(kind, *args, compile=compile, like=like)

    def split(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(v, a, r) of y [B, 3P], contiguous like the chunks' outputs (one compiled graph)."""
        P = self.P
        return y[:, :P].contiguous(), y[:, P : 2 * P].contiguous(), y[:, 2 * P :].contiguous()

    def drives(self, drive: torch.Tensor) -> list[torch.Tensor]:
        """drive[k] for the real intervals, then the last one repeated to whole chunks."""
        rows = list(drive[: self.n_int].contiguous().unbind(0))
        return rows + rows[-1:] * (self.n_chunks * self.unroll - self.n_int)

    def per_interval(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[unroll * n_sub * 4, B, P] -> a list of ``unroll`` [n_sub * 4, B, P] views."""
        return list(x.view(self.unroll, -1, *x.shape[1:]).unbind(0))

    def noise(self, chunk: int):
        if self.dws is None:
            return None
        n = self.unroll * self.n_sub
        return self.dws[chunk * n : (chunk + 1) * n]

    def run(self, kind, v, a, r, drives, w_t, kappa, chunks, stores=None, states=None):
        """Run ``chunks`` (a range) forward from (v, a, r). Appends each chunk's (ps, ss) to
        ``stores`` (kind "store") and writes its states into ``states`` [n_int + 1, B, 3P]
        (rows 1 + chunk intervals; a padded chunk's extra rows are dropped)."""
        fn = self.fn(kind)
        K = self.unroll
        for ci in chunks:
            res = fn(v, a, r, drives[ci * K : (ci + 1) * K], w_t, kappa, self.noise(ci))
            v, a, r = res[:3]
            if states is not None:
                n = min(K, self.n_int - ci * K)
                states[1 + ci * K : 1 + ci * K + n] = res[3][:n]
            if stores is not None:
                stores.append((res[4], self.per_interval(res[5])))
        return v, a, r

    def new_states(self, y0: torch.Tensor) -> torch.Tensor:
        """The output [n_int + 1, B, 3P] with y0 in row 0 (filled chunk by chunk: no final
        concatenation, which at batch 256 cost as much as a fifth of the rollout)."""
        states = y0.new_empty(self.n_int + 1, *y0.shape)
        states[0] = y0
        return states


class _Rk4expAdjoint(torch.autograd.Function):
    """rk4exp rollout with the hand-written discrete adjoint as its backward."""

    @staticmethod
    def forward(ctx, y0, drive, w_t, kappa, plan: _Plan):
        y0d, wt = y0.detach(), w_t.detach().contiguous()
        v, a, r = plan.split(y0d)
        drives = plan.drives(drive.detach())
        states = plan.new_states(y0d)
        if plan.seg:  # keep only the states at segment starts; recompute in backward
            starts = []
            for c0 in range(0, plan.n_chunks, plan.seg):
                starts.append((v, a, r))
                chunks = range(c0, min(c0 + plan.seg, plan.n_chunks))
                v, a, r = plan.run("forward", v, a, r, drives, wt, kappa, chunks, states=states)
            ctx.starts = starts
            ctx.stores = None
        else:
            stores: list = []
            chunks = range(plan.n_chunks)
            plan.run("store", v, a, r, drives, wt, kappa, chunks, stores=stores, states=states)
            ctx.stores = stores
        ctx.plan, ctx.drives = plan, drives
        ctx.save_for_backward(wt, kappa)
        ctx.drive_shape = drive.shape
        return states

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_states):
        plan = ctx.plan
        wt, kappa = ctx.saved_tensors
        P, K, n_int = plan.P, plan.unroll, plan.n_int
        w = wt.t().contiguous()
        g_states = g_states.contiguous()
        zeros = g_states.new_zeros(g_states.shape[1:])
        g_rows = list(g_states.unbind(0)) + [zeros] * (plan.n_chunks * K - n_int)
        lv = g_states.new_zeros(g_states.shape[1], P)
        la, lr = torch.zeros_like(lv), torch.zeros_like(lv)
        g_wt = torch.zeros_like(wt)
        g_drives: list = [None] * plan.n_chunks
        back = plan.fn("backward")
        stores = ctx.stores
        seg_stores: dict = {}
        for ci in range(plan.n_chunks - 1, -1, -1):
            if stores is not None:
                ps, ss = stores[ci]
            else:  # recompute the segment holding this chunk, with stores
                c0 = (ci // plan.seg) * plan.seg
                if c0 not in seg_stores:
                    seg_stores.clear()
                    seg_stores[c0] = []
                    chunks = range(c0, min(c0 + plan.seg, plan.n_chunks))
                    start = ctx.starts[c0 // plan.seg]
                    plan.run("store", *start, ctx.drives, wt, kappa, chunks, seg_stores[c0])
                ps, ss = seg_stores[c0][ci - c0]
            lv, la, lr, g_wt, g_drives[ci] = back(
                lv, la, lr, g_wt, g_rows[ci * K + 1 : (ci + 1) * K + 1], ps, ss, w, kappa
            )
        g_y0 = g_drive = None
        if ctx.needs_input_grad[0]:
            g_y0 = g_states[0] + torch.cat([lv, la, lr], dim=-1)
        if ctx.needs_input_grad[1]:
            rest = g_states.new_zeros(ctx.drive_shape[0] - n_int, *ctx.drive_shape[1:])
            g_drive = torch.cat([torch.cat(g_drives)[:n_int], rest])
        g_w = g_wt if ctx.needs_input_grad[2] else None
        return g_y0, g_drive, g_w, None, None


def _chunk(fn, v, a, r, drives, w_t, kappa):
    ys = []
    for drive in drives:
        v, a, r, y = fn(v, a, r, drive, w_t, kappa)
        ys.append(y)
    return v, a, r, torch.stack(ys)


def fast_rollout(
    terms: ColumnTerms,
    y0: torch.Tensor,
    n_points: int,
    n_sub: int,
    h: float,
    method: str,
    options: FastOptions | None = None,
    *,
    noise: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Integrate the column equations ``terms`` (:class:`ColumnTerms`) with a fast scheme.

    Called through :meth:`colenv.models.Dynamics.fast_rollout` (which also counts the
    evaluations); the options are :class:`colenv.solve.FastOptions`.

    Args:
        terms: the weights, drive [T, B, P], adaptation, constants and noise of one rollout.
        y0: [B, 3P] initial state ([B, 4P] with gating).
        n_points: number of output grid points T.
        n_sub: steps per grid interval.
        h: step in seconds.
        method: "expeuler", "exprk2" or "rk4exp".
        options: ``compile`` runs the steps as cached ``torch.compile`` graphs;
            ``checkpoint_every`` > 0 recomputes chunks of this many grid intervals in backward
            (activation memory flat in trial length, about one extra forward of cost; with the
            autograd backward use ``loss.backward()``, not ``torch.autograd.grad``);
            ``backward`` "discrete_adjoint" (rk4exp only: the hand-written adjoint,
            :class:`_Rk4expAdjoint`, chunks of ``unroll`` grid intervals per graph),
            "autograd" (through the steps, one graph per grid interval) or "auto" (the adjoint
            for rk4exp unless ``terms.kappa`` requires grad, else autograd); ``unroll`` grid
            intervals per chunk of the adjoint path (0: 5 with ``compile``, else 1; a trial
            whose interval count is not a multiple runs its last chunk on repeated drive and
            drops those states); ``kernel`` "auto": rk4exp (with or without noise) runs on the
            native C kernel (:mod:`colenv.models.column.native`, forward and discrete adjoint;
            ``checkpoint_every`` sets its backward segments) when the tensors are float32 on
            CPU, kappa needs no gradient, ``backward`` is not "autograd" and the kernel builds;
            "torch": never; "native": always, else ConfigError.
        noise: integrate the SDE (diagonal additive noise ``terms.sigma`` on v) by splitting:
            each deterministic step is followed by the kick s xi on v, s the exact OU
            increment's std over the step (:func:`noise_scale`, ~ sigma sqrt(h); strong order
            1 for additive noise; the deterministic step keeps its stability region, which is
            what removes Euler-Maruyama's rate artefacts). ``generator`` draws xi, all of
            the rollout's at once (:func:`noise_increments`); sigma = 0 adds nothing.

    With the gating synapse (``terms.w_slow_t``, state [v, a, r, S]) rk4exp is classical RK4
    on (v, a, S), r as without it, on the native kernel where ``kernel`` and the tensors allow
    it (as above), else on the torch path (:func:`_gated_rollout`: its own discrete adjoint, or
    autograd as the options say); noise on v only. expeuler and exprk2 raise ConfigError
    (ros2 integrates it: :mod:`colenv.models.column.rosenbrock`).

    Returns:
        states [T, B, 3P] on the grid ([T, B, 4P] with gating).
    """
    if method not in STAGES:
        raise ConfigError(f"unknown fast method {method!r}; allowed: {', '.join(STAGES)}")
    options = FastOptions() if options is None else options
    options.check(method, noise)
    P = terms.n_pop
    w_t, kappa, drive = terms.w_t, terms.kappa, terms.drive
    n_int = n_points - 1
    backward, checkpoint_every = options.backward, options.checkpoint_every
    dws = None
    if noise and terms.sigma != 0.0:
        dws = noise_increments(terms, n_int, n_sub, h, y0[:, :P], generator)
    if terms.gated and y0.shape[-1] != 4 * P:
        raise ValueError(f"a gated network's state is [B, 4P = {4 * P}], got {tuple(y0.shape)}")
    if method == "ros2":  # the linearly implicit scheme (colenv.models.column.rosenbrock)
        from colenv.models.column import rosenbrock

        return rosenbrock.ros2_rollout(terms, y0, n_points, n_sub, h, options, noise=dws)
    if method == "exprb2":  # exponential Rosenbrock-Euler (colenv.models.column.exprb)
        from colenv.models.column import exprb

        # its discrete adjoint is the native kernel's: asking for it asks for the kernel
        kernel = "native" if backward == "discrete_adjoint" else options.kernel
        native = kernel != "torch" and _use_native(kernel, method, backward, y0, terms)
        return exprb.exprb2_rollout(
            terms, y0, n_points, n_sub, h, options, noise=dws, native=native
        )
    if options.kernel != "torch" and _use_native(options.kernel, method, backward, y0, terms):
        from colenv.models.column import native

        return native.rk4exp_rollout(
            y0.contiguous(),  # the kernel reads y0, drive and kappa in memory order
            drive.contiguous(),
            w_t,
            kappa.contiguous(),
            terms.constants,
            n_points,
            n_sub,
            h,
            _filter_weights(terms.constants["tau_s"], h),
            segment=checkpoint_every or native.SEGMENT,
            grad_pattern=terms.w_pattern_t,
            noise=dws,
            **_native_gating(terms),
        )
    if terms.gated:
        return _gated_rollout(terms, y0, n_points, n_sub, h, method, options, dws)
    adjoint = method in ADJOINT_METHODS and backward != "autograd"
    if adjoint and kappa.requires_grad:
        if backward == "discrete_adjoint":
            raise ConfigError(
                "solver.fast.backward = 'discrete_adjoint' has no gradient for kappa (kappa "
                "requires grad); use 'auto' or 'autograd'"
            )
        adjoint = False
    if adjoint:
        return _adjoint_rollout(terms, y0, n_points, n_sub, h, options, dws)
    v, a, r = y0[:, :P], y0[:, P : 2 * P], y0[:, 2 * P :]
    fn = interval_function(method, n_sub, h, terms.constants, compile=options.compile, like=v)
    if noise:
        if checkpoint_every:  # kappa's gradient took rk4exp off the adjoint
            raise ConfigError(
                "solver.fast.checkpoint_every with noise needs the discrete adjoint (rk4exp "
                "without a kappa gradient)"
            )
        out = [y0]
        for k in range(n_int):
            v, a, r, y = fn(v, a, r, drive[k], w_t, kappa, None if dws is None else dws[k])
            out.append(y)
        return torch.stack(out)
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (y0, w_t, kappa, drive))
    if checkpoint_every and needs_grad:
        from torch.utils.checkpoint import checkpoint

        chunks = [y0[None]]
        for k0 in range(0, n_int, checkpoint_every):
            k1 = min(k0 + checkpoint_every, n_int)
            # reentrant: the forward runs without autograd and the recompute with it, both
            # through the (compiled) interval function; non-reentrant checkpointing recomputes
            # with dynamo disabled. Use loss.backward() (torch.autograd.grad is unsupported).
            v, a, r, ys = checkpoint(
                _chunk, fn, v, a, r, drive[k0:k1], w_t, kappa, use_reentrant=True
            )
            chunks.append(ys)
        return torch.cat(chunks)
    out = [y0]
    for k in range(n_int):
        v, a, r, y = fn(v, a, r, drive[k], w_t, kappa)
        out.append(y)
    return torch.stack(out)


def fast_steps(
    terms: ColumnTerms, n_points: int, n_sub: int, h: float, method: str, options=None
) -> int:
    """Steps a fast rollout takes over ``n_points`` grid points: ``n_sub`` per interval, and
    for exprb2 ``onset_refine`` times as many in the intervals of its onset windows
    (:func:`colenv.models.column.exprb.refined_intervals`)."""
    steps = (n_points - 1) * n_sub
    if method == "exprb2" and n_points > 1:
        from colenv.models.column import exprb
        from colenv.solve import FastOptions

        options = FastOptions() if options is None else options
        if options.onset_refine > 1:
            fine = int(exprb.refined_intervals(terms.drive, n_points, n_sub, h, options).sum())
            steps += fine * n_sub * (options.onset_refine - 1)
    return steps


def _native_gating(terms: ColumnTerms) -> dict:
    """The gating synapse's arguments of the native kernel (none without gating)."""
    if not terms.gated:
        return {}
    return {
        "w_slow_t": terms.w_slow_t,
        "gate_tau": terms.gate_tau,
        "gate_gamma": terms.gate_gamma,
        "slow_grad_pattern": terms.w_slow_pattern_t,
    }


def _use_native(kernel, method, backward, y0, terms: ColumnTerms) -> bool:
    """Whether this rollout runs on the native kernel; with kernel="native", an error saying
    why where it cannot."""
    from colenv.models.column import native

    w_t, drive, kappa, w_slow_t = terms.w_t, terms.drive, terms.kappa, terms.w_slow_t
    inputs = (y0, w_t, drive, kappa) + (() if w_slow_t is None else (w_slow_t,))
    grad = torch.is_grad_enabled() and any(x.requires_grad for x in inputs)
    why = None
    if method not in ("rk4exp", "exprb2"):
        why = f"it integrates rk4exp and exprb2 (method={method!r})"
    elif grad and backward == "autograd":
        why = "its gradient is the discrete adjoint (backward='autograd' was asked for)"
    elif not native.supports(y0, w_t, drive, kappa, w_slow_t, method):
        why = (
            "it takes float32 CPU tensors"
            + (" and, for rk4exp, no gradient for kappa" if method == "rk4exp" else "")
            + f" (got {y0.dtype} on {y0.device}, kappa requires grad: {kappa.requires_grad})"
        )
    elif not native.available():
        why = f"it is unavailable here ({native.unavailable_reason()})"
    if why is None:
        return True
    if kernel == "native":
        raise ConfigError(f"solver.fast.kernel = 'native' cannot run this rollout: {why}")
    return False


def _adjoint_rollout(terms, y0, n_points, n_sub, h, options: FastOptions, noise):
    """rk4exp in chunks of ``unroll`` intervals; :class:`_Rk4expAdjoint` when a gradient is
    needed. ``noise``: None or the increments [n_int, n_sub, B, P] (:func:`noise_increments`)."""
    P = terms.n_pop
    unroll = options.unroll or (DEFAULT_UNROLL if options.compile else 1)
    w_t, kappa, drive = terms.w_t, terms.kappa, terms.drive
    like = y0[:, :P]
    dws = None
    if noise is not None:  # one [B, P] kick per step, in step order
        dws = list(noise.flatten(0, 1).unbind(0))
    plan = _Plan(
        terms, n_points, n_sub, h, unroll, options.compile, options.checkpoint_every, dws, like
    )
    if dws is not None:
        pad = plan.n_chunks * unroll - plan.n_int
        dws.extend([torch.zeros_like(like)] * (pad * n_sub))
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (y0, w_t, drive))
    if needs_grad:
        return _Rk4expAdjoint.apply(y0, drive, w_t, kappa, plan)
    with torch.no_grad():
        states = plan.new_states(y0)
        chunks = range(plan.n_chunks)
        drives, wt = plan.drives(drive), w_t.contiguous()
        plan.run("forward", *plan.split(y0), drives, wt, kappa, chunks, states=states)
    return states


# ----------------------------------------------------------------------------- gating synapse
# With the slow gating synapse (ColumnTerms.w_slow_t, docs/science.md) the state is (v, a, r,
# S) and rk4exp is classical RK4 on (v, a, S) (the same four stage rates drive all three), r
# filtered exactly against the stage rates as without it. These functions mirror the ungated
# ones above (which stay as they are, so a network without gating runs the same operations).


def _gate_key(terms: ColumnTerms) -> tuple[float, float]:
    return (float(terms.gate_tau), float(terms.gate_gamma))


def _rk4exp_step_gated(h: float, c: dict, gate: tuple[float, float]) -> Callable:
    """:func:`_rk4exp_step` with the gating variable: ``step(v, a, r, s, drive, w_t, ws_t, ka,
    phi, qs=None) -> (v, a, r, s)``; ``ws_t`` [P source, P target] the gated weights, ``gate``
    (tau_S in s, gamma); ``qs``, a list, records the S of every stage (for the adjoint)."""
    inv_tau_m, inv_tau_a = 1.0 / c["tau_m"], 1.0 / c["tau_a"]
    tau_g, gamma = gate
    inv_tau_g, inv_g = 1.0 / tau_g, 1.0 / (gamma * tau_g)
    e_r = math.exp(-h / c["tau_s"])
    w0, wm, w1 = _filter_weights(c["tau_s"], h)
    h2, h6 = 0.5 * h, h / 6.0

    def deriv(v, a, s, drive, w_t, ws_t, ka, phi, qs):
        if qs is not None:
            qs.append(s)
        p = phi(v - a)
        dv = torch.mm(p, w_t) + torch.mm(s * inv_g, ws_t) - (v * inv_tau_m - drive)
        ds = gamma * p - s * (inv_tau_g + gamma * p)
        return p, dv, ka * p - a * inv_tau_a, ds

    def step(v, a, r, s, drive, w_t, ws_t, ka, phi, qs=None):
        args = (drive, w_t, ws_t, ka, phi, qs)
        p1, dv1, da1, ds1 = deriv(v, a, s, *args)
        p2, dv2, da2, ds2 = deriv(v + h2 * dv1, a + h2 * da1, s + h2 * ds1, *args)
        p3, dv3, da3, ds3 = deriv(v + h2 * dv2, a + h2 * da2, s + h2 * ds2, *args)
        p4, dv4, da4, ds4 = deriv(v + h * dv3, a + h * da3, s + h * ds3, *args)
        v = v + h6 * (dv1 + 2.0 * (dv2 + dv3) + dv4)
        a = a + h6 * (da1 + 2.0 * (da2 + da3) + da4)
        s = s + h6 * (ds1 + 2.0 * (ds2 + ds3) + ds4)
        r = e_r * r + w0 * p1 + wm * (p2 + p3) + w1 * p4
        return v, a, r, s

    return step


def _make_gated_interval(n_sub: int, h: float, c: dict, gate: tuple[float, float]) -> Callable:
    """One grid interval of gated rk4exp under autograd:
    ``fn(v, a, r, s, drive, w_t, ws_t, kappa, dw) -> (v, a, r, s, y)``, y = cat(v, a, r, s)."""
    inv_tau_a = 1.0 / c["tau_a"]
    step = _rk4exp_step_gated(h, c, gate)
    phi = rate_function(c, "autograd")

    def interval(v, a, r, s, drive, w_t, ws_t, kappa, dw=None):
        ka = kappa * inv_tau_a
        for i in range(n_sub):
            v, a, r, s = step(v, a, r, s, drive, w_t, ws_t, ka, phi)
            if dw is not None:
                v = v + dw[i]
        return v, a, r, s, torch.cat([v, a, r, s], dim=-1)

    return interval


def _make_gated_chunk(
    n_sub: int, h: float, c: dict, gate: tuple[float, float], unroll: int, *, store: bool
) -> Callable:
    """:func:`_make_rk4exp_chunk` with gating: ``chunk(v, a, r, s, drives, w_t, ws_t, kappa,
    dws) -> (v, a, r, s, ys[, ps, ss, qs])``, ys [unroll, B, 4P]; with ``store`` also the
    stage S values qs [unroll * n_sub * 4, B, P]."""
    inv_tau_a = 1.0 / c["tau_a"]
    step = _rk4exp_step_gated(h, c, gate)
    rate = rate_function(c, "value")
    rate_slope = rate_function(c, "slope")

    def chunk(v, a, r, s, drives, w_t, ws_t, kappa, dws):
        ka = kappa * inv_tau_a
        ys, ps, ss = [], [], []
        qs = [] if store else None
        phi = rate
        if store:

            def phi(x):
                p, sl = rate_slope(x)
                ps.append(p)
                ss.append(sl)
                return p

        for k in range(unroll):
            drive = drives[k]
            for i in range(n_sub):
                v, a, r, s = step(v, a, r, s, drive, w_t, ws_t, ka, phi, qs)
                if dws is not None:
                    v = v + dws[k * n_sub + i]
            ys.append(torch.cat([v, a, r, s], dim=-1))
        if store:
            return v, a, r, s, torch.stack(ys), torch.stack(ps), torch.stack(ss), torch.stack(qs)
        return v, a, r, s, torch.stack(ys)

    return chunk


def _make_gated_chunk_backward(
    n_sub: int, h: float, c: dict, gate: tuple[float, float], unroll: int
) -> Callable:
    """Adjoint of :func:`_make_gated_chunk`: ``back(lv, la, lr, ls, g_wt, g_wst, g_ys, ps, ss,
    qs, w, ws, kappa) -> (lv, la, lr, ls, g_wt, g_wst, g_drives)``; ``ss`` a list of
    ``unroll`` [n_sub * 4, B, P] slopes, ps and qs [unroll * n_sub * 4, B, P]; w, ws
    [P target, P source]. Per stage i (rate p_i, slope s_i, gate q_i), besides the ungated
    recursion (:func:`_make_rk4exp_chunk_backward`), with g_dS_i = b_i ls + c_{i+1} h g_S_{i+1}:
        g_p_i = g_dv_i W + kappa/tau_a g_da_i + w_r,i lr + gamma (1 - q_i) g_dS_i
        g_S_i = g_dv_i W_slow / (gamma tau_S) - g_dS_i (1 / tau_S + gamma p_i)
        ls += sum_i g_S_i,  g_Wst += sum_i (q_i / (gamma tau_S))^T g_dv_i.
    """
    inv_tau_m, inv_tau_a = 1.0 / c["tau_m"], 1.0 / c["tau_a"]
    tau_g, gamma = gate
    inv_tau_g, inv_g = 1.0 / tau_g, 1.0 / (gamma * tau_g)
    e_r = math.exp(-h / c["tau_s"])
    w0, wm, w1 = _filter_weights(c["tau_s"], h)
    h2, h6 = 0.5 * h, h / 6.0
    h3 = 2.0 * h6

    def stage(g_dv, g_da, g_ds, g_p_r, sl, p, q, w, ws, ka):
        g_p = torch.mm(g_dv, w) + (g_p_r + ka * g_da + gamma * (1.0 - q) * g_ds)
        g_u = sl * g_p
        g_s = torch.mm(g_dv, ws) * inv_g - g_ds * (inv_tau_g + gamma * p)
        return g_u - g_dv * inv_tau_m, -g_u - g_da * inv_tau_a, g_s

    def back(lv, la, lr, ls, g_wt, g_wst, g_ys, ps, ss, qs, w, ws, kappa):
        P = lv.shape[-1]
        ka = kappa * inv_tau_a
        g_drives: list = [None] * unroll
        g_dvs: list = [None] * (unroll * n_sub * 4)
        for k in range(unroll - 1, -1, -1):
            g = g_ys[k]
            lv = lv + g[:, :P]
            la = la + g[:, P : 2 * P]
            lr = lr + g[:, 2 * P : 3 * P]
            ls = ls + g[:, 3 * P :]
            g_drive = None
            s_k = ss[k]
            for i in range(n_sub - 1, -1, -1):
                j = (k * n_sub + i) * 4
                lr_m = wm * lr
                st = [(s_k[4 * i + m], ps[j + m], qs[j + m], w, ws, ka) for m in range(4)]
                g_dv4, g_da4, g_ds4 = h6 * lv, h6 * la, h6 * ls
                g_v4, g_a4, g_s4 = stage(g_dv4, g_da4, g_ds4, w1 * lr, *st[3])
                g_dv3, g_da3, g_ds3 = h3 * lv + h * g_v4, h3 * la + h * g_a4, h3 * ls + h * g_s4
                g_v3, g_a3, g_s3 = stage(g_dv3, g_da3, g_ds3, lr_m, *st[2])
                g_dv2 = h3 * lv + h2 * g_v3
                g_da2, g_ds2 = h3 * la + h2 * g_a3, h3 * ls + h2 * g_s3
                g_v2, g_a2, g_s2 = stage(g_dv2, g_da2, g_ds2, lr_m, *st[1])
                g_dv1 = h6 * lv + h2 * g_v2
                g_da1, g_ds1 = h6 * la + h2 * g_a2, h6 * ls + h2 * g_s2
                g_v1, g_a1, g_s1 = stage(g_dv1, g_da1, g_ds1, w0 * lr, *st[0])
                lv = lv + g_v1 + g_v2 + g_v3 + g_v4
                la = la + g_a1 + g_a2 + g_a3 + g_a4
                ls = ls + g_s1 + g_s2 + g_s3 + g_s4
                lr = e_r * lr
                g_dvs[j : j + 4] = [g_dv1, g_dv2, g_dv3, g_dv4]
                g_step = g_dv1 + g_dv2 + g_dv3 + g_dv4
                g_drive = g_step if g_drive is None else g_drive + g_step
            g_drives[k] = g_drive
        g_dv_all = torch.cat(g_dvs)
        g_wt = torch.addmm(g_wt, ps.reshape(-1, P).t(), g_dv_all)
        g_wst = torch.addmm(g_wst, qs.reshape(-1, P).t(), g_dv_all, alpha=inv_g)
        return lv, la, lr, ls, g_wt, g_wst, torch.stack(g_drives)

    return back


def gated_chunk_function(
    kind: str,
    n_sub: int,
    h: float,
    c: dict,
    gate: tuple[float, float],
    unroll: int,
    *,
    compile: bool,
    like: torch.Tensor,
) -> Callable:
    """The (cached) gated rk4exp chunk function: kind "forward", "store" or "backward"."""

    def make():
        if kind == "backward":
            return _make_gated_chunk_backward(n_sub, h, c, gate, unroll)
        return _make_gated_chunk(n_sub, h, c, gate, unroll, store=kind == "store")

    key = ("gated-chunk", kind, n_sub, float(h), tuple(sorted(c.items())), gate, unroll)
    options = {"cpp_wrapper": True} if like.device.type == "cpu" else None
    return _cached(key, like, compile, make, options)


class _GatedPlan(_Plan):
    """:class:`_Plan` for the state (v, a, r, S) and the weights (w_t, ws_t)."""

    def __init__(self, terms, *args):
        super().__init__(terms, *args)
        gate, (n_sub, h, unroll) = _gate_key(terms), (self.n_sub, args[2], self.unroll)
        compile, like = args[4], args[-1]
        c = terms.constants
        self.fn = lambda kind: gated_chunk_function(
            kind, n_sub, h, c, gate, unroll, compile=compile, like=like
        )

    def split(self, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        P = self.P
        return tuple(y[:, i * P : (i + 1) * P].contiguous() for i in range(4))

    def run(self, kind, xs, drives, ws, kappa, chunks, stores=None, states=None):
        """Run ``chunks`` forward from xs = (v, a, r, s) with ws = (w_t, ws_t); as
        :meth:`_Plan.run`, stores (ps, ss, qs) per chunk."""
        fn = self.fn(kind)
        K = self.unroll
        for ci in chunks:
            res = fn(*xs, drives[ci * K : (ci + 1) * K], *ws, kappa, self.noise(ci))
            xs = res[:4]
            if states is not None:
                n = min(K, self.n_int - ci * K)
                states[1 + ci * K : 1 + ci * K + n] = res[4][:n]
            if stores is not None:
                stores.append((res[5], self.per_interval(res[6]), res[7]))
        return xs


class _GatedAdjoint(torch.autograd.Function):
    """Gated rk4exp rollout with its hand-written discrete adjoint as the backward."""

    @staticmethod
    def forward(ctx, y0, drive, w_t, ws_t, kappa, plan: _GatedPlan):
        ws = (w_t.detach().contiguous(), ws_t.detach().contiguous())
        xs = plan.split(y0.detach())
        drives = plan.drives(drive.detach())
        states = plan.new_states(y0.detach())
        if plan.seg:
            starts = []
            for c0 in range(0, plan.n_chunks, plan.seg):
                starts.append(xs)
                chunks = range(c0, min(c0 + plan.seg, plan.n_chunks))
                xs = plan.run("forward", xs, drives, ws, kappa, chunks, states=states)
            ctx.starts, ctx.stores = starts, None
        else:
            stores: list = []
            plan.run("store", xs, drives, ws, kappa, range(plan.n_chunks), stores, states)
            ctx.stores = stores
        ctx.plan, ctx.drives = plan, drives
        ctx.save_for_backward(*ws, kappa)
        ctx.drive_shape = drive.shape
        return states

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_states):
        plan = ctx.plan
        wt, wst, kappa = ctx.saved_tensors
        P, K, n_int = plan.P, plan.unroll, plan.n_int
        w, ws = wt.t().contiguous(), wst.t().contiguous()
        g_states = g_states.contiguous()
        zeros = g_states.new_zeros(g_states.shape[1:])
        g_rows = list(g_states.unbind(0)) + [zeros] * (plan.n_chunks * K - n_int)
        lam = [g_states.new_zeros(g_states.shape[1], P) for _ in range(4)]
        g_wt, g_wst = torch.zeros_like(wt), torch.zeros_like(wst)
        g_drives: list = [None] * plan.n_chunks
        back = plan.fn("backward")
        seg_stores: dict = {}
        for ci in range(plan.n_chunks - 1, -1, -1):
            if ctx.stores is not None:
                ps, ss, qs = ctx.stores[ci]
            else:
                c0 = (ci // plan.seg) * plan.seg
                if c0 not in seg_stores:
                    seg_stores.clear()
                    seg_stores[c0] = []
                    chunks = range(c0, min(c0 + plan.seg, plan.n_chunks))
                    start = ctx.starts[c0 // plan.seg]
                    plan.run("store", start, ctx.drives, (wt, wst), kappa, chunks, seg_stores[c0])
                ps, ss, qs = seg_stores[c0][ci - c0]
            *lam, g_wt, g_wst, g_drives[ci] = back(
                *lam, g_wt, g_wst, g_rows[ci * K + 1 : (ci + 1) * K + 1], ps, ss, qs, w, ws, kappa
            )
        g_y0 = g_drive = None
        if ctx.needs_input_grad[0]:
            g_y0 = g_states[0] + torch.cat(lam, dim=-1)
        if ctx.needs_input_grad[1]:
            rest = g_states.new_zeros(ctx.drive_shape[0] - n_int, *ctx.drive_shape[1:])
            g_drive = torch.cat([torch.cat(g_drives)[:n_int], rest])
        g_w = g_wt if ctx.needs_input_grad[2] else None
        g_ws = g_wst if ctx.needs_input_grad[3] else None
        return g_y0, g_drive, g_w, g_ws, None, None


def _gated_rollout(terms, y0, n_points, n_sub, h, method, options: FastOptions, dws):
    """Gated rk4exp (:func:`fast_rollout` with ``terms.w_slow_t``): the discrete adjoint
    unless ``backward`` is "autograd" or kappa requires grad, else autograd through the steps
    (``checkpoint_every`` through ``torch.utils.checkpoint`` there)."""
    if method != "rk4exp":
        raise ConfigError(
            f"solver.method = {method!r} does not integrate the gating synapse "
            "(model.network.gating); allowed with gating: 'rk4exp' or a torchdiffeq method "
            "(e.g. 'dopri5')"
        )
    P = terms.n_pop
    w_t, ws_t, kappa, drive = terms.w_t, terms.w_slow_t, terms.kappa, terms.drive
    n_int = n_points - 1
    adjoint = options.backward != "autograd"
    if adjoint and kappa.requires_grad:
        if options.backward == "discrete_adjoint":
            raise ConfigError(
                "solver.fast.backward = 'discrete_adjoint' has no gradient for kappa (kappa "
                "requires grad); use 'auto' or 'autograd'"
            )
        adjoint = False
    like = y0[:, :P]
    if adjoint:
        unroll = options.unroll or (DEFAULT_UNROLL if options.compile else 1)
        steps = None if dws is None else list(dws.flatten(0, 1).unbind(0))
        plan = _GatedPlan(
            terms,
            n_points,
            n_sub,
            h,
            unroll,
            options.compile,
            options.checkpoint_every,
            steps,
            like,
        )
        if steps is not None:
            steps.extend([torch.zeros_like(like)] * ((plan.n_chunks * unroll - n_int) * n_sub))
        if torch.is_grad_enabled() and any(x.requires_grad for x in (y0, w_t, ws_t, drive)):
            return _GatedAdjoint.apply(y0, drive, w_t, ws_t, kappa, plan)
        with torch.no_grad():
            states = plan.new_states(y0)
            ws = (w_t.contiguous(), ws_t.contiguous())
            plan.run(
                "forward",
                plan.split(y0),
                plan.drives(drive),
                ws,
                kappa,
                range(plan.n_chunks),
                states=states,
            )
        return states
    key = ("gated", n_sub, float(h), tuple(sorted(terms.constants.items())), _gate_key(terms))
    fn = _cached(
        key,
        like,
        options.compile,
        lambda: _make_gated_interval(n_sub, h, terms.constants, _gate_key(terms)),
    )
    xs = tuple(y0[:, i * P : (i + 1) * P] for i in range(4))
    needs_grad = torch.is_grad_enabled() and any(
        x.requires_grad for x in (y0, w_t, ws_t, kappa, drive)
    )
    if options.checkpoint_every and needs_grad:
        if dws is not None:
            raise ConfigError(
                "solver.fast.checkpoint_every with noise needs the discrete adjoint (rk4exp "
                "without a kappa gradient)"
            )
        from torch.utils.checkpoint import checkpoint

        chunks = [y0[None]]
        for k0 in range(0, n_int, options.checkpoint_every):
            k1 = min(k0 + options.checkpoint_every, n_int)
            *xs, ys = checkpoint(
                _gated_chunk_autograd, fn, *xs, drive[k0:k1], w_t, ws_t, kappa, use_reentrant=True
            )
            chunks.append(ys)
        return torch.cat(chunks)
    out = [y0]
    for k in range(n_int):
        *xs, y = fn(*xs, drive[k], w_t, ws_t, kappa, None if dws is None else dws[k])
        out.append(y)
    return torch.stack(out)


def _gated_chunk_autograd(fn, v, a, r, s, drives, w_t, ws_t, kappa):
    ys = []
    for drive in drives:
        v, a, r, s, y = fn(v, a, r, s, drive, w_t, ws_t, kappa)
        ys.append(y)
    return v, a, r, s, torch.stack(ys)
