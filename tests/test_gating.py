"""The optional slow gating synapse (Wong & Wang 2006's NMDA gating; docs/science.md).

dS/dt = -S / tau_S + gamma (1 - S) phi with tau_S = 100 ms, gamma = 0.641 (phi in Hz, t in s);
a gated weight W contributes tau_s W S / (gamma tau_S) to the current instead of tau_s W phi.
The expected values below come from that equation's closed-form solution and fixed point, a
float64 dopri5 reference and finite differences, not from the scheme's own output.
"""

from __future__ import annotations

import math

import pytest
import torch

from colenv.errors import ConfigError
from colenv.models import ColumnNetwork
from colenv.models.column import integrators
from colenv.models.column.network import ColumnTerms
from colenv.models.column.transfer import rate_function
from colenv.solve import FastOptions, SolverConfig, rollout

TAU_S, GAMMA = 0.1, 0.641  # Wong & Wang (2006): NMDA gating, tau_S = 100 ms, gamma = 0.641
GATE_L23 = {"pairs": [["L23e", "L23e"]], "kinds": ["recurrent"]}
F64 = torch.float64


def _torch(**fast) -> SolverConfig:
    return SolverConfig(method="rk4exp", step_ms=0.25, fast={"kernel": "torch", **fast})


def _s_exact(t, phi, s0, tau=TAU_S, gamma=GAMMA):
    """S(t) under a constant rate phi: the linear ODE's exact solution."""
    k = 1.0 / tau + gamma * phi
    s_inf = gamma * tau * phi / (1.0 + gamma * tau * phi)
    return s_inf + (s0 - s_inf) * torch.exp(-t * k)


def _isolated(phis: list[float], s0: float, n_int: int, h_ms: float = 0.5):
    """One population per rate in ``phis`` with no coupling and no adaptation, held at
    v = u with f(u) = phi by the drive; returns (t in s, S [T, P], constants)."""
    c = ColumnNetwork(spec={"gating": GATE_L23}).constants()
    rate = rate_function(c)
    # u with f(u) = phi, by bisection on the monotone transfer function
    lo, hi = torch.full((len(phis),), -200.0, dtype=F64), torch.full((len(phis),), 200.0, dtype=F64)
    target = torch.tensor(phis, dtype=F64)
    for _ in range(200):
        mid = (lo + hi) / 2
        above = rate(mid) > target
        lo, hi = torch.where(above, lo, mid), torch.where(above, mid, hi)
    u = (lo + hi) / 2
    phi = rate(u)
    P = len(phis)
    terms = ColumnTerms(
        w_t=torch.zeros(P, P, dtype=F64),
        drive=(u / c["tau_m"]).expand(n_int + 1, 1, P).clone(),
        kappa=torch.zeros(P, dtype=F64),
        constants=c,
        w_slow_t=torch.zeros(P, P, dtype=F64),
        gate_tau=TAU_S,
        gate_gamma=GAMMA,
    )
    y0 = torch.cat([u, torch.zeros(P, dtype=F64), phi, torch.full((P,), s0, dtype=F64)])[None]
    h = h_ms * 1e-3
    states = integrators.fast_rollout(terms, y0, n_int + 1, 1, h, "rk4exp", FastOptions())
    t = torch.arange(n_int + 1, dtype=F64) * h
    return t, states[:, 0, 3 * P :], phi, terms, states


def test_s_follows_the_exact_solution_under_a_constant_rate():
    t, s, phi, _, _ = _isolated([0.5, 5.0, 15.6, 60.0], s0=0.3, n_int=800)  # 400 ms
    exact = _s_exact(t[:, None], phi[None, :], 0.3)
    tol = 1e-9
    assert float((s - exact).abs().max()) < tol
    # the tolerance separates the Wong & Wang constants from 10 % off either of them
    for other in (
        _s_exact(t[:, None], phi, 0.3, tau=1.1 * TAU_S),
        _s_exact(t[:, None], phi, 0.3, gamma=1.1 * GAMMA),
    ):
        assert float((s - other).abs().max()) > 1e4 * tol


def test_s_saturates_and_the_gated_input_saturates_at_15_6_hz():
    phis = [1.0, 10.0, 100.0, 400.0]
    # 3 s >> 1 / (1 / tau_S + gamma phi) <= 94 ms (v is held fixed, so 5 ms steps are exact)
    t, s, phi, _, _ = _isolated(phis, s0=0.0, n_int=600, h_ms=5.0)
    s_end = s[-1]
    s_inf = GAMMA * TAU_S * phi / (1 + GAMMA * TAU_S * phi)
    assert torch.allclose(s_end, s_inf, rtol=0, atol=1e-9)
    assert bool((s_end.diff() > 0).all()) and float(s_end[-1]) > 0.96
    # S read as a rate, S / (gamma tau_S): ~phi for phi << 15.6 Hz, saturating at 15.6 Hz
    as_rate = s_end / (GAMMA * TAU_S)
    assert 1 / (GAMMA * TAU_S) == pytest.approx(15.6, abs=0.01)
    assert float(as_rate[0]) == pytest.approx(float(phi[0]), rel=0.07)  # gamma tau phi = 0.064
    assert float(as_rate[-1]) == pytest.approx(15.6, rel=0.04)
    assert bool((as_rate < 1 / (GAMMA * TAU_S)).all())


def test_a_gated_weight_acts_through_s_over_gamma_tau():
    """Source 0 at a constant rate, target 1 driven only by a gated weight w from 0: at the
    fixed point v1 = tau_m (drive_1 + w S0* / (gamma tau_S)) (the current is read in the
    fast paths' units: tau_s W S / (gamma tau_S) times R / tau_m)."""
    _, _, phi, terms, _ = _isolated([40.0], s0=0.0, n_int=1)
    c = terms.constants
    u0 = float(terms.drive[0, 0, 0]) * c["tau_m"]
    w = -3.0  # an inhibitory gated input keeps the target low on the transfer function
    w_slow_t = torch.tensor([[0.0, w], [0.0, 0.0]], dtype=F64)
    n_int = 200  # 1 s in 5 ms steps: both equations are linear here, RK4's fixed point exact
    drive = torch.tensor([u0 / c["tau_m"], 0.0], dtype=F64).expand(n_int + 1, 1, 2).clone()
    terms = terms._replace(
        w_t=torch.zeros(2, 2, dtype=F64),
        w_slow_t=w_slow_t,
        drive=drive,
        kappa=torch.zeros(2, dtype=F64),
    )
    y0 = torch.zeros(1, 8, dtype=F64)
    y0[0, 0] = u0
    states = integrators.fast_rollout(terms, y0, n_int + 1, 1, 5e-3, "rk4exp", FastOptions())
    s0 = GAMMA * TAU_S * float(phi[0]) / (1 + GAMMA * TAU_S * float(phi[0]))
    expected_v1 = c["tau_m"] * w * s0 / (GAMMA * TAU_S)
    assert float(states[-1, 0, 1]) == pytest.approx(expected_v1, rel=1e-6)
    assert float(states[-1, 0, 6]) == pytest.approx(s0, rel=1e-9)  # S of the source


def _net(gating=GATE_L23, dtype=F64, **spec):
    spec = {"recurrent": {"trainable": True}, **spec}
    if gating is not None:
        spec["gating"] = gating
    return ColumnNetwork(spec=spec, seed=2, dtype=dtype)


def test_gating_off_is_the_model_as_before():
    plain = ColumnNetwork(spec={"recurrent": {"trainable": True}}, seed=2)
    off = ColumnNetwork(spec={"recurrent": {"trainable": True}, "gating": None}, seed=2)
    assert off.state_size == plain.state_size == 3 * plain.n_pop
    stim = 10 * torch.rand(21, 2, 1, generator=torch.Generator().manual_seed(0))
    t = torch.linspace(0, 20, 21)
    for sde in (False, True):
        cfg = SolverConfig(method="rk4exp", step_ms=0.25, sde=sde, fast={"kernel": "torch"})
        a = rollout(plain, stim, t, cfg, seed=4).states
        b = rollout(off, stim, t, cfg, seed=4).states
        assert a.shape[-1] == 3 * plain.n_pop and torch.equal(a, b)
    terms = off.prepare(stim).terms
    assert terms.w_slow_t is None and not terms.gated
    assert torch.equal(off.rest_state(), plain.rest_state())


def test_gate_mask_splits_the_weights():
    net = _net(
        lateral={"enabled": True, "pairs": [["L23e", "L23i"]]},
        areas=[{"name": "a", "n_columns": 2}],
    )
    fast, slow = net.weight_split()
    assert torch.equal(fast + slow, net.weight_matrix())
    names = net.population_names
    gated = {(names[j], names[i]) for i, j in (slow != 0).nonzero().tolist()}
    assert gated == {("a[0].L23e", "a[0].L23e"), ("a[1].L23e", "a[1].L23e")}
    assert net.state_size == 4 * net.n_pop
    terms = net.prepare(torch.zeros(2, 1, 1, dtype=F64)).terms
    gain = net.constants()["gain"]
    assert torch.allclose(terms.w_slow_t, (slow * gain).t()) and torch.allclose(
        terms.w_t, (fast * gain).t()
    )
    assert (terms.gate_tau, terms.gate_gamma) == (TAU_S, GAMMA)
    both = _net(
        gating={
            "pairs": [["L23e", "L23i"]],
            "kinds": ["recurrent", "lateral"],
            "tau_ms": 50.0,
            "gamma": 0.5,
        },
        lateral={"enabled": True, "pairs": [["L23e", "L23i"]]},
        areas=[{"name": "a", "n_columns": 2}],
    )
    _, slow = both.weight_split()
    gated = {(names[j], names[i]) for i, j in (slow != 0).nonzero().tolist()}
    assert gated == {(f"a[{s}].L23e", f"a[{t}].L23i") for s in (0, 1) for t in (0, 1)}
    assert both.gate_constants() == (0.05, 0.5)


def test_rest_state_holds_s_star_and_is_a_fixed_point():
    net = _net(
        areas=[{"name": "a", "n_columns": 2}],
        lateral={"enabled": True, "pairs": [["L23e", "L23i"]]},
        gating={"pairs": [["L23e", "L23e"], ["L23e", "L23i"]], "kinds": ["recurrent", "lateral"]},
    )
    P = net.n_pop
    rest = net.rest_state()
    phi = net.phi(rest)
    assert torch.allclose(rest[2 * P : 3 * P], phi, rtol=0, atol=1e-12)
    s_star = GAMMA * TAU_S * phi / (1 + GAMMA * TAU_S * phi)
    assert torch.allclose(rest[3 * P :], s_star, rtol=1e-12, atol=1e-15)
    dyn = net.prepare(torch.zeros(2, 1, 1, dtype=F64))
    drift = dyn.rhs(rest[None], dyn.terms.drive[0]).detach()
    assert float(drift.abs().max()) < 1e-8
    # the scheme stays there
    states = rollout(
        net, torch.zeros(101, 1, 1, dtype=F64), torch.linspace(0, 100, 101, dtype=F64), _torch()
    ).states
    assert float((states[-1, 0] - rest).detach().abs().max()) < 1e-9
    assert [net.describe_state_index(i) for i in (0, 3 * P)] == ["a[0].L23e v", "a[0].L23e S"]


def test_low_rates_approach_the_ungated_network():
    """Where phi << 1 / (gamma tau_S), S* / (gamma tau_S) = phi / (1 + gamma tau_S phi) ~ phi:
    with L2/3e -> L2/3e gated (L2/3e at ~0.3 Hz) the steady state under constant input stays
    within the gated input's relative change, gamma tau_S phi(L2/3e), of the ungated one."""
    gated, plain = _net(), _net(gating=None)
    P = plain.n_pop
    i = plain.population_names.index("mt[0].L23e")
    for u in (0.0, 5.0, 20.0, 50.0):
        drive = plain.bg_drive + plain.input.effective().detach() @ torch.tensor([u], dtype=F64)
        a, b = gated.rest_state(drive)[2 * P : 3 * P], plain.rest_state(drive)[2 * P :]
        assert b.shape == (P,)
        rel = (a - b).abs() / b.clamp_min(0.1)
        assert float(rel.max()) < 0.02
        if float(b[i]) > 0.1:  # (50 Hz of input silences L2/3e through L2/3i)
            assert float(rel[i]) <= GAMMA * TAU_S * float(b[i])
            assert float(a[i]) < float(b[i])  # excitation through S* is the weaker


def _ref_rollout(net, stim, t):
    cfg = SolverConfig(
        method="dopri5", adaptive={"rtol": 1e-11, "atol": 1e-11, "max_steps": 200000}
    )
    return rollout(net, stim, t, cfg).states


def test_rk4exp_against_a_float64_reference_and_its_order():
    net = _net(
        areas=[{"name": "a", "n_columns": 2}],
        lateral={"enabled": True, "pairs": [["L23e", "L23i"]]},
        gating={"pairs": [["L23e", "L23e"], ["L23e", "L23i"]], "kinds": ["recurrent", "lateral"]},
    )
    gen = torch.Generator().manual_seed(1)
    stim = 15 * torch.rand(11, 2, 1, dtype=F64, generator=gen)
    t = torch.linspace(0, 10, 11, dtype=F64)
    ref = _ref_rollout(net, stim, t)
    assert ref.shape[-1] == 4 * net.n_pop
    errs = []
    for step in (0.5, 0.25):
        cfg = SolverConfig(method="rk4exp", step_ms=step, fast={"kernel": "torch"})
        errs.append(float((rollout(net, stim, t, cfg).states - ref).detach().abs().max()))
    assert errs[1] < 1e-3
    assert errs[0] / errs[1] > 10  # fourth order: 16
    s_part = (rollout(net, stim, t, _torch()).states - ref)[..., 3 * net.n_pop :]
    assert float(s_part.detach().abs().max()) < 1e-6


def _loss(net, states):
    P = net.n_pop
    return net.readout(states).pow(2).mean() + states[..., 3 * P :].mean()


@pytest.mark.parametrize("fast", [{}, {"unroll": 3}, {"unroll": 2, "checkpoint_every": 4}])
@pytest.mark.parametrize("sde", [False, True])
def test_adjoint_gradient_matches_autograd(fast, sde):
    net = _net(input={"trainable": True})
    gen = torch.Generator().manual_seed(3)
    stim = 10 * torch.rand(11, 2, 1, dtype=F64, generator=gen)
    t = torch.linspace(0, 10, 11, dtype=F64)
    grads = []
    for backward in ("discrete_adjoint", "autograd"):
        net.zero_grad()
        if backward == "autograd":  # unroll is the adjoint's; checkpointing with noise too
            fast = {k: v for k, v in fast.items() if k == "checkpoint_every" and not sde}
        cfg = SolverConfig(
            method="rk4exp",
            step_ms=0.5,
            sde=sde,
            fast={"kernel": "torch", "backward": backward, **fast},
        )
        states = rollout(net, stim, t, cfg, seed=7).states
        _loss(net, states).backward()
        grads.append(
            (states.detach(), net.recurrent.weight.grad.clone(), net.input.weight.grad.clone())
        )
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-14)


def test_gradient_reaches_the_gated_weight():
    """The gradient of the gated L2/3e -> L2/3e entry against central finite differences."""
    net = _net()
    i = net.population_names.index("mt[0].L23e")
    stim = torch.full((16, 1, 1), 6.0, dtype=F64)
    t = torch.linspace(0, 15, 16, dtype=F64)
    y0 = net.initial_state(1)  # fixed: the rest state itself moves with the weight
    net.zero_grad()
    _loss(net, rollout(net, stim, t, _torch(), y0=y0).states).backward()
    grad = float(net.recurrent.weight.grad[i, i])
    assert grad != 0.0
    eps = 1e-6
    with torch.no_grad():
        vals = []
        for sign in (1, -1):
            net.recurrent.weight[i, i] += sign * eps
            vals.append(float(_loss(net, rollout(net, stim, t, _torch(), y0=y0).states)))
            net.recurrent.weight[i, i] -= sign * eps
    assert grad == pytest.approx((vals[0] - vals[1]) / (2 * eps), rel=1e-5)


def test_noise_is_on_v_only():
    net = _net()
    P = net.n_pop
    dyn = net.prepare(torch.zeros(2, 1, 1, dtype=F64))
    g = dyn.g(0.0, net.rest_state()[None])
    assert bool((g[:, :P] > 0).all()) and bool((g[:, P:] == 0).all())
    stim = torch.zeros(41, 3, 1, dtype=F64)
    t = torch.linspace(0, 40, 41, dtype=F64)
    cfg = SolverConfig(method="rk4exp", step_ms=0.5, sde=True, fast={"kernel": "torch"})
    a, b = (rollout(net, stim, t, cfg, seed=9).states for _ in range(2))
    assert torch.equal(a, b) and float(a[-1, :, :P].std(0).mean()) > 0.1


@pytest.mark.parametrize(
    ("gating", "words"),
    [
        ({"pairs": []}, ["gating.pairs", "at least one"]),
        ({"pairs": [["L23e", "L9e"]]}, ["gating.pairs", "'L9e'", "L23e, L23i"]),
        (
            {"pairs": [["L23e", "L23e"]], "kinds": []},
            ["gating.kinds", "recurrent, lateral, feedforward"],
        ),
        (
            {"pairs": [["L23e", "L23e"]], "kinds": ["input"]},
            ["gating.kinds", "'input'", "'lateral'"],
        ),
        ({"pairs": [["L23e", "L23e"]], "tau_ms": 0.0}, ["gating.tau_ms", "greater than 0"]),
        ({"pairs": [["L23e", "L23e"]], "gamma": -1.0}, ["gating.gamma", "greater than 0"]),
        ({"pairs": [["L23e", "L23e"]], "gamma": math.inf}, ["gating.gamma", "finite"]),
        ({"kinds": ["recurrent"]}, ["gating.pairs"]),
        ({"pairs": [["L23e", "L23e"]], "tau": 100.0}, ["gating.tau"]),
        # L2/3e -> L2/3e is recurrent; lateral connections are off by default
        (
            {"pairs": [["L23e", "L23e"]], "kinds": ["lateral"]},
            ["gating.pairs", "['L23e', 'L23e']", "lateral"],
        ),
    ],
)
def test_bad_gating_is_a_config_error(gating, words):
    with pytest.raises(ConfigError) as err:
        ColumnNetwork(spec={"gating": gating})
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("method", ["expeuler", "exprk2"])
def test_methods_without_gating_support_say_so(method):
    net = _net()
    cfg = SolverConfig(method=method, step_ms=0.5, fast={"kernel": "torch"})
    with pytest.raises(
        ConfigError, match=f"solver.method = '{method}' does not integrate the gating"
    ):
        rollout(net, torch.zeros(3, 1, 1, dtype=F64), torch.linspace(0, 2, 3, dtype=F64), cfg)


def test_float32_on_the_default_kernel_matches_float64():
    net = _net(dtype=torch.float32)
    stim = torch.full((21, 2, 1), 5.0)
    t = torch.linspace(0, 20, 21)
    auto = rollout(net, stim, t, SolverConfig(method="rk4exp", step_ms=0.25)).states
    ref = rollout(net.double(), stim.double(), t.double(), _torch()).states
    assert auto.dtype == torch.float32 and auto.shape[-1] == 4 * net.n_pop
    assert float((auto.double() - ref).detach().abs().max()) < 1e-3
