"""EXPRB2, exponential Rosenbrock-Euler with the onset restart (colenv.models.column.exprb).

Expected values come from closed-form solutions (the linear regime's matrix exponential, see
tests/test_rosenbrock.py), a float64 dopri5 reference and finite differences, not from the
scheme's own output.
"""

from __future__ import annotations

import math

import pytest
import torch

from colenv.errors import ConfigError
from colenv.models.column import exprb, integrators
from colenv.models.column.exprb import onset_intervals
from colenv.solve import FastOptions, SolverConfig, rollout
from tests.test_rosenbrock import (
    F64,
    SLOPE,
    C,
    _column,
    _linear_matrix,
    _linear_problem,
    _linear_terms,
    _network,
    _stimulus,
)

REFERENCE = SolverConfig("dopri5", adaptive={"rtol": 1e-9, "atol": 1e-9})


pytestmark = pytest.mark.usefixtures("one_thread")  # many small ops


def _exprb(terms, y0, n_int, n_sub, h, **fast):
    with torch.no_grad():
        return integrators.fast_rollout(
            terms, y0[None], n_int + 1, n_sub, h, "exprb2", FastOptions(**fast)
        )


def _two_columns(both_ways: bool):
    """Two linear-regime columns coupled from column 0 to column 1 (and back)."""
    g = torch.Generator().manual_seed(3)
    w_a, k_a, _, y_a = _column(4)
    w_b, k_b, _, y_b = _column(5)
    P = 16
    w_t = torch.zeros(P, P, dtype=F64)
    w_t[:8, :8], w_t[8:, 8:] = w_a, w_b
    cross = torch.randn(8, 8, generator=g, dtype=F64) * 0.2
    w_t[:8, 8:] = cross  # source column 0 -> target column 1
    if both_ways:
        w_t[8:, :8] = cross.t()
    kappa = torch.cat([k_a, k_b])
    x = torch.cat([y_a[:8] - y_a[8:16], y_b[:8] - y_b[8:16]])
    phi = SLOPE * x - C["db"] / C["d"]
    v, a = x + kappa * phi, kappa * phi
    drive_p = v / C["tau_m"] - phi @ w_t
    return w_t, kappa, drive_p, torch.cat([v + 5.0, a, phi])


def test_exact_on_the_linear_problem_at_any_step():
    # the linear regime: exprb2 integrates the linearisation exactly, so it is exact there,
    # also with an eigenvalue of -1e5 1/s (h lambda = -50 at 0.5 ms)
    for stiff in (None, 1e5):
        w_t, kappa, drive_p, y0 = _column(1, stiff=stiff)
        if stiff:
            assert float(torch.linalg.eigvals(_linear_matrix(w_t, kappa)).real.min()) < -0.9e5
        t_end = 20e-3
        exact = _linear_problem(w_t, kappa, drive_p, y0, t_end)
        terms = _linear_terms(w_t, kappa, drive_p.expand(40, 1, -1).clone())
        out = _exprb(terms, y0, 40, 1, 0.5e-3, onset_refine=1)
        scale = float((exact - y0).abs().max())  # how far the solution moved
        assert float((out[-1, 0] - exact).abs().max()) < 1e-9 * scale


def test_exact_with_coupling_in_one_direction():
    # J is the full Jacobian (its action, one product per term), so a one-way coupling between
    # two columns is integrated exactly too (a per-column block would make it order 1)
    w_t, kappa, drive_p, y0 = _two_columns(both_ways=False)
    t_end = 2e-3
    terms = _linear_terms(w_t, kappa, drive_p.expand(1, 1, -1).clone())
    exact = _linear_problem(w_t, kappa, drive_p, y0, t_end)
    out = _exprb(terms, y0, 1, 4, t_end / 4, onset_refine=1)
    assert float((out[-1, 0] - exact).abs().max()) < 1e-9 * float((exact - y0).abs().max())


def _theta(m: int, u, mp) -> float:
    """theta_m of Al-Mohy & Higham (2011, sec. 3): the largest theta with
    sum_{k > m} |c_k| theta^(k - 1) <= u, c_k the series coefficients of log(e^-x T_m(x))."""
    n = m + 80
    g = [
        mp.fsum(
            (-1) ** i / mp.factorial(i) / mp.factorial(k - i) for i in range(max(0, k - m), k + 1)
        )
        for k in range(n + 1)
    ]  # e^-x T_m(x)
    c = [mp.mpf(0)] * (n + 1)  # log g: k c_k = k g_k - sum_i i c_i g_(k-i)
    for k in range(1, n + 1):
        c[k] = (k * g[k] - mp.fsum(i * c[i] * g[k - i] for i in range(1, k))) / k
    lo, hi = mp.mpf(0), mp.mpf(30)
    for _ in range(60):
        mid = (lo + hi) / 2
        if mp.fsum(abs(c[k]) * mid ** (k - 1) for k in range(m + 1, n + 1)) > u:
            hi = mid
        else:
            lo = mid
    return float(lo)


def test_theta_tables_are_al_mohy_and_highams():
    # their Table 3.1 (m = 5, 10, ..., 55; two digits), single and double precision
    single = (1.3e-1, 1.0, 2.2, 3.6, 4.9, 6.3, 7.7, 9.1, 1.1e1, 1.2e1, 1.3e1)
    double = (2.4e-3, 1.4e-1, 6.4e-1, 1.4, 2.4, 3.5, 4.7, 6.0, 7.2, 8.5, 9.9)
    for table, published in ((exprb.THETA_SINGLE, single), (exprb.THETA_DOUBLE, double)):
        assert len(table) == exprb.M_MAX == 55
        assert all(a < b for a, b in zip(table, table[1:], strict=False))
        for m, value in zip(range(5, 56, 5), published, strict=True):
            assert table[m - 1] == pytest.approx(value, rel=0.06), (m, table[m - 1], value)
    # and every digit kept, from the series itself (a few degrees; mpmath comes with torch)
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 50
    for m in (3, 12, 30):
        assert exprb.THETA_SINGLE[m - 1] == pytest.approx(_theta(m, mp.mpf(2) ** -24, mp), rel=1e-4)
        assert exprb.THETA_DOUBLE[m - 1] == pytest.approx(_theta(m, mp.mpf(2) ** -53, mp), rel=1e-4)


def test_taylor_plan_minimises_the_products():
    # ||hJ|| = 0: one term; a norm within theta_m of a degree: one substep; a large norm: the
    # cheapest (m, s) with ||hJ|| / s <= theta_m, as a brute-force search finds it
    m, s = exprb.taylor_plan(torch.tensor([0.0, 3.0, 50.0, 400.0]), torch.float32)
    theta = exprb.THETA_SINGLE
    for norm, mi, si in zip((0.0, 3.0, 50.0, 400.0), m.tolist(), s.tolist(), strict=True):
        assert norm / si <= theta[mi - 1]
        best = min(d * max(1, math.ceil(norm / theta[d - 1])) for d in range(1, 56))
        assert mi * si == best
    assert (m[0].item(), s[0].item()) == (1, 1)
    # a norm that is not finite, or needs more than S_MAX substeps, has no plan: s = 0
    m, s = exprb.taylor_plan(
        torch.tensor([float("inf"), float("nan"), 2.0 * exprb.S_MAX * theta[-1], 3.0]),
        torch.float32,
    )
    assert s.tolist()[:3] == [0, 0, 0] and s[3].item() >= 1


@pytest.mark.parametrize("gated", [False, True], ids=["ungated", "gated"])
def test_norm_bound_bounds_the_balanced_jacobian(gated):
    # the bound is >= ||D^-1 J D||_1 with J from autograd (float64) and D the documented
    # scaling (r by the largest slope, S by sqrt(A / B)), at states across a stimulus; and not
    # loose by more than the triangle inequality's column sums allow (<= 2x here)
    spec = {"lateral": {"enabled": True, "init_k": 5000, "trainable": True}}
    if gated:
        spec["gating"] = {"pairs": [["L23e", "L23e"]], "kinds": ["recurrent"]}
    net = _network(**spec).to(torch.float64)
    stim, t_ms = _stimulus(T=30, on=5)
    stim = (10.0 * stim).to(torch.float64)
    with torch.no_grad():
        states = rollout(net, stim, t_ms, REFERENCE).states
        terms = net.prepare(stim).terms
    drift = exprb._Drift(terms)
    P, nv = drift.P, drift.n_var
    for k in (0, 6, 8, 20):
        y = states[k, :1]
        f, p, s = drift.f(y, terms.drive[k, :1])
        jac = torch.autograd.functional.jacobian(
            lambda z, k=k: drift.f(z[None], terms.drive[k, :1])[0][0], y[0]
        )
        d = torch.ones(nv * P, dtype=torch.float64)
        d[2 * P : 3 * P] = s.abs().max().clamp_min(1.0)
        if gated:
            into = (drift.gamma_g * (1.0 - y[0, 3 * P :]).abs() * s[0].abs()).max()
            d[3 * P :] = (into / drift.slow_sum.max()).sqrt()
        scaled = jac * d[None, :] / d[:, None]  # D^-1 J D
        true = float(scaled.abs().sum(0).max())
        bound = float(drift.norm_bound(y, p, s)[0])
        assert true <= bound * (1 + 1e-12) and bound <= 2.0 * true, (k, true, bound)


@pytest.mark.parametrize("gated", [False, True], ids=["ungated", "gated"])
def test_training_gradient_on_the_native_kernel_is_the_torch_paths(gated):
    # what a trainer calls (rollout with the default kernel "auto"): on CPU in float32 the
    # native forward and adjoint, with the network's gradient patterns; the parameters'
    # gradients equal those of the torch path (autograd) to float32 rounding
    from colenv.models.column import native

    if not native.available():
        pytest.skip(f"native kernel unavailable: {native.unavailable_reason()}")
    spec = {"lateral": {"enabled": True, "init_k": 5000, "trainable": True}}
    if gated:
        spec["gating"] = {"pairs": [["L23e", "L23e"]], "kinds": ["recurrent"]}
    net = _network(**spec).to(torch.float32)
    stim, t_ms = _stimulus(T=25, on=5)
    stim, t_ms = (10.0 * stim).float(), t_ms.float()
    grads = {}
    for kernel in ("native", "torch"):
        net.zero_grad()
        out = rollout(net, stim, t_ms, SolverConfig("exprb2", step_ms=0.5, fast={"kernel": kernel}))
        net.readout(out.states).pow(2).mean().backward()
        grads[kernel] = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    assert grads["native"].keys() == grads["torch"].keys() and grads["torch"]
    for name, g in grads["torch"].items():
        scale = float(g.abs().max())
        assert scale > 0, name
        assert float((grads["native"][name] - g).abs().max()) < 2e-3 * scale, name


def test_onset_intervals_follow_the_drive_changes():
    drive = torch.zeros(12, 2, 3)
    drive[4:, 1, 2] = 1.0  # one trial, one population changes at interval 4
    drive[9:, 0, 0] = 2.0
    fine = onset_intervals(drive, 11, 2)
    assert torch.nonzero(fine).flatten().tolist() == [0, 1, 4, 5, 9, 10]
    assert not onset_intervals(drive, 11, 0).any()


def test_rollout_stats_count_the_onset_sub_steps():
    # 40 grid points 1 ms apart at 0.5 ms: 78 steps; the drive changes at t = 0 (the start)
    # and at interval 5, so the 5 ms windows refine intervals 0-4 and 5-9 (10 intervals, 2
    # steps each) 16x: 78 + 10 * 2 * 15 = 378 steps, one drift evaluation each
    net = _network()
    stim, t_ms = _stimulus(T=40, on=5)
    with torch.no_grad():
        stats = rollout(net, stim, t_ms, SolverConfig("exprb2", step_ms=0.5)).stats
        plain = rollout(
            net, stim, t_ms, SolverConfig("exprb2", step_ms=0.5, fast={"onset_refine": 1})
        ).stats
        rk4 = rollout(net, stim, t_ms, SolverConfig("rk4exp", step_ms=0.5)).stats
    assert stats.steps == 78 + 10 * 2 * 15 and stats.nfe == stats.steps
    assert (plain.steps, plain.nfe) == (78, 78)
    assert (rk4.steps, rk4.nfe) == (78, 4 * 78)


def test_stiff_network_within_half_a_hertz_at_half_a_millisecond():
    # two MT columns with strong lateral inhibition and a large stimulus onset: rk4exp at
    # 0.5 ms leaves the reference, ros2 is Hz off; exprb2 (onset restart) stays within 0.1 Hz
    # and converges at order 2; without the restart it is far off at 0.5 ms
    net = _network(lateral={"enabled": True, "init_k": 5000, "trainable": True})
    stim, t_ms = _stimulus(T=40, on=5)
    stim = 10.0 * stim
    with torch.no_grad():
        ref = net.readout(rollout(net, stim, t_ms, REFERENCE).states)

        def error(method, step, **fast):
            try:
                out = rollout(net, stim, t_ms, SolverConfig(method, step_ms=step, fast=fast))
            except Exception:  # a runaway
                return float("inf")
            return float((net.readout(out.states) - ref).abs().max())

        errs = {step: error("exprb2", step) for step in (0.5, 0.25, 0.125)}
        assert errs[0.5] < 0.1, errs
        assert errs[0.25] / errs[0.125] > 3.0, errs
        assert error("exprb2", 0.5, onset_refine=1) > 5.0
        assert error("ros2", 0.5) > 1.0
        assert error("rk4exp", 0.5, kernel="torch") > 0.1


# The gradient against finite differences, the SDE kick (zero noise = ODE, seeds, the shared
# increments) and the gated network against dopri5: tests/test_rosenbrock.py, parametrized
# over ros2 and exprb2 (LINEARISED).


def test_config_errors_name_the_option():
    with pytest.raises(ConfigError, match="onset_refine"):
        SolverConfig("exprb2", fast={"onset_refine": 0})
    with pytest.raises(ConfigError, match="onset_window_ms"):
        SolverConfig("exprb2", fast={"onset_window_ms": -1.0})
    with pytest.raises(ConfigError, match=r"onset_refine = 4: applies to method 'exprb2'"):
        SolverConfig("rk4exp", fast={"onset_refine": 4})
    with pytest.raises(ConfigError, match=r"onset_window_ms = 2.0: applies to method 'exprb2'"):
        SolverConfig("ros2", fast={"onset_window_ms": 2.0})
    with pytest.raises(ConfigError, match="checkpoint_every"):
        SolverConfig("exprb2", fast={"checkpoint_every": 5})
    # its discrete adjoint is the native kernel's; unroll is rk4exp's torch path only
    with pytest.raises(ConfigError, match="discrete adjoint is its native kernel's"):
        SolverConfig("exprb2", fast={"backward": "discrete_adjoint", "kernel": "torch"})
    with pytest.raises(ConfigError, match=r"unroll = 2: applies to rk4exp"):
        SolverConfig("exprb2", fast={"unroll": 2})
    SolverConfig("exprb2", fast={"kernel": "native", "backward": "discrete_adjoint"})


@pytest.mark.slow
def test_decision_within_half_a_hertz_at_half_a_millisecond():
    # the shipped Decision network (untrained), its evaluation grid, float32 as in training,
    # against float64 dopri5 as python -m trainers.bench measures it (measured 0.089 Hz; ros2
    # 6.2 Hz; rk4exp runs away)
    from trainers.bench import build_network, readout_error_hz, reference_readout

    net = build_network("colenv/Decision-v0", device="cpu")
    grid = net.trial(None, torch.float32)
    ref = reference_readout(net, grid)
    err, _ = readout_error_hz(net.readout(grid, SolverConfig("exprb2", step_ms=0.5)), ref)
    assert err < 0.5
    err_ros2, _ = readout_error_hz(net.readout(grid, SolverConfig("ros2", step_ms=0.5)), ref)
    assert err_ros2 > 1.0
