"""The fast path (colenv.fast): accuracy against a tight dopri5 reference, convergence order,
gradients against finite differences, checkpointing and compile equal to eager."""

import math
import warnings

import pytest
import torch

from colenv import SolverConfig, fast, rollout
from colenv.fast import fast_rollout, rate_g
from colenv.models import AreaSpec, ColumnNetwork, ConnectionSpec, NetworkSpec
from colenv.models.transfer import transfer_g

METHODS = ("expeuler", "exprk2", "rk4exp")


def decision_spec(**kw) -> NetworkSpec:
    kw = {"lateral": ConnectionSpec(enabled=True), **kw}
    return NetworkSpec(areas=(AreaSpec("mt", 2),), n_inputs=2, input_mode="one_to_one", **kw)


def step_stimulus(T: int, dtype=torch.float64) -> torch.Tensor:
    """[T, 2, 2]: rest for the first third, then 20/0 Hz (trial 0) and 15/15 Hz (trial 1)."""
    stim = torch.zeros(T, 2, 2, dtype=dtype)
    stim[T // 3 :, 0, 0] = 20.0
    stim[T // 3 :, 1] = 15.0
    return stim


@pytest.fixture(scope="module")
def reference():
    """Tight float64 dopri5 on the 2-column decision network, 60 ms on a 1 ms grid."""
    net = ColumnNetwork(spec=decision_spec(), dtype=torch.float64)
    T = 61
    stim, t = step_stimulus(T), torch.arange(T, dtype=torch.float64)
    ref = rollout(net, stim, t, SolverConfig(method="dopri5", rtol=1e-9, atol=1e-9))
    return net, stim, t, ref.states


def test_rate_g_matches_transfer_g_and_has_its_gradient():
    u = torch.cat(
        [
            torch.linspace(-80.0, 80.0, 20001, dtype=torch.float64),
            torch.tensor([0.0, 1e-12, -1e-12, 1e-3, -1e-3, 1e-2, -1e-2], dtype=torch.float64),
        ]
    )
    a, b = u.clone().requires_grad_(), u.clone().requires_grad_()
    ga, gb = transfer_g(a), rate_g(b)
    torch.testing.assert_close(gb, ga, rtol=1e-12, atol=1e-12)
    ga.sum().backward()
    gb.sum().backward()
    assert torch.isfinite(b.grad).all()
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-10, atol=1e-12)
    x = (torch.randn(40, dtype=torch.float64) * 4).requires_grad_()
    assert torch.autograd.gradcheck(rate_g, (x,))


def test_rk4exp_float32_within_half_hz_of_reference(reference):
    """The accuracy contract: float32 rk4exp at 0.5 ms within 0.5 Hz, every population."""
    net64, stim, t, ref = reference
    net = ColumnNetwork(spec=decision_spec())
    states = rollout(net, stim.float(), t.float(), SolverConfig("rk4exp", step_ms=0.5)).states
    P = net.n_pop
    err = (states[..., 2 * P :].double() - ref[..., 2 * P :]).abs()
    assert float(err.max()) < 0.5
    readout_err = (net.readout(states).double() - net64.readout(ref)).abs()
    assert float(readout_err.max()) < 0.5


@pytest.mark.parametrize(
    "method, step_ms, tol_hz",
    [("expeuler", 0.125, 0.1), ("exprk2", 0.25, 0.05), ("rk4exp", 0.5, 0.01)],
)
def test_float64_rates_close_to_reference(reference, method, step_ms, tol_hz):
    net, stim, t, ref = reference
    states = rollout(net, stim, t, SolverConfig(method, step_ms=step_ms)).states
    P = net.n_pop
    assert float((states[..., 2 * P :] - ref[..., 2 * P :]).abs().max()) < tol_hz


@pytest.mark.parametrize("method, order", [("expeuler", 1), ("exprk2", 2), ("rk4exp", 4)])
def test_convergence_order(reference, method, order):
    """Error (all states, float64) shrinks as step^order when the step halves."""
    net, stim, t, ref = reference
    errs = []
    for step_ms in (0.5, 0.25, 0.125):
        states = rollout(net, stim, t, SolverConfig(method, step_ms=step_ms)).states
        errs.append(float((states - ref).abs().max()))
    observed = math.log2(errs[-2] / errs[-1])
    assert order - 0.3 < observed < order + 0.8, (errs, observed)


def _one_column_problem():
    spec = NetworkSpec(
        n_inputs=1,
        recurrent=ConnectionSpec(trainable=True),
        input=ConnectionSpec(pairs=(("input", "L4e"), ("input", "L4i")), trainable=True),
    )
    net = ColumnNetwork(spec=spec, dtype=torch.float64)
    T = 21
    stim = torch.zeros(T, 2, 1, dtype=torch.float64)
    stim[5:, 0] = 20.0
    stim[10:, 1] = 10.0
    return net, stim, T


def _loss(net, stim, T, method, y0, **kw):
    dyn = net.prepare(stim)
    states = fast_rollout(dyn, y0, T, 2, 0.5e-3, method, **kw)
    return (net.readout(states[-5:]) ** 2).sum() + net.rates(states[-1]).sum()


@pytest.mark.parametrize("method", METHODS)
def test_gradient_matches_finite_differences(method):
    net, stim, T = _one_column_problem()
    y0 = net.initial_state(2)  # fixed: rest_state depends on the weights outside autograd
    loss = _loss(net, stim, T, method, y0)
    loss.backward()
    grad_rec, grad_in = net.recurrent.weight.grad.clone(), net.input.weight.grad.clone()
    checks = [(net.recurrent.weight, grad_rec, (0, 2)), (net.recurrent.weight, grad_rec, (4, 1))]
    checks += [(net.input.weight, grad_in, (2, 0)), (net.input.weight, grad_in, (3, 0))]
    for param, grad, idx in checks:
        eps = 1e-6 * max(abs(float(param.detach()[idx])), 1e-3)
        with torch.no_grad():
            orig = float(param[idx])
            param[idx] = orig + eps
            up = float(_loss(net, stim, T, method, y0))
            param[idx] = orig - eps
            down = float(_loss(net, stim, T, method, y0))
            param[idx] = orig
        fd = (up - down) / (2 * eps)
        assert float(grad[idx]) == pytest.approx(fd, rel=1e-5, abs=1e-8), (idx, fd)


@pytest.mark.parametrize("method", METHODS)
def test_checkpointing_equals_plain_backward(method):
    net, stim, T = _one_column_problem()
    y0 = net.initial_state(2)
    loss = _loss(net, stim, T, method, y0)
    loss.backward()
    g_plain = net.recurrent.weight.grad.clone()
    net.zero_grad()
    loss_ck = _loss(net, stim, T, method, y0, checkpoint_every=7)
    loss_ck.backward()
    assert float(loss_ck.detach()) == float(loss.detach())
    torch.testing.assert_close(net.recurrent.weight.grad, g_plain, rtol=1e-12, atol=0)


def test_nfe_counts_stages():
    net, stim, T = _one_column_problem()
    for method, per_step in (("expeuler", 1), ("exprk2", 2), ("rk4exp", 4)):
        dyn = net.prepare(stim)
        fast_rollout(dyn, net.initial_state(2), T, 2, 0.5e-3, method)
        assert dyn.nfe == (T - 1) * 2 * per_step


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch):
    def broken_compile(fn, **kw):
        def run(*args):
            raise RuntimeError("no compiler here")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(fast, "_INTERVAL_CACHE", {})
    net, stim, T = _one_column_problem()
    eager = fast_rollout(net.prepare(stim), net.initial_state(2), T, 2, 0.5e-3, "exprk2")
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        compiled = fast_rollout(
            net.prepare(stim), net.initial_state(2), T, 2, 0.5e-3, "exprk2", compile=True
        )
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


def test_interval_function_is_cached_per_configuration():
    net, stim, T = _one_column_problem()
    c = net.constants()
    like = torch.zeros(2, net.n_pop, dtype=torch.float64)
    f1 = fast.interval_function("rk4exp", 2, 5e-4, c, compile=False, like=like)
    assert fast.interval_function("rk4exp", 2, 5e-4, c, compile=False, like=like) is f1
    assert fast.interval_function("rk4exp", 1, 5e-4, c, compile=False, like=like) is not f1
    assert fast.interval_function("rk4exp", 2, 5e-4, c, compile=False, like=like[:1]) is not f1


@pytest.mark.slow
@pytest.mark.parametrize("method", ["exprk2", "rk4exp"])
def test_compiled_equals_eager(method):
    """torch.compile of an interval: same states and gradients as eager (float32 rounding)."""
    net = ColumnNetwork(spec=decision_spec(lateral=ConnectionSpec(enabled=True, trainable=True)))
    T = 41
    stim, t = step_stimulus(T, torch.float32), torch.arange(T, dtype=torch.float32)
    out = {}
    for compile in (False, True):
        net.zero_grad()
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a compile fallback fails the test
            states = rollout(net, stim, t, SolverConfig(method, step_ms=0.5, compile=compile))
            net.readout(states.states[-10:]).sum().backward()
        out[compile] = (states.states.detach(), net.lateral.weight.grad.clone())
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(out[True][1], out[False][1], rtol=1e-3, atol=1e-6)
