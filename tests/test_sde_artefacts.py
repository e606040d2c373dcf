"""SDE rollouts of the 13-column parity network at the default step show no rate artefacts.

The predecessor's Euler-Maruyama at 1 ms swung the filtered rate between about -660 and
+730 Hz; measured here, torchsde euler on this network diverges to ~1e7 Hz at 0.5 ms once the
stimulus is on (oscillatory E-I modes sit outside Euler's stability region). The fast path's
SDE mode (rk4exp step + additive noise kick on v, Dynamics.fast_rollout with noise=True) keeps RK4's stability region: rates stay finite, non-negative and in f's range, and their
statistics agree with a 4x finer step. Measured (seeded): 99.99th percentile 165 Hz at
0.5 ms vs 168 Hz at 0.125 ms; the single largest sample, a noise-driven L5e excursion, is
719 Hz at 0.5 ms (6e-6 of samples above 300 Hz) vs 266 Hz at 0.125 ms.
"""

import torch

from colenv.models import AreaSpec, ColumnNetwork, ConnectionSpec, NetworkSpec

STEP_MS = 0.5  # SolverConfig's default step


def _parity_network() -> ColumnNetwork:
    spec = NetworkSpec(
        areas=(AreaSpec("a", 8), AreaSpec("b", 4), AreaSpec("c", 1)),
        n_inputs=4,
        lateral=ConnectionSpec(enabled=True),
    )
    return ColumnNetwork(spec=spec)


def _rates(net, stim, step_ms, seed):
    dyn = net.prepare(stim)
    n_sub = round(1.0 / step_ms)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        states = dyn.fast_rollout(
            net.initial_state(stim.shape[1]),
            stim.shape[0],
            n_sub,
            step_ms * 1e-3,
            "rk4exp",
            noise=True,
            generator=gen,
        )
    return states[..., 2 * net.n_pop :]


def test_sde_rates_finite_physiological_and_step_consistent():
    torch.manual_seed(0)
    net = _parity_network()
    B, T = 24, 201  # 200 ms on a 1 ms grid; 15 Hz bits from 100 ms
    stim = torch.zeros(T, B, 4)
    stim[T // 2 :] = (torch.rand(B, 4, generator=torch.Generator().manual_seed(1)) > 0.5) * 15.0
    coarse = _rates(net, stim, STEP_MS, seed=2)
    fine = _rates(net, stim, STEP_MS / 4, seed=3)
    for r in (coarse, fine):
        assert torch.isfinite(r).all()
        assert float(r.min()) > -1e-3  # a filtered non-negative rate never goes negative
        assert float(r.max()) < 1000.0  # rare excursions, no blow-up (torchsde euler: ~1e7)
        assert float(torch.quantile(r.flatten()[::7], 0.9999)) < 500.0  # f's physiological range
    # time-averaged rate per trial and population over the late stimulus window
    window = slice(T // 2 + 40, T)
    m_c, m_f = coarse[window].mean(0), fine[window].mean(0)  # [B, P]
    diff = (m_c - m_f).mean(0)  # mean over trials (same stimuli)
    se = ((m_c.var(0) + m_f.var(0)) / B).sqrt()
    assert bool((diff.abs() < 4 * se + 0.5).all()), float((diff.abs() - 4 * se).max())
