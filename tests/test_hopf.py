"""Hopf reference: RK4 trajectories against the closed-form and quadrature radii."""

import math

import torch

from colenv.reference.hopf import (
    integrate,
    normal_form,
    radius_constant_mu,
    radius_quadrature,
    sine_mu,
)

F64 = torch.float64
T_S = torch.arange(500, dtype=F64) * 0.05  # 25 s at 50 ms
X0 = torch.tensor([[0.1, 0.0], [1.0, 1.0], [-2.0, 2.0], [2.0, -2.0], [0.0, 0.5]], dtype=F64)


def test_normal_form_reads_like_the_equations():
    x, y, mu = torch.tensor([0.5]), torch.tensor([-1.0]), torch.tensor([0.3])
    dx, dy = normal_form(x, y, mu, omega=2.0)
    d = 0.3 - 0.25 - 1.0
    assert torch.allclose(dx, torch.tensor([d * 0.5 + 2.0])) and torch.allclose(
        dy, torch.tensor([-d + 1.0])
    )


def test_constant_mu_radius_matches_closed_form():
    mus = torch.tensor([-1.0, -0.5, 0.0, 1e-9, 0.25, 0.5, 1.0], dtype=F64)
    mu = mus.repeat_interleave(len(X0))
    x0 = X0.repeat(len(mus), 1)
    xy = integrate(x0, T_S, lambda t: mu.expand(t.shape[0], -1))
    exact = radius_constant_mu(T_S, mu, x0.norm(dim=1))
    assert (xy.norm(dim=-1) - exact).abs().max() < 1e-5
    # the angle advances at omega = 1 (checked where the radius is not tiny)
    r_end = xy[-1].norm(dim=-1)
    big = r_end > 0.1
    angle = torch.atan2(xy[-1, :, 1], xy[-1, :, 0]) - torch.atan2(x0[:, 1], x0[:, 0])
    wrapped = torch.remainder(angle - T_S[-1] + math.pi, 2 * math.pi) - math.pi
    assert wrapped[big].abs().max() < 1e-6


def test_constant_mu_closed_form_limits():
    r0 = torch.tensor([0.5, 2.0], dtype=F64)
    t = torch.tensor([0.0, 1.0, 100.0], dtype=F64)
    zero = radius_constant_mu(t, torch.zeros(2, dtype=F64), r0)
    assert torch.allclose(zero**2, r0**2 / (1 + 2 * r0**2 * t[:, None]))
    assert torch.allclose(
        radius_constant_mu(t, torch.full((2,), 0.25, dtype=F64), r0)[-1],
        torch.tensor(0.5, dtype=F64),
    )
    assert torch.allclose(radius_constant_mu(t, torch.full((2,), 1e-12, dtype=F64), r0), zero)


def independent_sine_radius(t_s, a, b, c, d, r0, sub=20):
    """r(t) from r^2 = e^{2M} / (1/r0^2 + 2 int e^{2M}), M analytic, Simpson per interval."""

    def big_m(t):
        return a / b * (torch.cos(c) - torch.cos(b * t + c)) + d * t

    h = (t_s[1] - t_s[0]) / sub
    # composite Simpson on each output interval, then a cumulative sum
    s = torch.arange(sub + 1, dtype=F64) * h
    w = torch.ones(sub + 1, dtype=F64)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    w = w * h / 3.0
    tt = t_s[:-1, None, None] + s[None, :, None]  # [T-1, sub+1, 1]
    pieces = (torch.exp(2 * big_m(tt)) * w[None, :, None]).sum(dim=1)  # [T-1, B]
    integral = torch.cat((torch.zeros_like(pieces[:1]), torch.cumsum(pieces, dim=0)))
    m = big_m(t_s[:, None])
    return torch.sqrt(torch.exp(2 * m) / (1 / r0**2 + 2 * integral))


def test_sine_mu_radius_matches_quadrature():
    n = len(X0)
    a = torch.full((n,), 1.0, dtype=F64)
    b = 0.25
    c = torch.linspace(0, 5, n, dtype=F64)
    d = torch.tensor([0.0, 0.2, -0.2, 0.0, 0.5], dtype=F64)
    xy = integrate(X0, T_S, lambda t: sine_mu(t, a, b, c, d))
    exact = independent_sine_radius(T_S, a, torch.tensor(b, dtype=F64), c, d, X0.norm(dim=1))
    assert (xy.norm(dim=-1) - exact).abs().max() < 1e-4
    # the module's trapezoid quadrature on a fine grid agrees too
    fine = torch.arange(24951, dtype=F64) * 1e-3
    r_trap = radius_quadrature(fine, sine_mu(fine, a, b, c, d), X0.norm(dim=1))[::50]
    assert (r_trap - exact).abs().max() < 1e-4
