"""Reduced two-variable model of perceptual decision making (Wong & Wang 2006).

Reference
---------
K.-F. Wong and X.-J. Wang (2006), "A recurrent network mechanism of time
integration in perceptual decisions", J. Neurosci. 26(4):1314-1328. The
"reduced two-variable model" of the paper and its Appendix parameter set.

Description
-----------
Two selective excitatory pools (1 and 2; indices 0 and 1 here) compete through
slow NMDA-mediated recurrent excitation and effective mutual inhibition. Each
pool is described by its NMDA gating variable ``S_i`` alone; its firing rate is
an instantaneous function ``H`` of its total synaptic input current ``x_i``::

    dS_i/dt   = -S_i / tau_S + (1 - S_i) gamma H(x_i)
    H(x)      = (a x - b) / (1 - exp(-d (a x - b)))
    x_1       = J_N11 S_1 - J_N12 S_2 + I_0 + I_1 + I_noise,1     (x_2 symmetric)
    I_i       = J_ext mu_i,      mu_1,2 = mu0 (1 +- c'/100)
    tau_AMPA dI_noise,i/dt = -I_noise,i + eta_i(t) sqrt(tau_AMPA sigma^2)

``c'`` is the motion coherence in percent; pool 1 is the pool favoured by
``c' > 0``. ``eta_i`` is independent unit Gaussian white noise, so ``I_noise,i``
is an Ornstein-Uhlenbeck process with correlation time ``tau_AMPA`` and
stationary standard deviation ``sigma / sqrt(2)``. ``H`` is in Hz and ``gamma``
is per Hz of rate per second, so with time in ms the rate term reads
``gamma H / 1000``.

Parameters (Appendix of the paper)
-----------------------------------
| name       | value   | unit  | meaning                                      |
|------------|---------|-------|----------------------------------------------|
| gamma      | 0.641   |   -   | NMDA saturation factor                       |
| tau_S      | 100     | ms    | NMDA gating decay time                       |
| tau_AMPA   | 2       | ms    | correlation time of the background noise     |
| J_N11      | 0.2609  | nA    | self-excitation                              |
| J_N12      | 0.0497  | nA    | effective cross-inhibition (enters as minus) |
| J_ext      | 5.2e-4  | nA/Hz | stimulus rate to current                     |
| I_0        | 0.3255  | nA    | constant background current                  |
| sigma      | 0.02    | nA    | noise amplitude                              |
| mu0        | 30      | Hz    | stimulus rate at zero coherence              |
| a, b, d    | 270 Hz/nA, 108 Hz, 0.154 s | | input-output function H       |

Behaviour reported in the paper: spontaneous state near 2 Hz for both pools;
during and after a decision the winner fires near 30 Hz and the loser near
1 Hz. A decision is made when the 50 ms running average of either pool crosses
15 Hz (reaction time = decision time + 100 ms of non-decision time).
The psychometric curve ``p = 1 - 0.5 exp(-(c'/alpha)^beta)`` fits with
``alpha = 7.2 %``, ``beta = 1.25`` (monkeys: 7.4 %, 1.3).

What this implementation gives (paper's equations taken literally)
------------------------------------------------------------------
Spontaneous state 1.78 Hz; winner 30-34 Hz during the stimulus (30.0 Hz at
c' = 0, rising with coherence), loser 0.55-0.9 Hz; after the stimulus is
removed the winner persists near 20 Hz. With noise and a 2 s stimulus the
Weibull fit is alpha ~ 5 %, beta ~ 1.3 (analysis/psychometric.py): the model is
more sensitive than the published alpha = 7.2 %. Read literally, the noise
equation gives I_noise a stationary standard deviation of sigma / sqrt(2); an
OU process whose stationary standard deviation is sigma itself (i.e.
``WongWangParams(sigma=0.02 * 2**0.5)`` here) gives alpha ~ 7.3 %, beta ~ 1.4,
which suggests that convention behind the published fit. The default keeps
the equation as printed.

Numerics
--------
``simulate`` integrates ``S`` with forward Euler and ``I_noise`` with the exact
Ornstein-Uhlenbeck update, on sub-steps of at most ``MAX_SUBSTEP_MS``. All
randomness comes from the ``generator`` argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import scipy.optimize
import torch

__all__ = [
    "MAX_SUBSTEP_MS",
    "WongWangParams",
    "WongWangResult",
    "decide",
    "firing_rate_hz",
    "fit_weibull",
    "simulate",
    "spontaneous_s",
    "stimulus_hz",
]

# The noise is tau_AMPA = 2 ms correlated. Its OU update is exact for any step,
# but S integrates H(x(t)) and x carries that noise, so the sub-step must
# resolve tau_AMPA for S to feel the right noise: 0.5 ms = tau_AMPA / 4. The
# deterministic part is slow (effective time constant of S >= ~25 ms even at
# 40 Hz), where 0.5 ms Euler is accurate to well under 1 %.
MAX_SUBSTEP_MS = 0.5


@dataclass(frozen=True)
class WongWangParams:
    """Appendix parameter set of Wong & Wang (2006), reduced two-variable model."""

    gamma: float = 0.641
    """NMDA saturation factor (dimensionless; multiplies H in Hz, time in s)."""
    tau_s_ms: float = 100.0
    """NMDA gating decay time constant tau_S (ms)."""
    tau_ampa_ms: float = 2.0
    """Correlation time of the noise current tau_AMPA (ms)."""
    j_n11: float = 0.2609
    """Self-excitation J_N11 (nA)."""
    j_n12: float = 0.0497
    """Cross-coupling J_N12 (nA); enters x_i with a minus sign."""
    j_ext: float = 5.2e-4
    """Stimulus rate to current J_A,ext (nA/Hz)."""
    i_0: float = 0.3255
    """Constant background current I_0 (nA)."""
    sigma: float = 0.02
    """Noise amplitude sigma (nA)."""
    mu0_hz: float = 30.0
    """Stimulus rate at zero coherence mu_0 (Hz)."""
    a: float = 270.0
    """Gain of H (Hz/nA)."""
    b: float = 108.0
    """Threshold of H (Hz)."""
    d: float = 0.154
    """Curvature of H (s)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"WongWangParams.{f.name} must be a finite number, got {value!r}")
        for name in ("gamma", "tau_s_ms", "tau_ampa_ms", "a", "d"):
            if getattr(self, name) <= 0:
                raise ValueError(f"WongWangParams.{name} must be > 0, got {getattr(self, name)}")
        for name in ("sigma", "j_ext", "mu0_hz"):
            if getattr(self, name) < 0:
                raise ValueError(f"WongWangParams.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class WongWangResult:
    """Trajectories of ``simulate``; sample k is the state at t_k = k * dt_ms."""

    rates_hz: torch.Tensor
    """Pool firing rates H(x_i): [T, B, 2] (Hz)."""
    s: torch.Tensor
    """NMDA gating variables S_i: [T, B, 2] (dimensionless, in [0, 1])."""


def firing_rate_hz(x_na: torch.Tensor, params: WongWangParams = WongWangParams()) -> torch.Tensor:
    """Input-output function H(x) = (a x - b) / (1 - exp(-d (a x - b))) in Hz.

    With z = d (a x - b), d H = z / (1 - exp(-z)). For z >= 0 this is evaluated
    as z / -expm1(-z); for z < 0 as |z| exp(z) / -expm1(z), so nothing overflows
    for any finite x. At z = 0 (0/0; limit 1/d) the Taylor series
    1 + z/2 + z^2/12 is used, which keeps value and gradient finite and smooth.
    """
    z = params.d * (params.a * x_na - params.b)
    small = z.abs() < 1e-4
    # Double-where: the unused branch must not see z = 0, or its NaN gradient leaks.
    z_safe = torch.where(small, torch.ones_like(z), z)
    abs_z = z_safe.abs()
    exact = abs_z * torch.exp(torch.clamp(z_safe, max=0.0)) / -torch.expm1(-abs_z)
    series = 1.0 + z / 2.0 + z * z / 12.0
    return torch.where(small, series, exact) / params.d


def spontaneous_s(params: WongWangParams = WongWangParams(), input_hz: float = 0.0) -> float:
    """Lowest symmetric fixed point S* of both pools for a constant input (Hz) to each.

    With no noise and equal inputs, S* solves S = gamma H tau_S / (1 + gamma H tau_S),
    H = H((J_N11 - J_N12) S + I_0 + J_ext input_hz). The right side is increasing in S,
    so iterating it from S = 0 climbs monotonically to the lowest fixed point, which
    for input_hz = 0 is the spontaneous state.
    """
    tau_s = params.tau_s_ms / 1000.0
    s = torch.zeros((), dtype=torch.float64)
    for _ in range(10_000):
        x = (params.j_n11 - params.j_n12) * s + params.i_0 + params.j_ext * input_hz
        g = params.gamma * firing_rate_hz(x, params) * tau_s
        s_next = g / (1.0 + g)
        if abs(float(s_next - s)) < 1e-14:
            return float(s_next)
        s = s_next
    raise RuntimeError("spontaneous_s: fixed-point iteration did not converge")


def stimulus_hz(coherence_pct: torch.Tensor, mu0_hz: float) -> torch.Tensor:
    """Stimulus rates of the two pools, mu0 (1 +- c'/100): [B] -> [B, 2] (Hz).

    Pool 1 (index 0) is favoured by positive coherence.
    """
    c = torch.as_tensor(coherence_pct)
    if c.ndim != 1:
        raise ValueError(f"coherence_pct must have shape [B], got {tuple(c.shape)}")
    if not c.is_floating_point():
        c = c.to(torch.get_default_dtype())
    return mu0_hz * torch.stack((1.0 + c / 100.0, 1.0 - c / 100.0), dim=-1)


def _state_like(value, name: str, batch: int, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    try:
        return torch.broadcast_to(t, (batch, 2)).clone()
    except RuntimeError:
        raise ValueError(
            f"{name} must broadcast to [B, 2] = [{batch}, 2], got shape {tuple(t.shape)}"
        ) from None


def simulate(
    input_hz: torch.Tensor,
    dt_ms: float,
    *,
    params: WongWangParams = WongWangParams(),
    noise: bool = True,
    generator: torch.Generator | None = None,
    substeps: int | None = None,
    s0: torch.Tensor | float | None = None,
    i_noise0: torch.Tensor | float | None = None,
) -> WongWangResult:
    """Integrate the reduced model for a batch of trials.

    Args:
        input_hz: [T, B, 2] stimulus rate of each pool (Hz); ``input_hz[k]`` is
            constant on [t_k, t_k + dt_ms). Sets device and dtype of everything.
        dt_ms: sample interval of input and output (ms), > 0.
        params: model parameters.
        noise: add the Ornstein-Uhlenbeck noise current (False: deterministic).
        generator: the only source of randomness (must live on input_hz's device);
            None uses torch's global generator.
        substeps: Euler(-Maruyama) sub-steps per dt_ms; default
            ceil(dt_ms / MAX_SUBSTEP_MS), see the comment at MAX_SUBSTEP_MS.
        s0: initial S, broadcast to [B, 2]; default the spontaneous fixed point.
        i_noise0: initial noise current (nA), broadcast to [B, 2]; default a draw
            from its stationary distribution N(0, sigma^2 / 2), or 0 without noise.

    Returns:
        WongWangResult with rates_hz and s of shape [T, B, 2]; sample k is the
        state at t_k = k dt_ms, so sample 0 is the initial state (its rate uses
        input_hz[0]).
    """
    if not isinstance(input_hz, torch.Tensor) or not input_hz.is_floating_point():
        raise ValueError("input_hz must be a floating-point torch.Tensor of shape [T, B, 2]")
    if input_hz.ndim != 3 or input_hz.shape[-1] != 2 or input_hz.shape[0] < 1:
        raise ValueError(f"input_hz must have shape [T>=1, B, 2], got {tuple(input_hz.shape)}")
    if not (isinstance(dt_ms, int | float) and math.isfinite(dt_ms) and dt_ms > 0):
        raise ValueError(f"dt_ms must be a finite number > 0, got {dt_ms!r}")
    if substeps is None:
        substeps = math.ceil(dt_ms / MAX_SUBSTEP_MS - 1e-9)
    if isinstance(substeps, bool) or not isinstance(substeps, int) or substeps < 1:
        raise ValueError(f"substeps must be an int >= 1, got {substeps!r}")
    if not isinstance(params, WongWangParams):
        raise ValueError(f"params must be a WongWangParams, got {type(params).__name__}")

    n_steps, batch, _ = input_hz.shape
    p = params
    h_ms = dt_ms / substeps
    s = _state_like(spontaneous_s(p) if s0 is None else s0, "s0", batch, input_hz)
    if i_noise0 is not None:
        i_noise = _state_like(i_noise0, "i_noise0", batch, input_hz)
    elif noise:
        i_noise = (p.sigma / math.sqrt(2.0)) * torch.randn(
            batch, 2, generator=generator, dtype=input_hz.dtype, device=input_hz.device
        )
    else:
        i_noise = torch.zeros(batch, 2, dtype=input_hz.dtype, device=input_hz.device)

    # Exact OU step: I <- I e^{-h/tau} + sqrt(var (1 - e^{-2h/tau})) xi, var = sigma^2 / 2.
    ou_decay = math.exp(-h_ms / p.tau_ampa_ms)
    ou_std = p.sigma * math.sqrt((1.0 - ou_decay**2) / 2.0)
    gamma_per_ms = p.gamma / 1000.0  # H is in Hz, time in ms
    i_ext = p.j_ext * input_hz  # [T, B, 2] nA

    def rate_hz(s: torch.Tensor, i_noise: torch.Tensor, i_ext_k: torch.Tensor) -> torch.Tensor:
        s1, s2 = s[:, 0], s[:, 1]
        recurrent = torch.stack((p.j_n11 * s1 - p.j_n12 * s2, p.j_n11 * s2 - p.j_n12 * s1), dim=-1)
        return firing_rate_hz(recurrent + p.i_0 + i_ext_k + i_noise, p)

    rates, gates = [rate_hz(s, i_noise, i_ext[0])], [s]
    for k in range(n_steps - 1):
        for _ in range(substeps):
            h = rate_hz(s, i_noise, i_ext[k])
            s = s + h_ms * (-s / p.tau_s_ms + (1.0 - s) * gamma_per_ms * h)
            if noise:
                xi = torch.randn(
                    batch, 2, generator=generator, dtype=input_hz.dtype, device=input_hz.device
                )
                i_noise = ou_decay * i_noise + ou_std * xi
            elif i_noise0 is not None:
                i_noise = ou_decay * i_noise  # a given initial current relaxes to 0
        rates.append(rate_hz(s, i_noise, i_ext[k + 1]))
        gates.append(s)
    return WongWangResult(rates_hz=torch.stack(rates), s=torch.stack(gates))


def decide(
    rates_hz: torch.Tensor,
    dt_ms: float,
    threshold_hz: float = 15.0,
    window_ms: float = 50.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choice and decision time: first time a pool's running-average rate reaches threshold.

    The running average at sample k is the mean of the last n = round(window_ms / dt_ms)
    samples (samples before t_0 are taken equal to sample 0, i.e. the state held
    before recording). The decision is at the first k where either pool's average
    is >= threshold_hz; the choice is the pool with the larger average there.

    Args:
        rates_hz: [T, B, 2] pool rates (Hz), sample k at t_k = k dt_ms.
        dt_ms: sample interval (ms), > 0.
        threshold_hz: decision threshold (Hz); the paper uses 15 Hz.
        window_ms: averaging window (ms), >= dt_ms; the paper uses 50 ms.

    Returns:
        choice: [B] long, 0 (pool 1) or 1 (pool 2), -1 when no decision.
        decision_time_ms: [B] float, t_k of the decision from sample 0, nan when none.
    """
    if not isinstance(rates_hz, torch.Tensor) or rates_hz.ndim != 3 or rates_hz.shape[-1] != 2:
        raise ValueError(
            f"rates_hz must be a tensor of shape [T, B, 2], got {getattr(rates_hz, 'shape', None)}"
        )
    if not (isinstance(dt_ms, int | float) and math.isfinite(dt_ms) and dt_ms > 0):
        raise ValueError(f"dt_ms must be a finite number > 0, got {dt_ms!r}")
    if not (isinstance(window_ms, int | float) and window_ms >= dt_ms):
        raise ValueError(f"window_ms must be >= dt_ms = {dt_ms}, got {window_ms!r}")
    n = max(1, round(window_ms / dt_ms))
    # float64 cumulative sums keep the windowed mean exact to ~1e-12 Hz over long trials.
    acc_dtype = torch.float32 if rates_hz.device.type == "mps" else torch.float64
    r = rates_hz.to(acc_dtype)
    padded = torch.cat((r[:1].expand(n, -1, -1), r), dim=0)
    csum = torch.cumsum(padded, dim=0)
    avg = (csum[n:] - csum[:-n]) / n  # [T, B, 2], mean of samples k-n+1..k
    crossed = (avg >= threshold_hz).any(dim=-1)  # [T, B]
    decided = crossed.any(dim=0)
    k = torch.argmax(crossed.to(torch.uint8), dim=0)  # first True (0 if none)
    at_k = avg[k, torch.arange(avg.shape[1], device=avg.device)]  # [B, 2]
    choice = torch.where(decided, torch.argmax(at_k, dim=-1), torch.full_like(k, -1))
    time_dtype = rates_hz.dtype if rates_hz.is_floating_point() else torch.float32
    t_ms = k.to(time_dtype) * dt_ms
    decision_time_ms = torch.where(decided, t_ms, torch.full_like(t_ms, float("nan")))
    return choice, decision_time_ms


def _weibull(c: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    return 1.0 - 0.5 * np.exp(-((c / alpha) ** beta))


def fit_weibull(coherence_pct, p_correct) -> tuple[float, float]:
    """Least-squares fit of p = 1 - 0.5 exp(-(c/alpha)^beta) to a psychometric curve.

    ``scipy.optimize.curve_fit`` (Levenberg-Marquardt) on (log alpha, log beta), started from
    the best point of a coarse grid, so both stay positive and the start is not arbitrary.

    Args:
        coherence_pct: [N] coherences (%), >= 0, at least two of them > 0.
        p_correct: [N] fraction correct at each coherence.

    Returns:
        (alpha_pct, beta) as floats.
    """
    c = np.asarray(coherence_pct, dtype=np.float64).reshape(-1)
    p = np.asarray(p_correct, dtype=np.float64).reshape(-1)
    if c.shape != p.shape:
        raise ValueError(f"coherence_pct {c.shape} and p_correct {p.shape} differ in shape")
    if not (np.all(np.isfinite(c)) and np.all(c >= 0) and np.count_nonzero(c > 0) >= 2):
        raise ValueError("coherence_pct must be finite, >= 0, with at least two values > 0")
    if not np.all(np.isfinite(p)):
        raise ValueError("p_correct must be finite")

    def model(c_pct: np.ndarray, log_alpha: float, log_beta: float) -> np.ndarray:
        return _weibull(c_pct, math.exp(log_alpha), math.exp(log_beta))

    # Start from the best point of a coarse grid (the fit is not convex in alpha and beta).
    log_a = np.log(np.geomspace(float(c.max()) / 1000.0, 10.0 * float(c.max()), 60))
    log_b = np.log(np.geomspace(0.2, 10.0, 40))
    grid_a, grid_b = np.meshgrid(log_a, log_b, indexing="ij")
    u = (c[None, None, :] / np.exp(grid_a)[..., None]) ** np.exp(grid_b)[..., None]
    cost = np.sum((1.0 - 0.5 * np.exp(-u) - p) ** 2, axis=-1)
    i, j = np.unravel_index(np.argmin(cost), cost.shape)
    theta, _ = scipy.optimize.curve_fit(
        model, c, p, p0=(log_a[i], log_b[j]), method="lm", xtol=1e-14, ftol=1e-14, maxfev=10000
    )
    return math.exp(theta[0]), math.exp(theta[1])
