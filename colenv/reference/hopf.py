"""Hopf normal form (supercritical) with a time-varying bifurcation parameter.

Equations (time in seconds)::

    dx/dt = (mu(t) - x^2 - y^2) x - omega y
    dy/dt = (mu(t) - x^2 - y^2) y + omega x

In polar form ``dr/dt = r (mu - r^2)`` and ``dtheta/dt = omega``: the radius
obeys a Bernoulli equation, so ``u = 1 / r^2`` solves the linear equation
``du/dt = -2 mu u + 2``, which gives, with ``M(t) = int_0^t mu(s) ds``::

    r(t)^2 = exp(2 M(t)) / (1 / r0^2 + 2 int_0^t exp(2 M(s)) ds)

and, for constant mu (the ``mu -> 0`` limit is ``r0^2 / (1 + 2 r0^2 t)``)::

    r(t)^2 = mu / (1 + (mu / r0^2 - 1) exp(-2 mu t))

For mu < 0 trajectories spiral into the origin; for mu > 0 they approach the
limit cycle of radius sqrt(mu). This module integrates the Cartesian system
numerically (``integrate``, batched classical RK4 in float64) and provides the
closed forms above so tests can check one against the other.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "REFERENCE_STEP_S",
    "integrate",
    "solve_sine_mu",
    "normal_form",
    "radius_constant_mu",
    "radius_quadrature",
    "sine_mu",
]

# RK4 step bound. The fastest radial rate is |d(r(mu - r^2))/dr| = 3 r^2 - mu,
# about 24 /s at the corner of the [-2, 2]^2 start box (r^2 = 8); h = 10 ms makes
# h * 24 = 0.24, well inside RK4's stability region, and the radius matches the
# closed form to ~2e-7 over 25 s (5 ms: ~2e-8 at twice the cost; tests/test_hopf.py).
REFERENCE_STEP_S = 0.01


def normal_form(x: Tensor, y: Tensor, mu: Tensor, omega: float) -> tuple[Tensor, Tensor]:
    """Right-hand side of the Hopf normal form: (dx/dt, dy/dt)."""
    d = mu - x * x - y * y
    return d * x - omega * y, d * y + omega * x


def sine_mu(
    t_s: Tensor, amplitude: Tensor, frequency_rad_per_s: float, phase: Tensor, offset: Tensor
) -> Tensor:
    """mu(t) = a sin(b t + c) + d for times ``t_s [N]`` and per-trial ``a, c, d [B]``: [N, B]."""
    t = t_s[:, None]
    return amplitude * torch.sin(frequency_rad_per_s * t + phase) + offset


def integrate(
    x0: Tensor,
    t_s: Tensor,
    mu_of_t,
    *,
    omega: float = 1.0,
    max_step_s: float = REFERENCE_STEP_S,
) -> Tensor:
    """Integrate the normal form on a uniform grid with classical RK4, batched over trials.

    Args:
        x0: [B, 2] start points (x, y) at ``t_s[0]``.
        t_s: [T] uniform output times (s).
        mu_of_t: callable mapping times ``[N]`` (float64 tensor, s) to ``mu [N, B]``;
            evaluated once, vectorised, on every RK4 stage time.
        omega: angular velocity (rad/s).
        max_step_s: largest RK4 step; each output interval is split evenly.

    Returns:
        [T, B, 2] float64 trajectory; sample 0 is ``x0``.
    """
    x0 = x0.to(torch.float64)
    t_s = t_s.to(torch.float64)
    n_out = t_s.shape[0]
    if n_out == 1:
        return x0[None].clone()
    dt = float(t_s[1] - t_s[0])
    substeps = max(1, math.ceil(dt / max_step_s - 1e-9))
    h = dt / substeps
    n = (n_out - 1) * substeps
    # mu on the half-step grid t0 + j h / 2: stage k of step i uses j = 2i, 2i+1, 2i+2.
    mu = mu_of_t(float(t_s[0]) + 0.5 * h * torch.arange(2 * n + 1, dtype=torch.float64))
    mu = mu.to(torch.float64)
    x, y = x0[:, 0].clone(), x0[:, 1].clone()
    xs, ys = [x], [y]
    for i in range(n):
        m0, m1, m2 = mu[2 * i], mu[2 * i + 1], mu[2 * i + 2]
        k1x, k1y = normal_form(x, y, m0, omega)
        k2x, k2y = normal_form(x + 0.5 * h * k1x, y + 0.5 * h * k1y, m1, omega)
        k3x, k3y = normal_form(x + 0.5 * h * k2x, y + 0.5 * h * k2y, m1, omega)
        k4x, k4y = normal_form(x + h * k3x, y + h * k3y, m2, omega)
        x = x + (h / 6.0) * (k1x + 2.0 * (k2x + k3x) + k4x)
        y = y + (h / 6.0) * (k1y + 2.0 * (k2y + k3y) + k4y)
        if (i + 1) % substeps == 0:
            xs.append(x)
            ys.append(y)
    return torch.stack((torch.stack(xs), torch.stack(ys)), dim=-1)


def radius_constant_mu(t_s: Tensor, mu: Tensor, r0: Tensor) -> Tensor:
    """Closed-form radius for constant mu: times [T], mu and r0 [B] -> r [T, B].

    Written as ``r^2 = 1 / ((1 - exp(-2 mu t)) / mu + exp(-2 mu t) / r0^2)`` with
    ``expm1``, which is exact at mu = 0 (``(1 - e^{-2 mu t}) / mu -> 2 t``) and
    has no cancellation for small mu.
    """
    t = t_s.to(torch.float64)[:, None]
    mu = mu.to(torch.float64)
    r0 = r0.to(torch.float64)
    zero = mu == 0
    mu_safe = torch.where(zero, torch.ones_like(mu), mu)
    growth = torch.where(zero, 2.0 * t, -torch.expm1(-2.0 * mu_safe * t) / mu_safe)
    r2 = 1.0 / (growth + torch.exp(-2.0 * mu * t) / r0**2)
    return torch.sqrt(r2)


def radius_quadrature(t_s: Tensor, mu: Tensor, r0: Tensor) -> Tensor:
    """General radius from the quadrature formula, trapezoid rule on the given grid.

    ``r^2 = exp(2M) / (1/r0^2 + 2 int_0^t exp(2M))``, ``M = int_0^t mu``.

    Args:
        t_s: [T] times (s), ``t_s[0] = 0``; accuracy is that of the trapezoid rule on it.
        mu: [T, B] mu at those times.
        r0: [B] start radius.

    Returns:
        [T, B] radius.
    """
    t = t_s.to(torch.float64)
    mu = mu.to(torch.float64)
    dt = torch.diff(t)[:, None]
    zeros = torch.zeros_like(mu[:1])
    big_m = torch.cat((zeros, torch.cumsum(0.5 * dt * (mu[1:] + mu[:-1]), dim=0)))
    e = torch.exp(2.0 * big_m)
    integral = torch.cat((zeros, torch.cumsum(0.5 * dt * (e[1:] + e[:-1]), dim=0)))
    return torch.sqrt(e / (1.0 / r0.to(torch.float64) ** 2 + 2.0 * integral))


def solve_sine_mu(
    x0: Tensor,
    t_s: Tensor,
    amplitude: Tensor,
    frequency_rad_per_s: float,
    phase: Tensor,
    offset: Tensor,
    *,
    omega: float = 1.0,
    substeps: int = 10,
) -> Tensor:
    """Trajectories under mu(t) = a sin(b t + c) + d from the polar solution, batched, float64.

    The phase is exact, theta = theta0 + omega t; the radius is the quadrature formula with
    M(t) = -a/b (cos(b t + c) - cos c) + d t in closed form and int_0^t exp(2M) by the
    trapezoid rule on ``substeps`` sub-intervals per grid step with its Euler-Maclaurin end
    correction -h^2/12 (f'(t) - f'(0)), f' = 2 mu exp(2M) (error O(h^4)). Written as
    r^2 = r0^2 e^{2M} / (1 + 2 r0^2 int e^{2M}) so r0 = 0 stays at the origin. A few tensor
    ops over the whole grid instead of a time loop: the task's target generator.

    Args:
        x0: [B, 2] start points.
        t_s: [T] uniform times (s) with ``t_s[0] = 0``.
        amplitude, phase, offset: [B] a, c, d; ``frequency_rad_per_s``: b.

    Returns:
        [T, B, 2] (x, y).
    """
    x0 = x0.to(torch.float64)
    t_s = t_s.to(dtype=torch.float64, device=x0.device)
    a, c, d = (v.to(dtype=torch.float64, device=x0.device) for v in (amplitude, phase, offset))
    n = t_s.shape[0]
    h = float(t_s[1] - t_s[0]) / substeps if n > 1 else 0.0
    t = torch.arange((n - 1) * substeps + 1, dtype=torch.float64, device=x0.device)[:, None] * h
    b = float(frequency_rad_per_s)
    if b == 0.0:
        big_m = (a * torch.sin(c) + d) * t
    else:
        big_m = -a / b * (torch.cos(b * t + c) - torch.cos(c)) + d * t
    e = torch.exp(2.0 * big_m)  # [Tf, B]
    de = 2.0 * (a * torch.sin(b * t + c) + d) * e  # d/dt exp(2M)
    trapezoid = h * (torch.cumsum(e, dim=0) - 0.5 * (e[:1] + e))
    integral = trapezoid - h * h / 12.0 * (de - de[:1])
    r0_sq = (x0**2).sum(dim=1)
    r = torch.sqrt(r0_sq * e / (1.0 + 2.0 * r0_sq * integral))[::substeps]  # [T, B]
    theta = torch.atan2(x0[:, 1], x0[:, 0]) + omega * t_s[:, None]
    return torch.stack((r * torch.cos(theta), r * torch.sin(theta)), dim=-1)
