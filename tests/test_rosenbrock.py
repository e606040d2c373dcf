"""ROS2, the column model's linearly implicit fast step (colenv.models.column.rosenbrock).

Expected values come from closed-form solutions (a linear system's matrix exponential), a
float64 dopri5 reference and finite differences, not from the scheme's own output.

The exact linear test problem: for u = da (v - a) - db >= 60 the transfer function is
g(u) / d = (u + q) / d with q = 60 exp(-60) ~ 5e-25, i.e. exactly linear in float64, so a
network kept there obeys y' = A y + b for y = (v, a, r) and its solution is
y* + expm(A t) (y0 - y*) with y* = -A^-1 b.
"""

from __future__ import annotations

import math

import pytest
import torch

from colenv.errors import ConfigError
from colenv.models import ColumnNetwork
from colenv.models.column import integrators
from colenv.models.column.network import ColumnTerms
from colenv.models.column.rosenbrock import GAMMA, filter_weights
from colenv.solve import FastOptions, SolverConfig, rollout

F64 = torch.float64
# the column model's constants (ColumnNetwork.constants()) without the rate ceiling
C = {
    "tau_s": 0.5e-3,
    "tau_m": 10e-3,
    "tau_a": 1.0,
    "gain": 1.0,
    "da": 0.0089 * 48.0,
    "db": 0.0089 * 981.0,
    "d": 0.0089,
    "max_rate": 0.0,
}
SLOPE = C["da"] / C["d"]  # dphi / dx in the linear regime (48 Hz per unit of x)


def _linear_terms(w_t: torch.Tensor, kappa: torch.Tensor, drive: torch.Tensor) -> ColumnTerms:
    return ColumnTerms(w_t=w_t, drive=drive, kappa=kappa, constants=dict(C))


def _linear_matrix(w_t, kappa):
    """(A, b-part) of y' = A y + c for y = (v, a, r) in the linear regime of the rates:
    phi = SLOPE (v - a) - db / d."""
    P = w_t.shape[0]
    W = w_t.t()  # [target, source]
    eye = torch.eye(P, dtype=F64)
    tm, ta, ts = C["tau_m"], C["tau_a"], C["tau_s"]
    A = torch.zeros(3 * P, 3 * P, dtype=F64)
    A[:P, :P] = SLOPE * W - eye / tm
    A[:P, P : 2 * P] = -SLOPE * W
    A[P : 2 * P, :P] = torch.diag(kappa) * SLOPE / ta
    A[P : 2 * P, P : 2 * P] = -(eye + torch.diag(kappa) * SLOPE) / ta
    A[2 * P :, :P] = eye * SLOPE / ts
    A[2 * P :, P : 2 * P] = -eye * SLOPE / ts
    A[2 * P :, 2 * P :] = -eye / ts
    return A


def _linear_problem(w_t, kappa, drive_p, y0, t_end):
    """Exact y(t_end) of the linear regime with constant drive drive_p [P]."""
    P = w_t.shape[0]
    A = _linear_matrix(w_t, kappa)
    off = C["db"] / C["d"]  # phi = SLOPE x - off
    c = torch.zeros(3 * P, dtype=F64)
    c[:P] = drive_p - off * w_t.sum(0)
    c[P : 2 * P] = -kappa * off / C["tau_a"]
    c[2 * P :] = -off / C["tau_s"]
    y_star = -torch.linalg.solve(A, c)
    return y_star + torch.linalg.matrix_exp(A * t_end) @ (y0 - y_star)


def _run(method, terms, y0, n_int, n_sub, h, **fast):
    options = FastOptions(kernel="torch", **fast) if method == "rk4exp" else FastOptions(**fast)
    with torch.no_grad():
        return integrators.fast_rollout(terms, y0[None], n_int + 1, n_sub, h, method, options)


def _column(seed: int, stiff: float | None = None):
    """One column (8 populations) with small random couplings and kappa; ``stiff``: one
    population's self-inhibition giving it an eigenvalue near -stiff (1/s)."""
    g = torch.Generator().manual_seed(seed)
    P = 8
    w_t = torch.randn(P, P, generator=g, dtype=F64) * 0.3
    if stiff is not None:
        w_t[0, 0] = -stiff / SLOPE
    kappa = torch.rand(P, generator=g, dtype=F64) * 0.01
    # a rest point deep in the linear regime: x = v - a ~ 400 (u ~ 160)
    x_star = 400.0 + 20.0 * torch.rand(P, generator=g, dtype=F64)
    phi_star = SLOPE * x_star - C["db"] / C["d"]
    a_star = kappa * phi_star
    v_star = x_star + a_star
    drive_p = v_star / C["tau_m"] - phi_star @ w_t
    y0 = torch.cat([v_star + 30.0 * torch.rand(P, generator=g, dtype=F64), a_star, phi_star])
    return w_t, kappa, drive_p, y0


def _errors(method, w_t, kappa, drive_p, y0, t_end, steps):
    terms = _linear_terms(w_t, kappa, drive_p.expand(1, 1, -1).clone())
    exact = _linear_problem(w_t, kappa, drive_p, y0, t_end)
    errs = []
    for n_sub in steps:
        out = _run(method, terms, y0, 1, n_sub, t_end / n_sub)
        errs.append(float((out[-1, 0] - exact).abs().max()))
    return errs


def test_filter_weights_integrate_a_linear_rate_exactly():
    tau, h = 0.5e-3, 0.37e-3
    e, w0, w1 = filter_weights(tau, h)
    # r' = (p(t) - r) / tau with p linear from 2 to 5 over h, r(0) = 1: closed form
    p0, p1 = 2.0, 5.0
    s = (p1 - p0) / h
    exact = p0 + s * h - s * tau + (1.0 - p0 + s * tau) * math.exp(-h / tau)
    assert e * 1.0 + w0 * p0 + w1 * p1 == pytest.approx(exact, rel=1e-13)


def test_order_two_on_the_exact_linear_problem():
    w_t, kappa, drive_p, y0 = _column(0)
    errs = _errors("ros2", w_t, kappa, drive_p, y0, 2e-3, (8, 16, 32, 64))
    ratios = [errs[i] / errs[i + 1] for i in range(3)]
    # order 2: the error falls 4x per halving of h (order 1 would be 2x, order 3 8x)
    assert all(3.5 < q < 4.6 for q in ratios), (errs, ratios)


def test_stiff_linear_problem_stable_and_accurate_at_half_a_millisecond():
    # eigenvalue -1e5 1/s (h lambda = -50 at 0.5 ms) plus the slow modes of tau_m, tau_a
    w_t, kappa, drive_p, y0 = _column(1, stiff=1e5)
    eig = torch.linalg.eigvals(_linear_matrix(w_t, kappa)).real
    assert float(eig.min()) < -0.9e5
    t_end = 20e-3
    exact = _linear_problem(w_t, kappa, drive_p, y0, t_end)
    terms = _linear_terms(w_t, kappa, drive_p.expand(40, 1, -1).clone())
    ros2 = _run("ros2", terms, y0, 40, 1, 0.5e-3)
    rk4exp = _run("rk4exp", terms, y0, 40, 1, 0.5e-3)
    scale = float((exact - y0).abs().max())  # how far the solution moved
    assert float((ros2[-1, 0] - exact).abs().max()) < 0.01 * scale
    # RK4 at h lambda = -50 is unstable: the stiff population swings out of the linear
    # regime (its rate floors at 0, which is all that bounds it) and ends far off
    rk4_err = float((rk4exp[-1, 0] - exact).abs().nan_to_num(math.inf).max())
    assert rk4_err > 10.0 * scale


def test_w_method_keeps_order_two_without_the_off_block_jacobian():
    # two columns coupled only across columns (lateral-like entries, left out of W)
    g = torch.Generator().manual_seed(3)
    w_a, k_a, d_a, y_a = _column(4)
    w_b, k_b, d_b, y_b = _column(5)
    P = 16
    w_t = torch.zeros(P, P, dtype=F64)
    w_t[:8, :8], w_t[8:, 8:] = w_a, w_b
    cross = torch.randn(8, 8, generator=g, dtype=F64) * 0.2
    w_t[:8, 8:], w_t[8:, :8] = cross, cross.t()
    kappa = torch.cat([k_a, k_b])
    x = torch.cat([y_a[:8] - y_a[8:16], y_b[:8] - y_b[8:16]])
    phi = SLOPE * x - C["db"] / C["d"]
    v, a = x + kappa * phi, kappa * phi
    drive_p = v / C["tau_m"] - phi @ w_t
    y0 = torch.cat([v + 5.0, a, phi])
    errs = _errors("ros2", w_t, kappa, drive_p, y0, 2e-3, (8, 16, 32))
    ratios = [errs[i] / errs[i + 1] for i in range(2)]
    assert all(3.5 < q < 4.6 for q in ratios), (errs, ratios)


def _network(**spec) -> ColumnNetwork:
    spec = {
        "areas": [{"name": "a", "n_columns": 2, "sizes": "mt"}],
        "n_inputs": 2,
        "input_mode": "one_to_one",
        "lateral": {"enabled": True, "init_k": 2000, "trainable": True},
        **spec,
    }
    return ColumnNetwork(spec=spec, dtype=F64)


def _stimulus(T=60, B=2, on=10):
    stim = torch.zeros(T, B, 2, dtype=F64)
    stim[on:, 0, 0], stim[on:, 0, 1] = 20.0, 10.0
    stim[on:, 1, 1] = 15.0
    return stim, torch.arange(T, dtype=F64)


def test_column_network_against_dopri5():
    net = _network()
    stim, t_ms = _stimulus(T=40, on=5)
    with torch.no_grad():
        ref = rollout(
            net, stim, t_ms, SolverConfig("dopri5", adaptive={"rtol": 1e-9, "atol": 1e-9})
        )
        errs = {}
        for step in (0.25, 0.125):
            out = rollout(net, stim, t_ms, SolverConfig("ros2", step_ms=step))
            errs[step] = float((net.rates(out.states) - net.rates(ref.states)).abs().max())
    assert errs[0.125] < 0.5, errs  # Hz
    assert errs[0.25] / errs[0.125] > 2.5, errs  # converging at about order 2


# The linearised steps, ros2 and exprb2 (tests/test_exprb.py), share the tests below: the
# gradient of the discrete scheme, the SDE kick, gated networks. exprb2 with short onset
# windows keeps the small test networks cheap; `gated_ms` is the step each needs there.
LINEARISED = {
    "ros2": {"fast": {}, "gated_ms": 0.125},
    "exprb2": {"fast": {"onset_refine": 2, "onset_window_ms": 2.0}, "gated_ms": 0.25},
}


def _solver(method: str, step_ms: float, sde: bool = False) -> SolverConfig:
    return SolverConfig(method, step_ms=step_ms, sde=sde, fast=LINEARISED[method]["fast"])


@pytest.mark.parametrize("method", LINEARISED)
def test_gradient_matches_finite_differences(method):
    net = _network(input={"trainable": True}, recurrent={"trainable": True})
    stim, t_ms = _stimulus(T=30, on=5)
    solver = _solver(method, 0.5)
    target = torch.linspace(0.0, 5.0, 30, dtype=F64)[:, None, None]
    y0 = net.initial_state(2)  # fixed: the rest state itself depends on the weights

    def loss():
        out = rollout(net, stim, t_ms, solver, y0=y0)
        return ((net.readout(out.states) - target) ** 2).mean()

    net.zero_grad()
    loss().backward()
    checked = 0
    for name, p in net.named_parameters():
        grad = p.grad
        if grad is None:
            continue
        checked += 1
        idx = grad.abs().flatten().argmax()
        eps = 1e-6
        with torch.no_grad():
            old = float(p.view(-1)[idx])
            p.view(-1)[idx] = old + eps
            up = float(loss())
            p.view(-1)[idx] = old - eps
            down = float(loss())
            p.view(-1)[idx] = old
        fd = (up - down) / (2 * eps)
        assert float(grad.view(-1)[idx]) == pytest.approx(fd, rel=1e-5), name
    assert checked == 3  # recurrent, lateral and input weights


@pytest.mark.parametrize("method", LINEARISED)
@torch.no_grad()
def test_sde_zero_noise_is_the_ode_and_a_seed_reproduces(method):
    stim, t_ms = _stimulus(T=25, on=5)
    net0 = _network(noise_std=0.0)
    ode = rollout(net0, stim, t_ms, _solver(method, 0.5)).states
    sde0 = rollout(net0, stim, t_ms, _solver(method, 0.5, sde=True), seed=3).states
    assert torch.equal(ode, sde0)
    net = _network(noise_std=1.0)
    solver = _solver(method, 0.5, sde=True)
    a = rollout(net, stim, t_ms, solver, seed=3).states
    b = rollout(net, stim, t_ms, solver, seed=3).states
    c = rollout(net, stim, t_ms, solver, seed=4).states
    assert torch.equal(a, b) and not torch.equal(a, c)
    P = net.n_pop
    # the kicks act on v only: with no noise a, r follow the ODE; here they differ a little
    assert 0.05 < float((a[:, :, :P] - ode[:, :, :P]).abs().max()) < 20.0


@pytest.mark.parametrize("method", LINEARISED)
@torch.no_grad()
def test_sde_kicks_are_the_shared_increments(method):
    # the same increments as the other fast methods: each and rk4exp at a small step agree
    stim, t_ms = _stimulus(T=10, on=3)
    net = _network(noise_std=1.0)
    a = rollout(net, stim, t_ms, _solver(method, 0.1, sde=True), seed=7).states
    b = rollout(
        net, stim, t_ms, SolverConfig("rk4exp", step_ms=0.1, sde=True, fast={"kernel": "torch"}),
        seed=7,
    ).states  # fmt: skip
    assert float((net.rates(a) - net.rates(b)).abs().max()) < 0.2


@pytest.mark.parametrize("method", LINEARISED)
def test_gated_network_against_dopri5(method):
    net = _network(gating={"pairs": [["L23e", "L23e"]], "kinds": ["recurrent"]})
    stim, t_ms = _stimulus(T=30, on=5)
    with torch.no_grad():
        ref = rollout(
            net, stim, t_ms, SolverConfig("dopri5", adaptive={"rtol": 1e-9, "atol": 1e-9})
        )
        out = rollout(net, stim, t_ms, _solver(method, LINEARISED[method]["gated_ms"]))
    assert out.states.shape[-1] == 4 * net.n_pop
    P = net.n_pop
    assert float((net.rates(out.states) - net.rates(ref.states)).abs().max()) < 0.5
    assert float((out.states[..., 3 * P :] - ref.states[..., 3 * P :]).abs().max()) < 1e-3


def test_config_errors_name_the_option():
    with pytest.raises(ConfigError, match="checkpoint_every"):
        net = _network()
        stim, t_ms = _stimulus(T=5, on=2)
        rollout(net, stim, t_ms, SolverConfig("ros2", fast={"checkpoint_every": 5}))
    with pytest.raises(ConfigError, match="discrete_adjoint"):
        SolverConfig("ros2", fast={"backward": "discrete_adjoint"})
    with pytest.raises(ConfigError, match="unroll"):
        SolverConfig("ros2", fast={"unroll": 2})


def test_gamma_is_verwer_et_al():
    # L-stability of ROS2: R(z) = (1 + (1 - 2 gamma) z + (gamma^2 - 2 gamma + 1/2) z^2)
    # / (1 - gamma z)^2 tends to (gamma^2 - 2 gamma + 1/2) / gamma^2 = 0 as z -> -inf
    assert GAMMA * GAMMA - 2 * GAMMA + 0.5 == pytest.approx(0.0, abs=1e-15)


def _native_or_skip():
    from colenv.models.column import native

    if not native.available():
        pytest.skip(f"native kernel unavailable: {native.unavailable_reason()}")


@torch.no_grad()
def test_native_forward_matches_the_torch_path():
    _native_or_skip()
    stim, t_ms = _stimulus(T=40, on=10)
    net64 = _network(noise_std=1.0)
    net32 = _network(noise_std=1.0).float()
    net32.load_state_dict(net64.state_dict())
    # ODE: against float64; SDE: against the float32 torch path (the increments are drawn in
    # the rollout's dtype, so float32 and float64 draws differ)
    for sde, net_ref, dtype in ((False, net64, F64), (True, net32, torch.float32)):
        torch_path = SolverConfig("ros2", step_ms=0.5, sde=sde, fast={"kernel": "torch"})
        ref = rollout(net_ref, stim.to(dtype), t_ms.to(dtype), torch_path, seed=2)
        solver = SolverConfig("ros2", step_ms=0.5, sde=sde, fast={"kernel": "native"})
        out = rollout(net32, stim.float(), t_ms.float(), solver, seed=2)
        err = (net32.rates(out.states).double() - net_ref.rates(ref.states).double()).abs().max()
        assert float(err) < 1e-3, (sde, float(err))  # float32 rounding, Hz


def test_native_kernel_refuses_a_gradient_and_auto_takes_torch():
    _native_or_skip()
    stim, t_ms = _stimulus(T=8, on=2)
    net = _network().float()
    stim = stim.float()
    with pytest.raises(ConfigError, match="no gradient"):
        rollout(net, stim, t_ms.float(), SolverConfig("ros2", fast={"kernel": "native"}))
    out = rollout(net, stim, t_ms.float(), SolverConfig("ros2"))
    assert out.states.requires_grad  # auto: the torch path, differentiable
