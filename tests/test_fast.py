"""The column model's fast schemes (colenv.models.column.integrators, run through
Dynamics.fast_rollout): accuracy against a tight dopri5 reference, convergence order, gradients
against finite differences, checkpointing and compile equal to eager, the discrete adjoint."""

import math
import warnings

import pytest
import torch

from colenv import AdaptiveOptions, FastOptions, SolverConfig, rollout
from colenv.errors import ConfigError
from colenv.models import AreaSpec, ColumnNetwork, ConnectionSpec, NetworkSpec
from colenv.models.column import integrators as fast
from colenv.models.column.network import ColumnTerms

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
    tight = AdaptiveOptions(rtol=1e-9, atol=1e-9)
    ref = rollout(net, stim, t, SolverConfig(method="dopri5", adaptive=tight))
    return net, stim, t, ref.states


def fast_rollout(dyn, y0, n_points, n_sub, h, method, *, noise=False, generator=None, **options):
    """``dyn.fast_rollout`` with the FastOptions given as keywords."""
    return dyn.fast_rollout(
        y0, n_points, n_sub, h, method, FastOptions(**options), noise=noise, generator=generator
    )


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
        dyn.fast_rollout(net.initial_state(2), T, 2, 0.5e-3, method)
        assert dyn.nfe == (T - 1) * 2 * per_step == (T - 1) * 2 * fast.STAGES[method]


@pytest.fixture
def no_compiler(monkeypatch):
    """torch.compile returns functions that raise, and the step cache starts empty."""

    def broken_compile(fn, **kw):
        def run(*args):
            raise RuntimeError("no compiler here")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(fast, "_INTERVAL_CACHE", {})


def test_compile_failure_falls_back_to_eager_with_a_warning(no_compiler):
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
    """torch.compile of an interval: same states and gradients as eager (float32 rounding; the
    torch kernel: in float32 on CPU rk4exp would otherwise run on colenv.models.column.native)."""
    net = ColumnNetwork(spec=decision_spec(lateral=ConnectionSpec(enabled=True, trainable=True)))
    T = 41
    stim, t = step_stimulus(T, torch.float32), torch.arange(T, dtype=torch.float32)
    out = {}
    for compile in (False, True):
        net.zero_grad()
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a compile fallback fails the test
            cfg = SolverConfig(method, fast={"compile": compile, "kernel": "torch"})
            states = rollout(net, stim, t, cfg)
            net.readout(states.states[-10:]).sum().backward()
        out[compile] = (states.states.detach(), net.lateral.weight.grad.clone())
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(out[True][1], out[False][1], rtol=1e-3, atol=1e-6)


# ----------------------------------------------------------------------------- discrete adjoint
def _grads(net, stim, y0, gy, **kw):
    """States and d(sum(states * gy))/d(y0, trainable params) of one fast rk4exp rollout."""
    dyn = net.prepare(stim)
    states = fast_rollout(dyn, y0, stim.shape[0], 2, 0.5e-3, "rk4exp", **kw)
    params = [p for p in net.parameters() if p.requires_grad]
    return states.detach(), torch.autograd.grad((states * gy).sum(), [y0, *params])


def _adjoint_problem(T: int = 21):
    """Decision network (lateral + input weights train), float64, a step and a ramp of input."""
    spec = decision_spec(
        lateral=ConnectionSpec(enabled=True, trainable=True),
        input=ConnectionSpec(pairs=(("input", "L4e"), ("input", "L4i")), trainable=True),
    )
    net = ColumnNetwork(spec=spec, dtype=torch.float64)
    stim = step_stimulus(T)
    stim[T // 2 :, 1, 0] = torch.linspace(5.0, 25.0, T - T // 2, dtype=torch.float64)
    y0 = net.initial_state(2).requires_grad_()
    gy = torch.randn(
        T, 2, net.state_size, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    return net, stim, y0, gy


@pytest.mark.parametrize("unroll", [1, 3, 7, 20, 32])
def test_discrete_adjoint_equals_autograd(unroll):
    """Same states and gradients (y0, weights, input weights) as autograd through the steps,
    also when the 20 intervals are not a multiple of the chunk (3, 7, 32: padded last chunk)."""
    net, stim, y0, gy = _adjoint_problem()
    s_ref, g_ref = _grads(net, stim, y0, gy, backward="autograd")
    s, g = _grads(net, stim, y0, gy, backward="discrete_adjoint", unroll=unroll)
    assert s.shape == s_ref.shape
    torch.testing.assert_close(s, s_ref, rtol=1e-12, atol=1e-10)
    for got, want in zip(g, g_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9 * float(want.abs().max()))


def test_discrete_adjoint_gradcheck():
    """torch.autograd.gradcheck of the adjoint rollout (float64, one column, 3 intervals in
    chunks of 2) in y0, the weights and the drive."""
    net = ColumnNetwork(dtype=torch.float64)
    c, P = net.constants(), net.n_pop
    w0 = (net.weight_matrix() * c["gain"]).detach()
    drive0 = (net.bg_drive * c["gain"]).expand(4, 1, P).clone()
    drive0[2:, 0, 2] *= 1.5  # a step on L4e
    y0 = net.initial_state(1)

    def run(y, w_t, drive):
        terms = ColumnTerms(w_t=w_t, drive=drive, kappa=net.kappa, constants=c)
        options = FastOptions(backward="discrete_adjoint", unroll=2)
        return fast.fast_rollout(terms, y, 4, 2, 0.5e-3, "rk4exp", options)[1:]

    inputs = (
        y0.clone().requires_grad_(),
        w0.t().clone().requires_grad_(),
        drive0.requires_grad_(),
    )
    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("checkpoint_every", [5, 7, 50])
def test_discrete_adjoint_checkpointing_equals_stored(checkpoint_every):
    """checkpoint_every recomputes segments (whole chunks) in backward: identical results."""
    net, stim, y0, gy = _adjoint_problem()
    s_ref, g_ref = _grads(net, stim, y0, gy, unroll=3)
    s, g = _grads(net, stim, y0, gy, unroll=3, checkpoint_every=checkpoint_every)
    torch.testing.assert_close(s, s_ref, rtol=0, atol=0)
    for got, want in zip(g, g_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_discrete_adjoint_noise_equals_autograd():
    """SDE (noise kicks on v): the adjoint path draws the same noise and gets autograd's
    gradient; it also allows checkpointing with noise."""
    net, stim, y0, gy = _adjoint_problem()
    kw = dict(noise=True)
    s_ref, g_ref = _grads(net, stim, y0, gy, backward="autograd", generator=_gen(), **kw)
    s, g = _grads(net, stim, y0, gy, unroll=7, generator=_gen(), **kw)
    s_ck, g_ck = _grads(net, stim, y0, gy, unroll=3, checkpoint_every=6, generator=_gen(), **kw)
    torch.testing.assert_close(s, s_ref, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(s_ck, s, rtol=0, atol=0)
    for got, got_ck, want in zip(g, g_ck, g_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9 * float(want.abs().max()))
        torch.testing.assert_close(got_ck, got, rtol=1e-12, atol=1e-12 * float(got.abs().max()))


def _gen():
    return torch.Generator().manual_seed(7)


def test_discrete_adjoint_without_grad_matches():
    """No gradient needed: the chunked forward alone, same states."""
    net, stim, y0, gy = _adjoint_problem()
    s_ref, _ = _grads(net, stim, y0, gy, backward="autograd")
    with torch.no_grad():
        s = fast_rollout(net.prepare(stim), y0, stim.shape[0], 2, 0.5e-3, "rk4exp", unroll=7)
    torch.testing.assert_close(s, s_ref, rtol=1e-12, atol=1e-10)


def test_discrete_adjoint_float32_matches_autograd():
    """float32 (as trained): gradients within float rounding of autograd's (the torch kernel;
    tests/test_native.py checks the native one)."""
    net, stim, y0, gy = _adjoint_problem()
    net = net.float()
    stim, y0, gy = stim.float(), y0.detach().float().requires_grad_(), gy.float()
    _, g_ref = _grads(net, stim, y0, gy, backward="autograd")
    _, g = _grads(net, stim, y0, gy, unroll=4, kernel="torch")
    for got, want in zip(g, g_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_kappa_gradient_falls_back_to_autograd():
    """The adjoint has no kappa gradient: "auto" uses autograd then, "discrete_adjoint" says so."""
    net, stim, y0, gy = _adjoint_problem()
    net.kappa.requires_grad_(True)
    dyn = net.prepare(stim)
    states = fast_rollout(dyn, y0, stim.shape[0], 2, 0.5e-3, "rk4exp")
    (g,) = torch.autograd.grad((states * gy).sum(), [net.kappa])
    assert torch.isfinite(g).all() and float(g.abs().max()) > 0
    with pytest.raises(ConfigError, match="no gradient for kappa"):
        fast_rollout(
            net.prepare(stim), y0, stim.shape[0], 2, 0.5e-3, "rk4exp", backward="discrete_adjoint"
        )


def test_solver_config_validates_backward_and_unroll():
    with pytest.raises(
        ConfigError, match="solver.fast.backward = 'adjoint': Input should be 'auto'"
    ):
        SolverConfig("rk4exp", fast={"backward": "adjoint"})
    with pytest.raises(ConfigError, match="solver.fast applies to the fast methods"):
        SolverConfig("dopri5", fast={"backward": "autograd"})
    with pytest.raises(ConfigError, match="implemented for rk4exp, exprb2, not 'exprk2'"):
        SolverConfig("exprk2", fast={"backward": "discrete_adjoint"})
    with pytest.raises(ConfigError, match="solver.fast.unroll = -2"):
        SolverConfig("rk4exp", fast={"unroll": -2})
    with pytest.raises(ConfigError, match="unroll = 4: applies to rk4exp's discrete-adjoint torch path"):
        SolverConfig("rk4exp", fast={"backward": "autograd", "unroll": 4})
    with pytest.raises(ConfigError, match="unknown key 'solver.fast.unrol'"):
        SolverConfig("rk4exp", fast={"unrol": 4})
    cfg = SolverConfig("rk4exp", fast={"backward": "discrete_adjoint", "unroll": 5})
    assert (cfg.fast.backward, cfg.fast.unroll) == ("discrete_adjoint", 5)


def test_fast_rollout_checks_its_options_against_the_method():
    net, stim, T = _one_column_problem()
    dyn = net.prepare(stim)
    with pytest.raises(ConfigError, match="implemented for rk4exp, exprb2, not 'expeuler'"):
        fast_rollout(
            dyn, net.initial_state(2), T, 2, 0.5e-3, "expeuler", backward="discrete_adjoint"
        )
    with pytest.raises(ConfigError, match="unknown fast method 'rk5'"):
        fast_rollout(dyn, net.initial_state(2), T, 2, 0.5e-3, "rk5")


def test_rollout_passes_backward_and_unroll():
    """rollout() with the new options: same states either way, adjoint gradient = autograd's."""
    net, stim, y0, gy = _adjoint_problem()
    t = torch.arange(stim.shape[0], dtype=torch.float64)
    out = {}
    for cfg in (
        SolverConfig("rk4exp", fast={"backward": "autograd"}),
        SolverConfig("rk4exp", fast={"backward": "discrete_adjoint", "unroll": 6}),
    ):
        net.zero_grad()
        states = rollout(net, stim, t, cfg, y0=y0.detach()).states
        (states * gy).sum().backward()
        out[cfg.fast.backward] = (states.detach(), net.lateral.weight.grad.clone())
    torch.testing.assert_close(
        out["discrete_adjoint"][0], out["autograd"][0], rtol=1e-12, atol=1e-10
    )
    torch.testing.assert_close(out["discrete_adjoint"][1], out["autograd"][1], rtol=1e-9, atol=0)


def test_adjoint_compile_failure_falls_back_to_eager_with_a_warning(no_compiler):
    net, stim, y0, gy = _adjoint_problem()
    s_ref, g_ref = _grads(net, stim, y0, gy, unroll=4)
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        s, g = _grads(net, stim, y0, gy, unroll=4, compile=True)
    torch.testing.assert_close(s, s_ref, rtol=0, atol=0)
    for got, want in zip(g, g_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.slow
def test_compiled_adjoint_equals_eager():
    """torch.compile'd chunks (forward with stores, backward, forward alone), a trial whose 40
    intervals are not a multiple of the chunk: same states and gradients as eager."""
    net = ColumnNetwork(spec=decision_spec(lateral=ConnectionSpec(enabled=True, trainable=True)))
    T = 41
    stim, t = step_stimulus(T, torch.float32), torch.arange(T, dtype=torch.float32)
    out = {}
    for compile in (False, True):
        cfg = SolverConfig("rk4exp", fast={"compile": compile, "unroll": 6, "kernel": "torch"})
        net.zero_grad()
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a compile fallback fails the test
            states = rollout(net, stim, t, cfg).states
            net.readout(states[-10:]).sum().backward()
            with torch.no_grad():
                plain = rollout(net, stim, t, cfg).states
        out[compile] = (states.detach(), plain, net.lateral.weight.grad.clone())
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(out[True][1], out[False][1], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(out[True][2], out[False][2], rtol=1e-3, atol=1e-6)
