"""The rate transfer function of the column model.

    f(x) = (A x - B) / (1 - exp(-D (A x - B)))          A = 48, B = 981, D = 0.0089

(the Abbott-Chance / Wong & Wang 2006 form with the column model's constants, SCIENCE.md §1).
Written with u = D (A x - B) as f = g(u) / D where g(u) = u / (1 - exp(-u)). The naive
expression is 0/0 at u = 0 (limit 1/D = 112.36 Hz), loses precision near it in float32,
and overflows for large |u|. We use the identity g(u) = relu(u) + |u| / expm1(|u|), which
only ever evaluates expm1 of a non-negative argument, and a Taylor series
g(u) = 1 + u/2 + u^2/12 - u^4/720 for |u| < 1e-3 (truncation error < 1e-17). Every branch is
evaluated on clamped inputs, so values and gradients are finite for all finite x.
"""

from __future__ import annotations

import torch

_SERIES_BELOW = 1e-3
_EXP_CAP = 60.0  # |u| / expm1(|u|) < 6e-25 beyond this; clamping keeps expm1 finite


def transfer_g(u: torch.Tensor) -> torch.Tensor:
    """g(u) = u / (1 - exp(-u)), finite with finite gradient everywhere."""
    w = u.abs()
    w_safe = w.clamp(_SERIES_BELOW, _EXP_CAP)
    exact = torch.relu(u) + w_safe / torch.expm1(w_safe)
    u_small = u.clamp(-_SERIES_BELOW, _SERIES_BELOW)
    u2 = u_small * u_small
    series = 1.0 + 0.5 * u_small + u2 / 12.0 - u2 * u2 / 720.0
    return torch.where(w < _SERIES_BELOW, series, exact)


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
    return max_rate_hz * torch.tanh(rate_hz / max_rate_hz)
