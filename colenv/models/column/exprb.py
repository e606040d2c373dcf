"""EXPRB2: exponential Rosenbrock-Euler with a restart at every change of the drive.

The column model's stiff networks (Decision: the L2/3 E-I loop rings at ~600 Hz after the
stimulus onset, eigenvalues -790 +- 3720i 1/s untrained, stiffer trained) defeat both the
explicit rk4exp (it runs away at 0.5 ms) and the L-stable ros2 (it damps the ringing and ends
5-15 Hz off the float64 reference). Exponential Rosenbrock-Euler (Hochbruck, Ostermann &
Schweitzer 2009, SIAM J Numer Anal 47:786, sec. 2; Hochbruck & Ostermann 2010, Acta Numerica
19:209, sec. 2.4) integrates the linearisation at every step exactly:

    y_{n+1} = y_n + h phi1(h J_n) F(y_n),       phi1(z) = (e^z - 1) / z,

J_n the Jacobian of F at y_n. It is of order 2 (the remainder F(y) - J_n y has zero derivative
at y_n) and exact for linear problems, with no step bound from stiffness: an oscillatory
mode of any frequency is rotated and damped exactly as the linearised equations say.

**Jacobian and phi1.** J_n is the exact Jacobian of (v, a, r) (and S, gated) at y_n, never
formed: the equations' structure gives its action on a vector z for one P x P product,

    q = phi'(x_n) (z_v - z_a),   J z = (q W - z_v / tau_m, (kappa q - z_a) / tau_a,
                                       (q - z_r) / tau_s [, gamma (1 - S) q - (1/tau_S + gamma phi) z_S])

(with gating z_v's row also gets (z_S / (gamma tau_S)) W_slow). The increment u = h phi1(h J_n)
F(y_n) solves u' = J_n u + F(y_n), u(0) = 0 over one step: the truncated Taylor series of the
augmented exponential exp([[h J, h F], [0, 0]]) e_last (Al-Mohy & Higham 2011, SIAM J Sci
Comput 33:488, "Computing the action of the matrix exponential", Algorithm 3.2) in s substeps
of degree <= m: per substep t_1 = (h/s)(J u + F), t_j = (h/s) J t_{j-1} / j, u += sum_j t_j.
(m, s) minimise m s subject to ||h J||_1 / s <= theta_m, theta_m the largest norm for which
the degree-m polynomial has a backward error within the dtype's unit roundoff u (their
Table 3.1, recomputed here: THETA_SINGLE, THETA_DOUBLE); the norm is that of the balanced
Jacobian, bounded by its column sums (:meth:`_Drift.norm_bound`). A substep stops early when
its last two terms are below u times the increment so far (their early termination). On
Decision at 0.5 ms this takes about 10 products per step (``analysis/exprb_cost.py``), where a
dense 48 x 48 exponential costs ~10 matrix products.

**Onset refinement.** The linearisation at y_n fails over a step in which the rates leave
the exponential foot of the transfer function: right after a large step of drive (the
stimulus onset) exprb2 at 0.5 ms is 24 Hz off on the untrained Decision network, while it
is within 0.9 Hz everywhere else. So the rollout restarts with ``onset_refine`` times smaller
steps for ``onset_window_ms`` after every grid point where the piecewise-constant drive
changes (any trial, any population; and from the initial state): a classical restart at a
discontinuity. The stimulus onset's transient decays within a few ms (1 / 790 1/s = 1.3 ms),
so the windows cost little (Decision: 3 windows of 5 ms in a 1.5 s trial, 15 % more
steps). A drive that changes at every grid point (a noisy stimulus) is refined everywhere.

SDE (``noise``): the kick v += s xi of the other fast methods after each step of h (after the
``onset_refine`` sub-steps that make it up inside a window): the same increments tensor, so a
seed reproduces a rollout and ``noise_std = 0`` is the ODE exactly.

Gradient: autograd through the steps, the exact gradient of the discrete scheme ((m, s) and
the early stops are piecewise constant). Any device, any dtype, gated networks.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import torch

from colenv.models.column.transfer import rate_function
from colenv.solve import FastOptions

if TYPE_CHECKING:
    from colenv.models.column.network import ColumnTerms


# theta_m, m = 1..55: the largest ||h J||_1 / s for which the degree-m Taylor polynomial has a
# backward error within the unit roundoff u (Al-Mohy & Higham 2011, sec. 3, Table 3.1;
# computed from the series of log(e^-x T_m(x)) in tests/test_exprb.py)
THETA_SINGLE = (
    1.1921e-07,
    5.9789e-04,
    1.1234e-02,
    5.1166e-02,
    1.3085e-01,
    2.4953e-01,
    4.0146e-01,
    5.8005e-01,
    7.7951e-01,
    9.9518e-01,
    1.2235e00,
    1.4617e00,
    1.7076e00,
    1.9599e00,
    2.2170e00,
    2.4783e00,
    2.7428e00,
    3.0101e00,
    3.2796e00,
    3.5509e00,
    3.8239e00,
    4.0981e00,
    4.3735e00,
    4.6498e00,
    4.9269e00,
    5.2047e00,
    5.4831e00,
    5.7620e00,
    6.0414e00,
    6.3211e00,
    6.6011e00,
    6.8815e00,
    7.1620e00,
    7.4428e00,
    7.7238e00,
    8.0049e00,
    8.2862e00,
    8.5676e00,
    8.8491e00,
    9.1307e00,
    9.4123e00,
    9.6940e00,
    9.9758e00,
    1.0258e01,
    1.0539e01,
    1.0821e01,
    1.1103e01,
    1.1385e01,
    1.1667e01,
    1.1949e01,
    1.2231e01,
    1.2513e01,
    1.2795e01,
    1.3077e01,
    1.3359e01,
)
THETA_DOUBLE = (
    2.2204e-16,
    2.5810e-08,
    1.3863e-05,
    3.3972e-04,
    2.4009e-03,
    9.0657e-03,
    2.3845e-02,
    4.9912e-02,
    8.9578e-02,
    1.4418e-01,
    2.1424e-01,
    2.9962e-01,
    3.9978e-01,
    5.1391e-01,
    6.4108e-01,
    7.8029e-01,
    9.3053e-01,
    1.0909e00,
    1.2604e00,
    1.4383e00,
    1.6237e00,
    1.8161e00,
    2.0147e00,
    2.2190e00,
    2.4286e00,
    2.6429e00,
    2.8614e00,
    3.0840e00,
    3.3102e00,
    3.5397e00,
    3.7722e00,
    4.0076e00,
    4.2455e00,
    4.4858e00,
    4.7283e00,
    4.9729e00,
    5.2194e00,
    5.4676e00,
    5.7174e00,
    5.9688e00,
    6.2216e00,
    6.4757e00,
    6.7310e00,
    6.9875e00,
    7.2451e00,
    7.5036e00,
    7.7632e00,
    8.0236e00,
    8.2849e00,
    8.5469e00,
    8.8097e00,
    9.0732e00,
    9.3373e00,
    9.6021e00,
    9.8675e00,
)
M_MAX = 55  # largest Taylor degree of one substep (Al-Mohy & Higham's m_max)


def theta_table(dtype: torch.dtype) -> tuple[float, ...]:
    """theta_m (m = 1..55) for the unit roundoff of ``dtype``: float32 (and lower) takes the
    single-precision table, float64 the double one."""
    return THETA_DOUBLE if dtype == torch.float64 else THETA_SINGLE


def unit_roundoff(dtype: torch.dtype) -> float:
    """u of ``dtype`` (2^-24 float32, 2^-53 float64): the Taylor series' stopping tolerance."""
    return 2.0**-53 if dtype == torch.float64 else 2.0**-24


@functools.lru_cache(maxsize=8)
def _plan_tables(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(theta_m, m) as float64 tensors [M_MAX] on ``device``: built once, read every step."""
    theta = torch.tensor(theta_table(dtype), dtype=torch.float64, device=device)
    return theta, torch.arange(1, M_MAX + 1, dtype=torch.float64, device=device)


S_MAX = 2**20
"""More Taylor substeps than this in one step (or a norm that is not finite): the trial has
run away (the native kernel's EXPRB2_S_MAX)."""


def taylor_plan(norm: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, s) [B] long: the degree and number of substeps that minimise m * s subject to
    ||h J||_1 / s <= theta_m (``norm`` [B], an upper bound of ||h J||_1), the first minimum
    (the smallest m of equal cost). A trial whose norm is not finite or needs more than
    :data:`S_MAX` substeps gets s = 0 (it has run away; :meth:`_Drift.step` sets it to NaN)."""
    theta, degrees = _plan_tables(dtype, norm.device)
    n = norm.detach().to(torch.float64).clamp_min(0.0)
    finite = torch.isfinite(n)
    n = torch.where(finite, n, torch.zeros_like(n))
    substeps = torch.ceil(n[:, None] / theta).clamp_min(1.0)  # [B, M_MAX]
    best = torch.argmin(degrees * substeps, dim=1)
    s = substeps.gather(1, best[:, None]).squeeze(1)
    s = torch.where(finite & (s <= S_MAX), s, torch.zeros_like(s))
    return best + 1, s.long()


def onset_intervals(drive: torch.Tensor, n_int: int, window: int) -> torch.Tensor:
    """bool [n_int]: the grid intervals that start within ``window`` intervals of a change of
    ``drive`` [T, B, P] (interval 0, the initial state, counts as one)."""
    fine = torch.zeros(n_int, dtype=torch.bool)
    if window <= 0 or n_int <= 0:
        return fine
    d = drive[:n_int].detach()
    starts = [0]
    if n_int > 1:
        changed = (d[1:] != d[:-1]).flatten(1).any(dim=1).cpu()
        starts += (torch.nonzero(changed).flatten() + 1).tolist()
    for k in starts:
        fine[k : k + window] = True
    return fine


def refined_intervals(
    drive: torch.Tensor, n_points: int, n_sub: int, h: float, options: FastOptions
) -> torch.Tensor:
    """bool [n_points - 1]: the grid intervals exprb2 refines (``options.onset_refine`` > 1),
    those within ``options.onset_window_ms`` of a change of ``drive``; the grid interval is
    ``n_sub`` steps of ``h`` seconds."""
    refine, window_ms = options.onset_refine, options.onset_window_ms
    window = math.ceil(window_ms * 1e-3 / (n_sub * h) - 1e-9) if refine > 1 else 0
    return onset_intervals(drive, n_points - 1, window)


def native_arguments(terms: ColumnTerms) -> dict:
    """The network's arguments of :func:`colenv.models.column.native.exprb2_forward` and
    ``exprb2_rollout`` after the grid ones: the drive, weights and constants of ``terms``,
    contiguous as the kernel reads them, with the gating synapse's where it has one."""
    args = {
        "drive": terms.drive.contiguous(),
        "w_t": terms.w_t,
        "kappa": terms.kappa.contiguous(),
        "c": terms.constants,
    }
    if terms.gated:
        args.update(w_slow_t=terms.w_slow_t, gate_tau=terms.gate_tau, gate_gamma=terms.gate_gamma)
    return args


def jacobian_products(
    terms: ColumnTerms,
    y0: torch.Tensor,
    n_points: int,
    n_sub: int,
    h: float,
    options: FastOptions | None = None,
) -> tuple[int, int]:
    """(steps, Jacobian products) of one exprb2 forward on the native kernel (float32 CPU, no
    gradient; the onset restart's sub-steps counted as steps): what a rollout costs."""
    from colenv.models.column import native

    options = FastOptions() if options is None else options
    fine = refined_intervals(terms.drive, n_points, n_sub, h, options)
    counts = torch.zeros(2, dtype=torch.int64)
    with torch.no_grad():
        native.exprb2_forward(
            y0=y0.contiguous(), n_points=n_points, n_sub=n_sub, h=h, fine=fine,
            refine=options.onset_refine, counts=counts, **native_arguments(terms),
        )  # fmt: skip
    steps, products = counts.tolist()
    return steps, products


class _Drift:
    """F, the action of its Jacobian J and a bound of ||J||_1 for one rollout's column
    equations; state y = [v, a, r] ([v, a, r, S] with gating), each [B, P]."""

    def __init__(self, terms: ColumnTerms) -> None:
        c = terms.constants
        self.P = terms.n_pop
        self.w_t, self.kappa = terms.w_t, terms.kappa
        self.inv_tau_m, self.inv_tau_a = 1.0 / c["tau_m"], 1.0 / c["tau_a"]
        self.inv_tau_s = 1.0 / c["tau_s"]
        self.rate = rate_function(c, "slope")
        self.w_slow = getattr(terms, "w_slow_t", None)
        self.n_var = 3 if self.w_slow is None else 4
        with torch.no_grad():  # the norm bound only picks (m, s): no gradient
            self.row_sum = self.w_t.abs().sum(1) + self.kappa.abs() * self.inv_tau_a
            self.floor = max(self.inv_tau_m, self.inv_tau_a)
            if self.w_slow is not None:
                self.tau_g, self.gamma_g = float(terms.gate_tau), float(terms.gate_gamma)
                self.inv_g = 1.0 / (self.gamma_g * self.tau_g)
                self.slow_sum = self.w_slow.abs().sum(1) * self.inv_g

    def f(self, y: torch.Tensor, drive: torch.Tensor):
        """(F(y), rates phi, slopes phi') at y [B, n_var P]."""
        P = self.P
        v, a, r = y[:, :P], y[:, P : 2 * P], y[:, 2 * P : 3 * P]
        p, s = self.rate(v - a)
        dv = torch.mm(p, self.w_t) - v * self.inv_tau_m + drive
        parts = [dv, (self.kappa * p - a) * self.inv_tau_a, (p - r) * self.inv_tau_s]
        if self.w_slow is not None:
            S = y[:, 3 * P :]
            parts[0] = dv + torch.mm(S * self.inv_g, self.w_slow)
            parts.append(self.gamma_g * (1.0 - S) * p - S / self.tau_g)
        return torch.cat(parts, dim=-1), p, s

    def jacobian_action(self, y, p, s):
        """z -> J z, J the Jacobian of F at y (rates p, slopes s there): one P x P product."""
        P = self.P
        kappa = self.kappa
        S = y[:, 3 * P :] if self.w_slow is not None else None

        def apply(z: torch.Tensor) -> torch.Tensor:
            zv, za, zr = z[:, :P], z[:, P : 2 * P], z[:, 2 * P : 3 * P]
            q = s * (zv - za)
            ov = torch.mm(q, self.w_t) - zv * self.inv_tau_m
            parts = [ov, (kappa * q - za) * self.inv_tau_a, (q - zr) * self.inv_tau_s]
            if S is not None:
                zs = z[:, 3 * P :]
                parts[0] = ov + torch.mm(zs * self.inv_g, self.w_slow)
                decay = 1.0 / self.tau_g + self.gamma_g * p
                parts.append(self.gamma_g * (1.0 - S) * q - decay * zs)
            return torch.cat(parts, dim=-1)

        return apply

    def norm_bound(self, y, p, s) -> torch.Tensor:
        """[B]: an upper bound of ||D^-1 J D||_1 (the largest column sum), D the diagonal
        scaling of the state that balances J's couplings: r by the largest slope (r only
        listens, so its entry s_i / tau_s in v's column shrinks to at most 1 / tau_s), S (gated)
        by sigma = sqrt(A / B), A the largest entry v -> S and B the largest column sum S -> v
        (Parlett & Reinsch's balancing of one pair of blocks). Any such D gives a valid bound
        (the Taylor terms are the same; only the choice of (m, s) uses the norm)."""
        with torch.no_grad():
            slope = s.abs()
            top = slope.amax(1, keepdim=True).clamp_min(1.0)
            col = slope * self.row_sum + slope / top * self.inv_tau_s
            if self.w_slow is not None:
                S = y[:, 3 * self.P :]
                into_s = self.gamma_g * (1.0 - S).abs() * slope  # J[S_i, v_i], J[S_i, a_i]
                b = self.slow_sum.max().clamp_min(1e-30)
                sigma = (into_s.amax(1, keepdim=True).clamp_min(1e-30) / b).sqrt()
                col = col + into_s / sigma
            bound = (col.amax(1) + self.floor).clamp_min(self.inv_tau_s)
            if self.w_slow is not None:
                decay = (1.0 / self.tau_g + self.gamma_g * p).abs()
                slow = sigma * self.slow_sum + decay
                bound = torch.maximum(bound, slow.amax(1))
            return bound

    def step(self, y: torch.Tensor, drive: torch.Tensor, h: float) -> torch.Tensor:
        """y + h phi1(h J) F(y), phi1's action by the substepped Taylor series."""
        f, p, s = self.f(y, drive)
        jac = self.jacobian_action(y, p, s)
        degree, substeps = taylor_plan(self.norm_bound(y, p, s) * h, y.dtype)
        # a trial without a plan (s = 0) has run away: its state becomes NaN, as the native
        # kernel's does, and the others go on; colenv.solve.check_states reports it
        ran_away = (substeps == 0)[:, None]
        tol = unit_roundoff(y.dtype)
        c = (h / substeps.clamp_min(1).to(y.dtype))[:, None]
        m_max, s_max = int(degree.max()), int(substeps.max())
        u = torch.zeros_like(y)
        for i in range(s_max):
            live = (i < substeps)[:, None]  # [B, 1]: this trial still has substeps
            t = c * (jac(u) + f)
            acc = t
            prev = t.abs().amax(1, keepdim=True)
            for j in range(2, m_max + 1):
                live = live & (j <= degree)[:, None]
                if not bool(live.any()):
                    break
                t = c * jac(t) / j
                acc = acc + torch.where(live, t, torch.zeros_like(t))
                cur = t.abs().amax(1, keepdim=True)
                done = (prev + cur) <= tol * (u + acc).abs().amax(1, keepdim=True)
                live = live & ~done
                prev = cur
            u = torch.where((i < substeps)[:, None], u + acc, u)
        y_next = y + u
        if bool(ran_away.any()):
            y_next = torch.where(ran_away, torch.full_like(y_next, math.nan), y_next)
        return y_next


def exprb2_rollout(
    terms: ColumnTerms,
    y0: torch.Tensor,
    n_points: int,
    n_sub: int,
    h: float,
    options: FastOptions | None = None,
    *,
    noise: torch.Tensor | None = None,
    native: bool = False,
) -> torch.Tensor:
    """States [n_points, B, S] of exprb2 from y0 [B, S] (S = 3P, or 4P with gating),
    ``n_sub`` steps of ``h`` seconds per grid interval under the piecewise-constant
    ``terms.drive`` ([T, B, P]), with ``options.onset_refine`` times smaller steps for
    ``options.onset_window_ms`` after every change of the drive; ``noise``: None or the
    kicks on v [n_points - 1, n_sub, B, P]. ``native``: on the C kernel
    (:func:`colenv.models.column.native.exprb2_rollout`: float32 CPU tensors, its discrete
    adjoint; the caller checks that it applies), else the torch path (gradient by autograd)."""
    options = FastOptions() if options is None else options
    options.check("exprb2", sde=noise is not None)  # (fast_rollout may skip SolverConfig's)
    refine = options.onset_refine
    P = terms.n_pop
    drift = _Drift(terms)
    if y0.shape[-1] != drift.n_var * P:
        raise ValueError(f"y0 must be [B, {drift.n_var}P = {drift.n_var * P}], got {list(y0.shape)}")  # fmt: skip
    n_int = n_points - 1
    fine_t = refined_intervals(terms.drive, n_points, n_sub, h, options)
    if native:
        from colenv.models.column import native as kernel

        return kernel.exprb2_rollout(
            y0=y0.contiguous(),  # the kernel reads y0, drive and kappa in memory order
            n_points=n_points,
            n_sub=n_sub,
            h=h,
            fine=fine_t,
            refine=refine,
            noise=noise,
            grad_pattern=terms.w_pattern_t,  # W's gradient only where it reaches a parameter
            slow_grad_pattern=terms.w_slow_pattern_t,
            **native_arguments(terms),
        )
    fine = fine_t.tolist()
    y = y0
    out = [y0]
    for k in range(n_int):
        d = terms.drive[k]
        m = refine if fine[k] else 1
        hh = h / m
        for i in range(n_sub):
            for _ in range(m):
                y = drift.step(y, d, hh)
            if noise is not None:
                y = torch.cat([y[:, :P] + noise[k, i], y[:, P:]], dim=-1)
        out.append(y)
    return torch.stack(out)
