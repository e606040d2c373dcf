"""The native kernel's SDE path (rk4exp step, then the noise increment on v): the same states
and pathwise gradients as the torch fast SDE path given the same increments, exactly the ODE
with zero noise, exactly reproducible from a seed, and what the CPU defaults dispatch to."""

import pytest
import torch

from colenv import SolverConfig, rollout
from colenv.models import ColumnNetwork, NetworkSpec
from colenv.models.column import integrators, native
from colenv.models.column.integrators import _filter_weights, noise_increments, noise_scale
from tests.test_native import _grads, kernel_args, parity_spec, trials, xor_spec

pytestmark = pytest.mark.skipif(
    not native.available(), reason=f"native kernel unavailable: {native.unavailable_reason()}"
)


def sde(kernel: str = "auto", step_ms: float = 0.5, **fast) -> SolverConfig:
    return SolverConfig("rk4exp", step_ms=step_ms, sde=True, fast={"kernel": kernel, **fast})


def noisy(spec, noise_std: float = 1.0) -> ColumnNetwork:
    torch.manual_seed(0)
    return ColumnNetwork(spec=spec.model_copy(update={"noise_std": noise_std}))


@pytest.mark.parametrize("batch", [1, 5, 17])
@pytest.mark.parametrize("spec", [parity_spec, xor_spec])
def test_native_sde_equals_torch_sde(spec, batch):
    """Same seed, same increments (noise_increments): every tile width gives the torch path's
    noisy states to float32 rounding. (At noise_std = 2 the parity network is driven to
    ~1000 Hz and chaotic: rounding differences grow to O(1) within 50 ms; compared at 0.5.)"""
    net = noisy(spec(), noise_std=0.5)
    stim, t = trials(net, batch, 61)
    with torch.no_grad():
        nat = rollout(net, stim, t, sde("native"), seed=3).states
        tor = rollout(net, stim, t, sde("torch"), seed=3).states
        ode = rollout(net, stim, t, SolverConfig("rk4exp")).states
    torch.testing.assert_close(nat, tor, rtol=1e-4, atol=1e-5 * float(tor.abs().max()))
    # the noise did something: v departs from the ODE by about noise_std
    P = net.n_pop
    assert float((nat[-1, :, :P] - ode[-1, :, :P]).std()) > 0.1


@pytest.mark.parametrize("segment", [0, 7])
def test_native_sde_gradient_equals_torch_adjoint(segment):
    """Pathwise gradients (y0, stimulus, every trainable weight) of the native adjoint under
    noise equal the torch discrete adjoint's under the same increments (itself checked against
    autograd in tests/test_fast.py)."""
    net = noisy(xor_spec(), noise_std=0.5)
    stim, t = trials(net, 5, 41)
    y0 = net.initial_state(5)
    gy = torch.randn(41, 5, net.state_size, generator=torch.Generator().manual_seed(5))

    def grads(kernel, **fast):
        gen = torch.Generator().manual_seed(11)
        y = y0.detach().clone().requires_grad_()
        s = stim.detach().clone().requires_grad_()
        params = [p for p in net.parameters() if p.requires_grad]
        states = rollout(net, s, t, sde(kernel, **fast), y0=y, generator=gen).states
        return states.detach(), torch.autograd.grad((states * gy).sum(), [y, s, *params])

    s_nat, g_nat = grads("native", checkpoint_every=segment)
    s_tor, g_tor = grads("torch")
    torch.testing.assert_close(s_nat, s_tor, rtol=1e-4, atol=1e-5 * float(s_tor.abs().max()))
    assert len(g_nat) == len(g_tor) >= 4
    for got, want in zip(g_nat, g_tor, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4 * float(want.abs().max()))


def test_zero_noise_is_the_ode_bit_for_bit():
    """noise_std = 0: the SDE rollout (forward and gradient) is the ODE's, bit for bit; and the
    kernel fed all-zero increments returns the noise-free kernel's states bit for bit."""
    net = noisy(parity_spec(), noise_std=0.0)
    stim, t = trials(net, 3, 31)
    gy = torch.ones(31, 3, net.state_size)
    s_ode, g_ode = _grads(net, stim, t, net.initial_state(3), gy, sde_off())
    s_sde, g_sde = _grads(net, stim, t, net.initial_state(3), gy, sde(), seed=0)
    assert torch.equal(s_sde, s_ode)
    for a, b in zip(g_sde, g_ode, strict=True):
        assert torch.equal(a, b)
    with torch.no_grad():
        terms = net.prepare(stim).terms
        y0 = net.initial_state(3)
        args = kernel_args(terms, 31, 2, 5e-4)
        zeros = torch.zeros(30, 2, 3, net.n_pop)
        assert torch.equal(
            native.rk4exp_forward(y0, *args, noise=zeros), native.rk4exp_forward(y0, *args)
        )


def sde_off() -> SolverConfig:
    return SolverConfig("rk4exp", step_ms=0.5)


def test_seed_reproduces_exactly_and_seeds_differ():
    net = noisy(xor_spec())
    stim, t = trials(net, 4, 51)
    with torch.no_grad():
        a = rollout(net, stim, t, sde(), seed=5).states
        b = rollout(net, stim, t, sde(), seed=5).states
        c = rollout(net, stim, t, sde(), seed=6).states
        gen = torch.Generator().manual_seed(123)
        d = rollout(net, stim, t, sde(), generator=gen).states
        gen = torch.Generator().manual_seed(123)
        e = rollout(net, stim, t, sde(), generator=gen).states
    assert torch.equal(a, b) and torch.equal(d, e)
    assert not torch.equal(a, c)
    assert float((a - c)[-1].abs().max()) > 0.1


def test_increments_are_the_exact_ou_step_of_the_right_size():
    """noise_increments: [n_int, n_sub, B, P], std noise_scale = sigma sqrt(tau (1 - e^{-2h/tau})
    / 2), drawn from the generator only."""
    net = noisy(xor_spec(), noise_std=3.0)
    stim, _ = trials(net, 64, 3)
    terms = net.prepare(stim).terms
    tau = terms.constants["tau_m"]
    assert terms.sigma == pytest.approx(3.0 * (2.0 / tau) ** 0.5)
    h = 5e-4
    scale = noise_scale(terms.sigma, tau, h)
    # exact OU step: stationary variance noise_std^2 = scale^2 / (1 - e^{-2h/tau})
    assert scale**2 / (1 - torch.exp(torch.tensor(-2 * h / tau)).item()) == pytest.approx(9.0)
    like = torch.zeros(64, net.n_pop)
    x = noise_increments(terms, 100, 2, h, like, torch.Generator().manual_seed(0))
    y = noise_increments(terms, 100, 2, h, like, torch.Generator().manual_seed(0))
    assert x.shape == (100, 2, 64, net.n_pop) and torch.equal(x, y)
    assert float(x.std()) == pytest.approx(scale, rel=0.01)


def test_compile_true_with_sde_runs_native_on_cpu_without_compiling(monkeypatch):
    """A task config's [solver.fast] compile = true with solver.sde = true runs the native
    kernel on CPU float32: nothing is compiled (no interval or chunk graph is built)."""
    net = noisy(xor_spec())
    stim, t = trials(net, 2, 21)
    calls = []
    real = native.rk4exp_rollout

    def spy(*args, **kw):
        calls.append(kw.get("noise") is not None)
        return real(*args, **kw)

    monkeypatch.setattr(native, "rk4exp_rollout", spy)
    before = len(integrators._INTERVAL_CACHE)
    cfg = SolverConfig("rk4exp", sde=True, fast={"compile": True})
    states = rollout(net, stim, t, cfg, seed=0).states
    states.sum().backward()  # with a gradient too
    assert calls == [True]
    assert len(integrators._INTERVAL_CACHE) == before


def test_noise_tensor_is_checked():
    net = ColumnNetwork(spec=NetworkSpec())
    stim, _ = trials(net, 2, 5)
    with torch.no_grad():
        terms = net.prepare(stim).terms
    y0 = net.initial_state(2)
    args = kernel_args(terms, 5, 2, 5e-4)
    with pytest.raises(ValueError, match=r"noise must be \[\*, 2, 2, 8\], got \[4, 1, 2, 8\]"):
        native.rk4exp_forward(y0, *args, noise=torch.zeros(4, 1, 2, 8))
    with pytest.raises(ValueError, match=r"noise must be \[>= 4, 2, 2, 8\]"):
        native.rk4exp_forward(y0, *args, noise=torch.zeros(3, 2, 2, 8))
    with pytest.raises(ValueError, match="noise must be float32"):
        native.rk4exp_forward(y0, *args, noise=torch.zeros(4, 2, 2, 8, dtype=torch.float64))
    assert _filter_weights  # the kernel's r filter weights come from the torch path's helper
