"""The rate transfer function of the column model: the one definition every path uses.

    f(x) = (A x - B) / (1 - exp(-D (A x - B)))          A = 48, B = 981, D = 0.0089

(the Abbott-Chance / Wong & Wang 2006 form with the column model's constants). Written with
u = D (A x - B) as f = g(u) / D where g(u) = u / (1 - exp(-u)). The naive expression is 0/0 at
u = 0 (limit 1/D = 112.36 Hz), loses precision near it in float32 and overflows for large |u|.
With w = |u| and q = w / expm1(w) we use

    g(u)  = relu(u) + q                                   (only expm1 of w >= 0 is evaluated)
    g'(u) = [u > 0] + sign(u) q (1 - w - q) / w           (from q e^w = w + q)

q takes its Bernoulli series 1 - w/2 + w^2/12 - w^4/720 + w^6/30240 below w = 0.1 (truncation
< 1e-14): torch.compile's CPU code generator lowers expm1(w) to exp(w) - 1, which cancels for
small w (float32 rates near the 0/0 point were off by up to 7 Hz at |u| = 1e-6 without it).
g' cancels for small w and takes 1/2 + u/6 - u^3/180 below w = 1e-2. Every branch sees clamped
inputs, so values and slopes are finite for all finite x.

Who uses what:

- :func:`transfer_g`: g with autograd (a custom Function whose backward is the closed-form g'
  from the forward's intermediates; first and second derivatives are exact). The network's
  drift, its rest state and the fast path's autograd backward go through it.
- :func:`transfer_g_and_slope`: g and g' as plain tensors, for the hand-written discrete
  adjoint, which stores each stage's slope.
- :func:`rate_function`: the column rate phi(x) = saturate(g(da x - db) / d, max_rate) of
  x = v - a, built once from the network's constants, in the three forms above (and a plain
  value for rollouts that need no gradient).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

_Q_SERIES_BELOW = 0.1  # w below which q = w / expm1(w) uses its series
_SLOPE_SERIES_BELOW = 1e-2  # w below which g'(u) uses its series (the closed form cancels)
_EXP_CAP = 60.0  # q < 6e-25 beyond this; clamping keeps expm1 finite
_TINY = 1e-30  # keeps w away from 0 (q's closed form divides by expm1(w))


def _parts(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(g, w, q) of u: the value and the intermediates its slope needs."""
    w = u.abs().clamp(_TINY, _EXP_CAP)
    series = 1.0 + w * (-0.5 + w * (1.0 / 12.0 + w * w * (-1.0 / 720.0 + w * w / 30240.0)))
    q = torch.where(w < _Q_SERIES_BELOW, series, w / torch.expm1(w))
    return torch.relu(u) + q, w, q


def _slope(u: torch.Tensor, w: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """g'(u) from the intermediates of g."""
    exact = (u > 0).to(u.dtype) + torch.sign(u) * q * (1.0 - w - q) / w
    series = 0.5 + u * (1.0 / 6.0) - u * u * u * (1.0 / 180.0)
    return torch.where(w < _SLOPE_SERIES_BELOW, series, exact)


class _G(torch.autograd.Function):
    """g(u) and q(u); backward applies g' = [u > 0] + q' from the saved u and q."""

    @staticmethod
    def forward(u):
        g, _, q = _parts(u)
        return g, q

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.set_materialize_grads(False)  # q's gradient is None unless q is differentiated
        ctx.save_for_backward(inputs[0], output[1])

    @staticmethod
    def backward(ctx, grad_g, grad_q):
        u, q = ctx.saved_tensors
        w = u.abs().clamp(_TINY, _EXP_CAP)
        slope = _slope(u, w, q)
        grad = None if grad_g is None else grad_g * slope
        if grad_q is not None:  # double backward: q enters the slope, q' = g' - [u > 0]
            dq = grad_q * (slope - (u > 0).to(u.dtype))
            grad = dq if grad is None else grad + dq
        return grad


def transfer_g(u: torch.Tensor) -> torch.Tensor:
    """g(u) = u / (1 - exp(-u)), finite with finite (closed-form) gradient everywhere."""
    return _G.apply(u)[0]


def transfer_g_and_slope(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(g(u), g'(u)) as plain tensors (no autograd Function): what an adjoint stores."""
    g, w, q = _parts(u)
    return g, _slope(u, w, q)


def transfer(x: torch.Tensor, a: float = 48.0, b: float = 981.0, d: float = 0.0089) -> torch.Tensor:
    """Firing rate (Hz) for input x: (a x - b) / (1 - exp(-d (a x - b)))."""
    return transfer_g(d * (a * x - b)) / d


def saturate(rate_hz: torch.Tensor, max_rate_hz: float) -> torch.Tensor:
    """Optional soft ceiling max * tanh(rate / max) (identity when max_rate_hz <= 0).

    The transfer function grows without bound, so an unstable network runs away to infinity;
    real neurons stop at 1/t_ref (P&D 2014: t_ref = 2 ms, 500 Hz). With a 500 Hz ceiling rates
    below 100 Hz change by less than 1.4 %, and a runaway ends at a finite, trainable state.
    """
    if max_rate_hz <= 0:
        return rate_hz
    return max_rate_hz * torch.tanh(rate_hz * (1.0 / max_rate_hz))


def rate_function(c: Mapping[str, float], form: str = "autograd") -> Callable:
    """The column rate phi(x) = saturate(g(da x - db) / d, max_rate) of x = v - a (Hz).

    ``c`` holds ``da``, ``db``, ``d`` and ``max_rate`` (:meth:`ColumnNetwork.constants`); the
    floats are bound once here, so a call is only tensor work. ``form``:

    - "autograd": ``phi(x)`` through :func:`transfer_g` (exact closed-form gradient);
    - "value": ``phi(x)`` in plain ops, for rollouts that need no gradient;
    - "slope": ``(phi(x), dphi/dx)`` in plain ops, for the discrete adjoint.
    """
    da, db, inv_d, max_rate = c["da"], c["db"], 1.0 / c["d"], c["max_rate"]
    inv_max = 1.0 / max_rate if max_rate > 0 else 0.0
    slope_scale = da * inv_d
    if form == "autograd":

        def phi(x):
            p = transfer_g(x * da - db) * inv_d
            return max_rate * torch.tanh(p * inv_max) if max_rate > 0 else p

    elif form == "value":

        def phi(x):
            p = _parts(x * da - db)[0] * inv_d
            return max_rate * torch.tanh(p * inv_max) if max_rate > 0 else p

    elif form == "slope":

        def phi(x):
            g, s = transfer_g_and_slope(x * da - db)
            p, s = g * inv_d, s * slope_scale
            if max_rate > 0:
                th = torch.tanh(p * inv_max)
                p, s = max_rate * th, s * (1.0 - th * th)
            return p, s

    else:
        raise ValueError(f"form must be 'autograd', 'value' or 'slope', got {form!r}")
    return phi
