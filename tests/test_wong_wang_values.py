"""Wong & Wang (2006) reduced model against values derived here, independently of the code.

Everything "expected" below comes from the paper's equations and Appendix parameters typed
into this file (PAPER), solved with scipy (brentq / fsolve for fixed points, solve_ivp with a
tight RK45 tolerance for trajectories), never from colenv.reference.wong_wang. The code
under test integrates with forward Euler at 0.5 ms; the tolerances allow for that and no
more. test_a_10_percent_change_of_a_constant_fails_the_checks runs the code with each
coupling constant changed by 10 % and asserts that the checks below would then fail, so
the tolerances are tight enough to see a wrong constant.

The equations (K.-F. Wong and X.-J. Wang 2006, J. Neurosci. 26:1314, reduced two-variable
model; time in s, H in Hz):

    dS_i/dt = -S_i / tau_S + (1 - S_i) gamma H(x_i)
    H(x)    = (a x - b) / (1 - exp(-d (a x - b)))
    x_1     = J_N11 S_1 - J_N12 S_2 + I_0 + J_ext mu_1 + I_noise,1        (x_2 symmetric)
    mu_1,2  = mu0 (1 +- c'/100)
    tau_AMPA dI_noise/dt = -I_noise + eta(t) sqrt(tau_AMPA sigma^2)
"""

import math
from dataclasses import replace

import numpy as np
import pytest
import scipy.integrate
import scipy.optimize
import torch

from colenv.reference.wong_wang import WongWangParams, decide, simulate, stimulus_hz

PAPER = {  # Appendix of the paper (J_A11 = 0: no recurrent AMPA term in the reduced model)
    "a": 270.0,  # Hz / nA
    "b": 108.0,  # Hz
    "d": 0.154,  # s
    "gamma": 0.641,
    "tau_s": 0.100,  # s
    "tau_ampa": 0.002,  # s
    "j_n11": 0.2609,  # nA
    "j_n12": 0.0497,  # nA
    "j_ext": 5.2e-4,  # nA / Hz
    "i_0": 0.3255,  # nA
    "sigma": 0.02,  # nA
    "mu0": 30.0,  # Hz
}
THRESHOLD_HZ, WINDOW_MS = 15.0, 50  # the paper's decision read-out
DT_MS = 1.0


# ------------------------------------------------------------------ independent solutions
def h_hz(x):
    y = PAPER["a"] * np.asarray(x, dtype=np.float64) - PAPER["b"]
    y = np.where(y == 0.0, 1e-12, y)  # the removable 0/0 at a x = b (limit 1/d)
    return y / -np.expm1(-PAPER["d"] * y)


def drive(s1, s2, mu1, mu2):
    p = PAPER
    x1 = p["j_n11"] * s1 - p["j_n12"] * s2 + p["i_0"] + p["j_ext"] * mu1
    x2 = p["j_n11"] * s2 - p["j_n12"] * s1 + p["i_0"] + p["j_ext"] * mu2
    return x1, x2


def rhs(_t, s, mu1, mu2):
    x1, x2 = drive(s[0], s[1], mu1, mu2)
    g, tau = PAPER["gamma"], PAPER["tau_s"]
    return [-s[0] / tau + (1 - s[0]) * g * h_hz(x1), -s[1] / tau + (1 - s[1]) * g * h_hz(x2)]


def spontaneous_fixed_point():
    """The lowest symmetric fixed point without stimulus: root of dS/dt on S1 = S2."""

    def f(s):
        return rhs(0.0, [s, s], 0.0, 0.0)[0]

    grid = np.linspace(1e-6, 0.99, 20000)
    values = np.array([f(s) for s in grid])
    first = int(np.nonzero(np.sign(values[:-1]) != np.sign(values[1:]))[0][0])
    return scipy.optimize.brentq(f, grid[first], grid[first + 1], xtol=1e-15)


def stimulus(coherence_pct):
    return PAPER["mu0"] * (1 + coherence_pct / 100), PAPER["mu0"] * (1 - coherence_pct / 100)


def decision_fixed_point(coherence_pct):
    """The attractor pool 1 wins (S1 high, S2 low) with the stimulus on: fsolve from (0.7, 0.05)."""
    mu = stimulus(coherence_pct)
    s = scipy.optimize.fsolve(lambda s: rhs(0.0, s, *mu), [0.7, 0.05], xtol=1e-12)
    assert np.allclose(rhs(0.0, s, *mu), 0.0, atol=1e-10)
    return s, np.array(h_hz(drive(s[0], s[1], *mu)))


def trajectory(coherence_pct, s0, t_ms):
    """Rates [T, 2] (Hz) at t_ms of the noise-free model with the stimulus on from t = 0."""
    mu = stimulus(coherence_pct)
    sol = scipy.integrate.solve_ivp(
        rhs, (0.0, t_ms[-1] / 1000.0), s0, args=mu, t_eval=t_ms / 1000.0, rtol=1e-10, atol=1e-12
    )
    assert sol.success
    return np.stack(h_hz(drive(sol.y[0], sol.y[1], *mu)), axis=-1)


def first_crossing_ms(rates_hz):
    """First t where the 50-sample (50 ms) running mean of either pool reaches 15 Hz; the
    samples before t = 0 are the state held before the stimulus (sample 0)."""
    padded = np.concatenate([np.repeat(rates_hz[:1], WINDOW_MS, axis=0), rates_hz])
    csum = np.cumsum(padded, axis=0)
    mean = (csum[WINDOW_MS:] - csum[:-WINDOW_MS]) / WINDOW_MS
    k = int(np.nonzero((mean >= THRESHOLD_HZ).any(axis=1))[0][0])
    return k * DT_MS, int(np.argmax(mean[k]))


# ------------------------------------------------------------------ the code under test
def code_run(params, coherence_pct, n_ms, s0=None, noise=False, batch=1, seed=0):
    c = torch.full((batch,), float(coherence_pct), dtype=torch.float64)
    inputs = stimulus_hz(c, params.mu0_hz).expand(int(n_ms / DT_MS) + 1, -1, -1)
    gen = torch.Generator().manual_seed(seed)
    return simulate(inputs, DT_MS, params=params, noise=noise, generator=gen, s0=s0)


S_STAR = spontaneous_fixed_point()


def check_spontaneous(params):
    """Code's resting rates (200 ms without stimulus, from the independent S*) stay at H(x*)."""
    rest = h_hz(drive(S_STAR, S_STAR, 0.0, 0.0)[0])
    inputs = torch.zeros(201, 1, 2, dtype=torch.float64)
    rates = simulate(inputs, DT_MS, params=params, noise=False, s0=S_STAR).rates_hz[:, 0]
    # exact at S* (2e-16 Hz measured); J_N12 10 % off: 0.04 Hz, I_0: 1.3-11 Hz
    return float((rates - rest).abs().max()), 0.005  # Hz


def check_decision_state(params, coherence_pct, s0=None, n_ms=2000.0):
    """Code's rates after ``n_ms`` of stimulus against the fixed point pool 1 wins; ``s0``
    (default S* with pool 1 nudged ahead by 0.05)."""
    _, r_fp = decision_fixed_point(coherence_pct)
    if s0 is None:
        s0 = torch.tensor([S_STAR + 0.05, S_STAR], dtype=torch.float64)
    rates = code_run(params, coherence_pct, n_ms, s0=s0).rates_hz[-1, 0].numpy()
    return float(np.abs(rates - r_fp).max()), 0.02  # Hz; Euler 0.5 ms: within 0.001 Hz


def check_decision(params, coherence_pct):
    """One noise-free run of the code from S* (2 s of stimulus): its decision time against
    the RK45 trajectory's, and its final rates against the decision fixed point."""
    t_ms = np.arange(0.0, 2001.0, DT_MS)
    expected, winner = first_crossing_ms(trajectory(coherence_pct, [S_STAR, S_STAR], t_ms))
    rates = code_run(params, coherence_pct, 2000.0, s0=S_STAR).rates_hz
    choice, time_ms = decide(rates, DT_MS, THRESHOLD_HZ, float(WINDOW_MS))
    _, r_fp = decision_fixed_point(coherence_pct)
    # Euler at 0.5 ms meets RK45 to the ms and to < 0.001 Hz (measured: 0 ms, 3e-4 Hz); a
    # 10 % change of J_N12, the least sensitive coupling, moves the time by 6-7 ms and the
    # rates by 0.09 Hz (J_N11: 74-153 ms, 8 Hz; I_0, gamma, tau_S, J_ext: 30-195 ms).
    delay = abs(float(time_ms[0]) - expected) if choice[0] >= 0 else math.inf
    time_check = (delay, 2.0)  # ms
    rate_check = (float(np.abs(rates[-1, 0].numpy() - r_fp).max()), 0.02)  # Hz
    return int(choice[0]), winner, time_check, rate_check


# ------------------------------------------------------------------ tests
def test_the_code_uses_the_papers_parameters():
    p = WongWangParams()
    code = {
        "a": p.a,
        "b": p.b,
        "d": p.d,
        "gamma": p.gamma,
        "tau_s": p.tau_s_ms / 1000,
        "tau_ampa": p.tau_ampa_ms / 1000,
        "j_n11": p.j_n11,
        "j_n12": p.j_n12,
        "j_ext": p.j_ext,
        "i_0": p.i_0,
        "sigma": p.sigma,
        "mu0": p.mu0_hz,
    }
    assert code == pytest.approx(PAPER, rel=1e-12)


def test_spontaneous_fixed_point_and_rate():
    # the paper's spontaneous state is ~2 Hz; the equations give 1.78 Hz at S* = 0.0988
    rest = float(h_hz(drive(S_STAR, S_STAR, 0.0, 0.0)[0]))
    assert 1.5 < rest < 2.5
    from colenv.reference.wong_wang import spontaneous_s

    assert spontaneous_s() == pytest.approx(S_STAR, abs=1e-10)
    error, tol = check_spontaneous(WongWangParams())
    assert error < tol


@pytest.mark.parametrize("coherence_pct", [0.0, 51.2])
def test_decision_state_rates(coherence_pct):
    _, rates = decision_fixed_point(coherence_pct)
    assert 25 < rates[0] < 40 and rates[1] < 2  # the paper: winner ~30 Hz, loser ~1 Hz
    error, tol = check_decision_state(WongWangParams(), coherence_pct)
    assert error < tol


@pytest.mark.parametrize("coherence_pct", [12.8, 51.2])
def test_noise_free_decision_times(coherence_pct):
    choice, winner, (error, tol), (rate_error, rate_tol) = check_decision(
        WongWangParams(), coherence_pct
    )
    assert choice == winner == 0  # c' > 0 favours pool 1
    assert error < tol and rate_error < rate_tol


def test_noise_free_decision_times_fall_with_coherence():
    t_ms = np.arange(0.0, 2001.0, DT_MS)
    times = [
        first_crossing_ms(trajectory(c, [S_STAR, S_STAR], t_ms))[0] for c in (12.8, 25.6, 51.2)
    ]
    assert times[0] > times[1] > times[2] > 100.0


def recovered_noise_current(params, n_ms=400.0, batch=256, seed=1):
    """The code's I_noise, read back from its output: x = H^-1(r) minus the deterministic
    drive of the returned S. H is inverted on a dense table (it is strictly increasing)."""
    result = code_run(params, 0.0, n_ms, noise=True, batch=batch, seed=seed)
    r = result.rates_hz.numpy()
    s = result.s.numpy()
    x_table = np.linspace(0.2, 0.6, 400001)
    x = np.interp(r, h_hz(x_table), x_table)
    x1_det, x2_det = drive(s[..., 0], s[..., 1], *stimulus(0.0))
    return x - np.stack([x1_det, x2_det], axis=-1)  # [T, B, 2] nA


def test_noise_current_has_the_stationary_std_of_the_printed_ou_equation():
    # tau dI = -I dt + sqrt(tau sigma^2) dW: dI = -I/tau dt + (sigma / sqrt(tau)) dW, whose
    # stationary variance is (sigma^2 / tau) * tau / 2 = sigma^2 / 2: std = sigma / sqrt(2)
    # = 0.01414 nA (the paper's sigma = 0.02 nA would be the std only if the noise term were
    # sqrt(2 tau sigma^2)). Lag-1 ms correlation: exp(-1 ms / tau_AMPA) = exp(-0.5).
    noise = recovered_noise_current(WongWangParams())
    expected_std = PAPER["sigma"] / math.sqrt(2)
    # ~100 k samples, ~25 k independent (correlation time 2 ms): std known to ~0.5 %
    assert noise.std() == pytest.approx(expected_std, rel=0.03)
    assert abs(noise.mean()) < 0.002 * PAPER["sigma"] * 10
    flat = noise.transpose(1, 2, 0).reshape(-1, noise.shape[0])
    lag1 = np.mean(flat[:, 1:] * flat[:, :-1]) / np.mean(flat * flat)
    assert lag1 == pytest.approx(math.exp(-1.0 / 2.0), abs=0.03)


CONSTANTS = ["j_n11", "j_n12", "i_0", "j_ext", "gamma", "tau_s_ms", "sigma"]


@pytest.mark.parametrize("name", CONSTANTS)
@pytest.mark.parametrize("factor", [pytest.param(0.9, marks=pytest.mark.slow), 1.1])
def test_a_10_percent_change_of_a_constant_fails_the_checks(name, factor):
    """The checks above are not loose: with one constant of the code 10 % off, one fails."""
    wrong = replace(WongWangParams(), **{name: getattr(WongWangParams(), name) * factor})
    if name == "sigma":
        noise = recovered_noise_current(wrong, n_ms=200.0, batch=256)
        assert noise.std() != pytest.approx(PAPER["sigma"] / math.sqrt(2), rel=0.03)
        return
    _, _, time_check, rate_check = check_decision(wrong, 51.2)
    checks = [check_spontaneous(wrong), time_check, rate_check]
    assert any(error >= tol for error, tol in checks), (
        f"{name} x {factor}: every check still passes (error, tolerance): {checks}"
    )
