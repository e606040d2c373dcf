"""The fast rollout path: exponential integrators specialised to the column network.

Every state variable of the column model obeys a linear decay plus a forcing that depends on
the state only through the rates phi = f(v - a) (SCIENCE.md §3):

    dv/dt = -v / tau_m + N_v,   N_v = R tau_s / tau_m (W phi + drive)
    da/dt = -a / tau_a + kappa phi / tau_a
    dr/dt = -r / tau_s + phi / tau_s

Exponential time differencing (Cox & Matthews 2002, J Comput Phys 176:430) integrates each
decay exactly, so the 0.5 ms synaptic filter r no longer limits the step (dt/tau_s = 2 was
the predecessor's stability edge) and only the recurrent coupling through phi stays explicit:

    expeuler:  x' = E x + tau (1 - E) N(x_n)                       (order 1)
    exprk2:    x* = E x + tau (1 - E) N(x_n)                       (ETD2RK, order 2)
               x' = x* + tau^2 (E - 1 + h / tau) / h (N(x*) - N(x_n))
    with E = exp(-h / tau) per variable.

The loop runs over time only; each step is a few batched ops on [B, P] tensors, and outputs
are collected in a list and stacked once (torchdiffeq's per-output gradient copies are the
cost the predecessor paid). The input drive of grid interval k is constant across its
sub-steps, exactly as the piecewise-constant stimulus demands.

Speed (SCIENCE.md §3: time goes to per-op overhead). The transfer function runs through a
custom autograd Function (:func:`rate_g`) that computes g and, in backward, g' from the same
intermediates: fewer ops both ways than autograd through ``transfer_g``. With
``compile=True`` one grid interval (``n_sub`` unrolled steps and the output concatenation)
is one ``torch.compile`` graph, cached per (method, step, n_sub, constants, shapes, dtype,
device) so a training loop compiles once; if compilation fails the loop warns and runs eager.
Memory: ``checkpoint_every=K`` recomputes each chunk of K grid intervals in backward
(``torch.utils.checkpoint``), so activation memory no longer grows with trial length (only
the returned states do).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch

_G_SERIES_BELOW = 1e-2  # |u| below which g'(u) uses its series (the closed form cancels)
_Q_SERIES_BELOW = 0.1  # |u| below which w / expm1(w) uses its series
_EXP_CAP = 60.0
_TINY = 1e-30


def _rate_q(w: torch.Tensor) -> torch.Tensor:
    """q = w / expm1(w) for w > 0, with its Bernoulli series below ``_Q_SERIES_BELOW``.

    The series keeps q accurate where expm1 is not: torch.compile's CPU code generator lowers
    expm1(w) to exp(w) - 1, which cancels for small w (float32 rates near the transfer
    function's 0/0 point off by up to 0.07 Hz at |u| = 1e-4, 0.7 Hz at 1e-5, 7 Hz at 1e-6).
    Truncation error < 1e-14.
    """
    series = 1.0 + w * (-0.5 + w * (1.0 / 12.0 + w * w * (-1.0 / 720.0 + w * w / 30240.0)))
    return torch.where(w < _Q_SERIES_BELOW, series, w / torch.expm1(w))


def _rate_slope(u: torch.Tensor, w: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """g'(u) from the intermediates of g (w = |u| clamped, q = w / expm1(w))."""
    exact = (u > 0).to(u.dtype) + torch.sign(u) * q * (1.0 - w - q) / w
    series = 0.5 + u * (1.0 / 6.0) - u * u * u * (1.0 / 180.0)
    return torch.where(w < _G_SERIES_BELOW, series, exact)


class _RateG(torch.autograd.Function):
    """g(u) = u / (1 - exp(-u)) with its derivative from the same intermediates.

    With w = |u| and q = w / expm1(w): g = relu(u) + q and g' = [u > 0] + sign(u) q (1 - w - q) / w
    (from q e^w = w + q). q uses its series for small w (:func:`_rate_q`); g' cancels for
    small w and uses 1/2 + u/6 - u^3/180 there. A few forward ops and a fused backward replace
    transfer_g's eleven forward and ~20 autograd ops (same values to float rounding).
    """

    @staticmethod
    def forward(u):
        w = u.abs().clamp(_TINY, _EXP_CAP)
        q = _rate_q(w)
        return torch.relu(u) + q, q

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], output[1])

    @staticmethod
    def backward(ctx, grad_g, _grad_q):
        u, q = ctx.saved_tensors
        w = u.abs().clamp(_TINY, _EXP_CAP)
        return grad_g * _rate_slope(u, w, q)


def rate_g(u: torch.Tensor) -> torch.Tensor:
    """g(u) = u / (1 - exp(-u)) through :class:`_RateG` (fewer ops than ``transfer_g``)."""
    return _RateG.apply(u)[0]


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


_METHOD_NFE = {"expeuler": 1, "exprk2": 2, "rk4exp": 4}
# (method, n_sub, h, constants, compile, shape, dtype, device) -> interval function
_INTERVAL_CACHE: dict[tuple, Callable] = {}

IntervalFn = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]


def _make_interval(method: str, n_sub: int, h: float, c: dict) -> IntervalFn:
    """One grid interval of ``method``: ``fn(v, a, r, drive, w_t, kappa, dw) -> (v, a, r, y)``.

    v, a, r, drive: [B, P]; w_t: [P, P] (source x target); kappa: [P]; y = cat(v, a, r);
    dw: None, or [n_sub, B, P] noise increments added to v after each deterministic step.
    The ``n_sub`` steps are unrolled (one graph per interval under torch.compile).
    """
    da, db, inv_d = c["da"], c["db"], 1.0 / c["d"]
    inv_tau_m, inv_tau_a, inv_tau_s = 1.0 / c["tau_m"], 1.0 / c["tau_a"], 1.0 / c["tau_s"]
    e_v, c1_v, c2_v = _etd_coefficients(c["tau_m"], h)
    e_a, c1_a, c2_a = _etd_coefficients(c["tau_a"], h)
    e_r, c1_r, c2_r = _etd_coefficients(c["tau_s"], h)

    max_rate = c.get("max_rate", 0.0)

    def rates(v, a):
        phi = rate_g((v - a) * da - db) * inv_d
        if max_rate > 0:  # soft ceiling, colenv.models.transfer.saturate
            phi = max_rate * torch.tanh(phi * (1.0 / max_rate))
        return phi

    if method == "expeuler":
        a_pred, r_coef = c1_a * inv_tau_a, c1_r * inv_tau_s

        def interval(v, a, r, drive, w_t, kappa, dw=None):
            ka = kappa * a_pred
            for i in range(n_sub):
                phi = rates(v, a)
                v = e_v * v + c1_v * torch.addmm(drive, phi, w_t)
                a = e_a * a + ka * phi
                r = e_r * r + r_coef * phi
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
                phi = rates(v, a)
                n_v = torch.addmm(drive, phi, w_t)
                v1 = e_v * v + c1_v * n_v
                a1 = e_a * a + k_pred * phi
                phi1 = rates(v1, a1)
                n_v1 = torch.addmm(drive, phi1, w_t)
                v = e_v * v + v_n * n_v + v_s * n_v1
                a = e_a * a + k_n * phi + k_s * phi1
                r = e_r * r + r_n * phi + r_s * phi1
                if dw is not None:
                    v = v + dw[i]
            return v, a, r, torch.cat([v, a, r], dim=-1)

    elif method == "rk4exp":
        # classical RK4 on (v, a); r filtered exactly against the quadratic through the
        # stage rates at 0, h/2 and h (exponential quadrature)
        w0, wm, w1 = _filter_weights(c["tau_s"], h)
        h2, h6 = 0.5 * h, h / 6.0

        def interval(v, a, r, drive, w_t, kappa, dw=None):
            ka = kappa * inv_tau_a

            def deriv(v, a):
                phi = rates(v, a)
                dv = torch.addmm(drive, phi, w_t) - v * inv_tau_m
                return phi, dv, ka * phi - a * inv_tau_a

            for i in range(n_sub):
                p1, dv1, da1 = deriv(v, a)
                p2, dv2, da2 = deriv(v + h2 * dv1, a + h2 * da1)
                p3, dv3, da3 = deriv(v + h2 * dv2, a + h2 * da2)
                p4, dv4, da4 = deriv(v + h * dv3, a + h * da3)
                v = v + h6 * (dv1 + 2.0 * (dv2 + dv3) + dv4)
                a = a + h6 * (da1 + 2.0 * (da2 + da3) + da4)
                r = e_r * r + w0 * p1 + wm * (p2 + p3) + w1 * p4
                if dw is not None:
                    v = v + dw[i]
            return v, a, r, torch.cat([v, a, r], dim=-1)

    else:  # validated by SolverConfig
        raise ValueError(f"unknown fast method {method!r}; allowed: {', '.join(_METHOD_NFE)}")
    return interval


def _fresh_code(fn: Callable) -> Callable:
    """``fn`` with its own code object: dynamo keeps its compiled graphs (and counts its
    recompile limit) per code object, so every cached configuration gets its own budget."""
    import types

    return types.FunctionType(
        fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )


class _Compiled:
    """A torch.compile'd interval that falls back to eager (with a warning) if compiling fails."""

    def __init__(self, eager: IntervalFn) -> None:
        self.eager = eager
        self.fn: IntervalFn = torch.compile(_fresh_code(eager), dynamic=False, fullgraph=True)
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


def interval_function(
    method: str, n_sub: int, h: float, c: dict, *, compile: bool, like: torch.Tensor
) -> IntervalFn:
    """The (cached) interval function for this configuration; ``like`` is a [B, P] state."""
    key = (
        method,
        n_sub,
        float(h),
        tuple(sorted(c.items())),
        compile,
        tuple(like.shape),
        like.dtype,
        str(like.device),
    )
    fn = _INTERVAL_CACHE.get(key)
    if fn is None:
        fn = _make_interval(method, n_sub, h, c)
        if compile:
            fn = _Compiled(fn)
        _INTERVAL_CACHE[key] = fn
    return fn


def _chunk(fn, v, a, r, drives, w_t, kappa):
    ys = []
    for drive in drives:
        v, a, r, y = fn(v, a, r, drive, w_t, kappa)
        ys.append(y)
    return v, a, r, torch.stack(ys)


def fast_rollout(
    dyn,
    y0: torch.Tensor,
    n_points: int,
    n_sub: int,
    h: float,
    method: str,
    *,
    compile: bool = False,
    checkpoint_every: int = 0,
    noise: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Integrate bound column dynamics ``dyn`` (a :class:`colenv.models.Dynamics`).

    Args:
        dyn: the dynamics of one rollout (weights and drive [T, B, P] precomputed).
        y0: [B, 3P] initial state.
        n_points: number of output grid points T.
        n_sub: steps per grid interval.
        h: step in seconds.
        method: "expeuler", "exprk2" or "rk4exp".
        compile: run each grid interval as one cached ``torch.compile`` graph.
        checkpoint_every: > 0 recomputes chunks of this many grid intervals in backward
            (activation memory flat in trial length, about one extra forward of cost;
            backward with ``loss.backward()``, not ``torch.autograd.grad``).
        noise: integrate the SDE (diagonal additive noise ``dyn._sigma`` on v) by splitting:
            each deterministic step is followed by the kick sigma sqrt(h) xi on v (strong
            order 1 for additive noise; the deterministic step keeps its stability region,
            which is what removes Euler-Maruyama's rate artefacts). ``generator`` draws xi.

    Returns:
        states [T, B, 3P] on the grid.
    """
    if method not in _METHOD_NFE:
        raise ValueError(f"unknown fast method {method!r}; allowed: {', '.join(_METHOD_NFE)}")
    if checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be >= 0, got {checkpoint_every!r}")
    P = dyn.P
    v, a, r = y0[:, :P], y0[:, P : 2 * P], y0[:, 2 * P :]
    fn = interval_function(method, n_sub, h, dyn.c, compile=compile, like=v)
    w_t, kappa, drive = dyn.w_t, dyn.kappa, dyn.drive
    n_int = n_points - 1
    if noise:
        if checkpoint_every:
            raise ValueError("noise=True with checkpoint_every is not supported")
        scale = dyn._sigma * math.sqrt(h)
        out = [y0]
        for k in range(n_int):
            dw = torch.randn((n_sub, *v.shape), generator=generator, dtype=v.dtype, device=v.device)
            v, a, r, y = fn(v, a, r, drive[k], w_t, kappa, dw * scale)
            out.append(y)
        dyn.nfe += n_int * n_sub * _METHOD_NFE[method]
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
        states = torch.cat(chunks)
    else:
        out = [y0]
        for k in range(n_int):
            v, a, r, y = fn(v, a, r, drive[k], w_t, kappa)
            out.append(y)
        states = torch.stack(out)
    dyn.nfe += n_int * n_sub * _METHOD_NFE[method]
    return states
