"""ROS2: a stiff-robust fast step for the column model (two-stage Rosenbrock-W method).

At full transfer-function slope the L2/3 E-I loop of a column has eigenvalues of order
1e5 1/s: explicit schemes (rk4exp's RK4 on v and a) then need steps of about 0.1 ms, and at
0.25-0.5 ms they leave the float64 reference or run away. ROS2 (Verwer, Spee, Blom &
Hundsdorfer 1999, SIAM J Sci Comput 20:1456, eq. 2.3-2.5) treats a matrix W implicitly:

    (I - gamma h W) k1 = F(y_n)
    (I - gamma h W) k2 = F(y_n + h k1) - 2 k1
    y_{n+1} = y_n + 3/2 h k1 + 1/2 h k2,        gamma = 1 + 1/sqrt(2)

It is of order 2 for ANY matrix W (a W-method: the order conditions do not involve W,
Verwer et al. sec. 2), and with W = the exact Jacobian it is L-stable (R(z) -> 0 as
z -> -inf). So W may be the part of the Jacobian that makes the problem stiff, which keeps
the linear algebra small: here, per trial,

- v: each column's 8 x 8 block of d(dv/dt)/dv = -I / tau_m + W_blk diag(phi'(v - a)), with
  W_blk the column's within-column weights (w_t scaled as in the drift, [target, source]);
  lateral, feedforward and gated entries, and the v-a coupling, stay out of W;
- a: the exact diagonal d(da/dt)/da = -(1 + kappa phi') / tau_a;
- S (gated networks): the exact diagonal d(dS/dt)/dS = -1 / tau_S - gamma_S phi,

all evaluated at y_n (once per step, shared by both stages). The v blocks are solved through
one batched inverse [B, n_columns, 8, 8] per step (LU with partial pivoting), a and S by
division. r does not feed back into the dynamics: it is the exact low-pass filter of the rates
against their linear interpolant between the step's ends (exponential trapezoid, order 2,
exact decay): r' = E r + w0 phi(y_n) + w1 phi(y_{n+1}), E = exp(-h / tau_s),
w0 = (1 - E) / x - E, w1 = 1 - (1 - E) / x, x = h / tau_s.

SDE (``noise``): every step is followed by the kick v += s xi of the other fast methods
(:func:`colenv.models.column.integrators.noise_increments`, the same tensor, drawn once per
rollout), so a seed reproduces a rollout and ``noise_std = 0`` is the ODE exactly.

Gradient: autograd through the steps (the exact gradient of the discrete scheme, including the
dependence of W on y_n through phi'). The native C kernel (:mod:`colenv.models.column.native`,
``ros2.c``, :func:`native_forward`) runs the forward on CPU in float32 where no gradient is
needed (``solver.fast.kernel`` "auto"; "native" insists, "torch" never); a rollout that needs a
gradient, or a gated network, runs the torch path. There is no native adjoint yet, so
training with ros2 runs on the torch path.
"""

from __future__ import annotations

import ctypes
import math
from typing import TYPE_CHECKING

import torch

from colenv.errors import ConfigError
from colenv.models.column.transfer import rate_function

if TYPE_CHECKING:
    from colenv.models.column.network import ColumnTerms
    from colenv.solve import FastOptions

GAMMA = 1.0 + 1.0 / math.sqrt(2.0)
"""ROS2's gamma (Verwer et al. 1999): L-stable with the exact Jacobian"""
BLOCK = 8  # populations per column: the implicit blocks


def filter_weights(tau: float, h: float) -> tuple[float, float, float]:
    """(E, w0, w1) of the exact filter r' = E r + w0 p0 + w1 p1 of a rate that is linear
    between p0 (start) and p1 (end of the step): int_0^h exp(-(h - s) / tau) / tau p(s) ds."""
    x = h / tau
    one_minus_e = -math.expm1(-x)
    e = 1.0 - one_minus_e
    if x < 1e-4:  # (1 - E) / x by its series
        ratio = 1.0 - x / 2.0 + x * x / 6.0
    else:
        ratio = one_minus_e / x
    return e, ratio - e, 1.0 - ratio


def column_blocks(w_t: torch.Tensor) -> torch.Tensor:
    """Each column's within-column weights [n_columns, 8 target, 8 source] from w_t
    [P source, P target] (P = 8 n_columns)."""
    P = w_t.shape[0]
    if P % BLOCK:
        raise ConfigError(
            f"method 'ros2' needs whole columns of {BLOCK} populations (P = {P} populations)"
        )
    n = P // BLOCK
    idx = torch.arange(n, device=w_t.device)
    by_source = w_t.reshape(n, BLOCK, n, BLOCK)[idx, :, idx, :]  # [n, source, target]
    return by_source.transpose(1, 2)


def gating(terms: ColumnTerms) -> tuple[torch.Tensor, float, float] | None:
    """(w_slow_t, tau_S, gamma_S) of a gated network's terms, or None without gating."""
    w_slow = getattr(terms, "w_slow_t", None)
    if w_slow is None:
        return None
    return w_slow, float(terms.gate_tau), float(terms.gate_gamma)


def _step_function(h: float, c: dict, gate: tuple[float, float] | None):
    """``step(v, a, r, S, p, drive, w_t, blocks, kappa, w_slow) -> (v, a, r, S, p_end)``:
    one ROS2 step of h seconds from states [B, P] whose rates p = phi(v - a) are given
    (S and w_slow None without gating); p_end = phi(v' - a') at the new state."""
    inv_tau_m, inv_tau_a = 1.0 / c["tau_m"], 1.0 / c["tau_a"]
    gh = GAMMA * h
    diag_v = 1.0 + gh * inv_tau_m
    e_r, w0, w1 = filter_weights(c["tau_s"], h)
    phi_slope = rate_function(c, "slope")
    phi = rate_function(c, "autograd")
    if gate is not None:
        tau_g, gamma_g = gate
        inv_tau_g, inv_g = 1.0 / tau_g, 1.0 / (gamma_g * tau_g)

    def step(v, a, r, S, p, drive, w_t, blocks, kappa, w_slow):
        B, P = v.shape
        n = P // BLOCK
        _, s = phi_slope(v - a)  # the slope for W (its value p is given)
        # M = (1 + gamma h / tau_m) I - gamma h W_blk diag(s), per trial and column
        m = blocks.unsqueeze(0) * (-gh * s.view(B, n, 1, BLOCK))
        m = m + diag_v * torch.eye(BLOCK, dtype=v.dtype, device=v.device)
        m_inv = torch.linalg.inv(m)  # [B, n, 8, 8]
        m_a = 1.0 + gh * inv_tau_a * (1.0 + kappa * s)

        def solve_v(x):
            return (m_inv @ x.view(B, n, BLOCK, 1)).view(B, P)

        def rhs(v_, a_, p_, S_):
            dv = torch.mm(p_, w_t) - (v_ * inv_tau_m - drive)
            if S_ is not None:
                dv = dv + torch.mm(S_ * inv_g, w_slow)
            da = (kappa * p_ - a_) * inv_tau_a
            return dv, da

        dv1, da1 = rhs(v, a, p, S)
        kv1, ka1 = solve_v(dv1), da1 / m_a
        v2, a2 = v + h * kv1, a + h * ka1
        p2 = phi(v2 - a2)
        if S is not None:
            m_s = 1.0 + gh * (inv_tau_g + gamma_g * p)
            kS1 = (gamma_g * (1.0 - S) * p - S * inv_tau_g) / m_s
            S2 = S + h * kS1
        else:
            S2 = None
        dv2, da2 = rhs(v2, a2, p2, S2)
        kv2 = solve_v(dv2 - 2.0 * kv1)
        ka2 = (da2 - 2.0 * ka1) / m_a
        v_new = v + h * (1.5 * kv1 + 0.5 * kv2)
        a_new = a + h * (1.5 * ka1 + 0.5 * ka2)
        if S is not None:
            kS2 = (gamma_g * (1.0 - S2) * p2 - S2 * inv_tau_g - 2.0 * kS1) / m_s
            S = S + h * (1.5 * kS1 + 0.5 * kS2)
        p_end = phi(v_new - a_new)
        r = e_r * r + w0 * p + w1 * p_end
        return v_new, a_new, r, S, p_end

    return step


class _Ros2Problem(ctypes.Structure):
    """ros2.c's ``Ros2Problem``."""

    _fields_ = [
        *((name, ctypes.c_int32) for name in ("B", "P", "n_int", "n_sub", "n_threads")),
        *(
            (name, ctypes.c_void_p)
            for name in ("y0", "drive", "blk", "row_ptr", "col", "val", "kappa", "noise")
        ),
        *(
            (name, ctypes.c_float)
            for name in (
                "h",
                "gh",
                "da",
                "db",
                "inv_d",
                "inv_tau_m",
                "inv_tau_a",
                "e_r",
                "w0",
                "w1",
                "max_rate",
                "diag_v",
            )
        ),
        ("out", ctypes.c_void_p),
    ]


def native_forward(
    terms: ColumnTerms,
    y0: torch.Tensor,
    n_points: int,
    n_sub: int,
    h: float,
    noise: torch.Tensor | None = None,
    n_threads: int | None = None,
) -> torch.Tensor:
    """States [n_points, B, 3P] of ROS2 on the native C kernel (``native/ros2.c``): float32
    CPU tensors, no gating, no gradient (the same scheme as :func:`ros2_rollout`'s torch
    path, to float32 rounding). Raises RuntimeError where the kernel is unavailable."""
    from colenv.models.column import native

    lib = native._lib_or_raise()
    fn = lib.colenv_ros2_forward
    fn.argtypes = [ctypes.POINTER(_Ros2Problem)]
    fn.restype = ctypes.c_int
    c = terms.constants
    n_int = n_points - 1
    P = terms.n_pop
    y0 = y0.detach().contiguous()
    B = y0.shape[0]
    if y0.shape != (B, 3 * P) or y0.dtype != torch.float32 or y0.device.type != "cpu":
        raise ValueError(f"y0 must be a float32 CPU tensor [B, {3 * P}], got {y0.dtype} {list(y0.shape)}")  # fmt: skip
    drive = terms.drive.detach()[:n_int].contiguous()
    if drive.shape != (n_int, B, P):
        raise ValueError(f"drive must be [{n_int}, {B}, {P}], got {list(drive.shape)}")
    w_t = terms.w_t.detach().float()
    blocks = column_blocks(w_t).contiguous()
    rest = w_t.masked_fill(native._inside_blocks(P, BLOCK), 0.0)
    row_ptr, col, val = native.sparse_by_target(rest)
    kappa = terms.kappa.detach().float().contiguous()
    if noise is not None:
        noise = noise.detach()[:n_int].contiguous()
        if noise.shape != (n_int, n_sub, B, P):
            raise ValueError(f"noise must be [{n_int}, {n_sub}, {B}, {P}], got {list(noise.shape)}")  # fmt: skip
    out = torch.empty(n_points, B, 3 * P, dtype=torch.float32)
    e_r, w0, w1 = filter_weights(c["tau_s"], h)
    prob = _Ros2Problem(
        B=B,
        P=P,
        n_int=n_int,
        n_sub=n_sub,
        n_threads=n_threads or torch.get_num_threads(),
        y0=y0.data_ptr(),
        drive=drive.data_ptr(),
        blk=blocks.data_ptr(),
        row_ptr=row_ptr.data_ptr(),
        col=col.data_ptr(),
        val=val.data_ptr(),
        kappa=kappa.data_ptr(),
        noise=None if noise is None else noise.data_ptr(),
        h=h,
        gh=GAMMA * h,
        da=c["da"],
        db=c["db"],
        inv_d=1.0 / c["d"],
        inv_tau_m=1.0 / c["tau_m"],
        inv_tau_a=1.0 / c["tau_a"],
        e_r=e_r,
        w0=w0,
        w1=w1,
        max_rate=c.get("max_rate", 0.0),
        diag_v=1.0 + GAMMA * h / c["tau_m"],
        out=out.data_ptr(),
    )
    if fn(ctypes.byref(prob)):
        raise MemoryError("native ros2 kernel: out of memory for its scratch arrays")
    return out


def _use_native(kernel: str, terms: ColumnTerms, y0: torch.Tensor) -> bool:
    """Whether this ros2 rollout runs on the native forward; with kernel="native", a
    ConfigError saying why where it cannot."""
    from colenv.models.column import native

    tensors = (y0, terms.w_t, terms.drive, terms.kappa)
    why = None
    if torch.is_grad_enabled() and any(x.requires_grad for x in tensors):
        why = "it has no gradient (ros2's gradient is autograd on the torch path)"
    elif terms.gated:
        why = "it has no gating synapse (the torch path integrates gated networks)"
    elif not all(x.device.type == "cpu" and x.dtype == torch.float32 for x in tensors):
        why = f"it takes float32 CPU tensors (got {y0.dtype} on {y0.device})"
    elif not native.available():
        why = f"it is unavailable here ({native.unavailable_reason()})"
    if why is None:
        return True
    if kernel == "native":
        raise ConfigError(f"solver.fast.kernel = 'native' cannot run this ros2 rollout: {why}")
    return False


def ros2_rollout(
    terms: ColumnTerms,
    y0: torch.Tensor,
    n_points: int,
    n_sub: int,
    h: float,
    options: FastOptions | None = None,
    *,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """States [n_points, B, S] of ROS2 from y0 [B, S] (S = 3P, or 4P with gating), ``n_sub``
    steps of ``h`` seconds per grid interval under the piecewise-constant ``terms.drive``;
    ``noise``: None or the kicks on v [n_points - 1, n_sub, B, P]. Gradient by autograd."""
    if options is not None:  # the rule SolverConfig applies (fast_rollout may skip it)
        options.check("ros2", sde=noise is not None)
    kernel = "auto" if options is None else options.kernel
    if kernel != "torch" and _use_native(kernel, terms, y0):
        return native_forward(terms, y0, n_points, n_sub, h, noise)
    P = terms.n_pop
    gate = gating(terms)
    n_var = 4 if gate is not None else 3
    if y0.shape[-1] != n_var * P:
        raise ValueError(f"y0 must be [B, {n_var}P = {n_var * P}], got {list(y0.shape)}")
    w_t, kappa, drive = terms.w_t, terms.kappa, terms.drive
    blocks = column_blocks(w_t)
    w_slow = None
    if gate is not None:
        w_slow = gate[0]
    step = _step_function(h, terms.constants, None if gate is None else gate[1:])
    phi = rate_function(terms.constants, "autograd")
    v, a, r = y0[:, :P], y0[:, P : 2 * P], y0[:, 2 * P : 3 * P]
    S = y0[:, 3 * P :] if gate is not None else None
    p = phi(v - a)
    out = [y0]
    for k in range(n_points - 1):
        d = drive[k]
        for i in range(n_sub):
            v, a, r, S, p = step(v, a, r, S, p, d, w_t, blocks, kappa, w_slow)
            if noise is not None:
                v = v + noise[k, i]
                p = phi(v - a)
        parts = [v, a, r] if S is None else [v, a, r, S]
        out.append(torch.cat(parts, dim=-1))
    return torch.stack(out)
