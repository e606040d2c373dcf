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
    """float32 cancellation in the naive form gave errors up to 2.6 Hz (SCIENCE.md §3)."""
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
