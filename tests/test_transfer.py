"""The transfer function f(x) = (48x - 981)/(1 - exp(-0.0089(48x - 981)))."""

import math

import pytest
import torch

from colenv.models import transfer

A, B, D = 48.0, 981.0, 0.0089
X0 = B / A  # the 0/0 point


def exact(x: float) -> float:
    """Reference in Python floats (double), far from the 0/0 point."""
    z = A * x - B
    return z / (1.0 - math.exp(-D * z))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_limit_at_removable_singularity(dtype):
    x = torch.tensor([X0], dtype=dtype, requires_grad=True)
    y = transfer(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert math.isclose(float(y.detach()), 1.0 / D, rel_tol=1e-6)
    # d/dx of z/(1-exp(-Dz)) at z = 0 is A * 1/2
    assert math.isclose(float(g), A / 2, rel_tol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_values_and_gradients_everywhere(dtype):
    x = torch.cat(
        [
            torch.linspace(-1e4, 1e4, 20001, dtype=dtype),
            X0 + torch.linspace(-0.05, 0.05, 2001, dtype=dtype),
            torch.tensor([X0], dtype=dtype),
        ]
    ).requires_grad_(True)
    y = transfer(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(y).all() and torch.isfinite(g).all()
    assert (y >= 0).all()
    assert (g >= -1e-6).all()  # monotone


def test_matches_formula_away_from_singularity():
    xs = [-50.0, 0.0, 15.0, 20.0, 20.3, 21.0, 25.0, 40.0, 100.0]
    y = transfer(torch.tensor(xs, dtype=torch.float64))
    for x, v in zip(xs, y.tolist(), strict=True):
        assert math.isclose(v, exact(x), rel_tol=1e-12, abs_tol=1e-300)


def test_float32_accurate_near_singularity():
    """float32 cancellation in the naive form gave errors up to 2.6 Hz."""
    x64 = X0 + torch.linspace(-0.01, 0.01, 4001, dtype=torch.float64)
    x32 = x64.float()
    ref = transfer(x32.double())  # same inputs, double precision
    err = (transfer(x32).double() - ref).abs().max()
    assert err < 1e-4


def test_smooth_across_series_switch():
    u = torch.linspace(-2e-3, 2e-3, 40001, dtype=torch.float64)
    x = (u / D + B) / A
    y = transfer(x)
    assert (y[1:] > y[:-1]).all()
    x.requires_grad_(True)
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(transfer(x).sum(), x)
    assert (g - A / 2).abs().max() < A * 2e-3


def test_gradcheck():
    x = torch.tensor([X0 - 1.0, X0 - 1e-5, X0, X0 + 3e-4, X0 + 2.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(transfer, (x.requires_grad_(True),))


def test_soft_ceiling():
    from colenv.models.column.transfer import saturate

    r = torch.tensor([0.0, 10.0, 100.0, 1e4, 1e9])
    assert torch.equal(saturate(r, 0.0), r)
    s = saturate(r, 500.0)
    assert (s <= 500.0).all() and s[-1] == pytest.approx(500.0)
    assert s[2] == pytest.approx(100.0, rel=0.014)  # < 1.4 % below 100 Hz
    assert s[1] == pytest.approx(10.0, rel=1e-3)


def _reference_g_and_slope(u: float) -> tuple[float, float]:
    """g(u) = u / (1 - exp(-u)) and g'(u) in 50-digit arithmetic (mpmath)."""
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(50):
        x = mpmath.mpf(u)
        if x == 0:
            return 1.0, 0.5
        g = x / (1 - mpmath.exp(-x))
        slope = mpmath.diff(lambda y: y / (1 - mpmath.exp(-y)), x)
        return float(g), float(slope)


U_CHECK = [-80.0, -30.0, -5.0, -0.5, -0.1, -0.0999, -1.5e-2, -1e-2, -9.9e-3, -1e-4, -1e-12, 0.0]
U_CHECK += [-u for u in U_CHECK if u] + [0.3, 1.0, 7.0, 59.0, 61.0, 200.0]


def test_value_and_slope_match_a_high_precision_reference():
    """transfer_g and transfer_g_and_slope (the one definition every path uses) against
    50-digit arithmetic, on both sides of each series switch (|u| = 0.1 for q, 1e-2 for g')."""
    from colenv.models.column.transfer import transfer_g, transfer_g_and_slope

    u = torch.tensor(U_CHECK, dtype=torch.float64, requires_grad=True)
    g, slope = transfer_g_and_slope(u.detach())
    (grad,) = torch.autograd.grad(transfer_g(u).sum(), u)
    for i, x in enumerate(U_CHECK):
        want_g, want_s = _reference_g_and_slope(x)
        # beyond |u| = 60 the tail is capped at q(60) = 5e-25 (f is then off by < 1e-22 Hz)
        assert float(g[i]) == pytest.approx(want_g, rel=1e-13, abs=1e-23), x
        assert float(slope[i]) == pytest.approx(want_s, rel=1e-9, abs=1e-23), x
        assert float(grad[i]) == float(slope[i]), x  # autograd uses the same closed form
    assert torch.equal(transfer_g(u.detach()), g)


def test_rate_function_forms_agree():
    """The column rate phi(x) in its three forms (autograd, plain value, value and slope), with
    and without the soft ceiling: equal values, and the slope equals autograd's gradient."""
    from colenv.models.column.transfer import rate_function

    x = torch.linspace(10.0, 30.0, 4001, dtype=torch.float64)
    for max_rate in (0.0, 40.0):
        c = {"da": D * A, "db": D * B, "d": D, "max_rate": max_rate}
        xa = x.clone().requires_grad_(True)
        phi = rate_function(c, "autograd")(xa)
        (grad,) = torch.autograd.grad(phi.sum(), xa)
        value = rate_function(c, "value")(x)
        p, s = rate_function(c, "slope")(x)
        assert torch.equal(phi.detach(), value) and torch.equal(value, p)
        # rounding of 1 - tanh^2 where the ceiling saturates: absolute, against the largest slope
        torch.testing.assert_close(grad, s, rtol=1e-14, atol=1e-13 * float(s.abs().max()))
        if max_rate:
            assert float(p.max()) < max_rate
        else:
            torch.testing.assert_close(p, transfer(x), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="form must be"):
        rate_function(c, "derivative")


def test_second_derivative_is_exact():
    """Double backward through the autograd form (q's gradient is carried, not dropped)."""
    from colenv.models.column.transfer import transfer_g

    u = torch.tensor([-3.0, -0.05, 0.02, 0.4, 2.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(transfer_g, (u,))
