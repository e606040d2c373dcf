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

**Jacobian.** J_n is the exact Jacobian of (v, a, r) (and S, gated) restricted to the
*coupled groups*: the strongly connected components of the directed graph of the weights
(w_t, and w_slow_t with gating). A column is one group; lateral connections in both
directions merge an area's columns into one (Decision: its two columns, 16 populations, J
48 x 48); a feedforward path between areas (one direction only) leaves the areas separate
groups. Where every connection lies within groups (Decision) J_n is the full Jacobian and the
scheme has order 2; entries between groups stay explicit in F and reduce the order of their
contribution to 1 (in practice small: that coupling is not the stiff part).

phi1(h J_n) F is one ``torch.linalg.matrix_exp`` of the augmented matrix
[[h J_g, h F_g], [0, 0]] per group and trial (its last column; Al-Mohy & Higham 2011, SIAM J
Sci Comput 33:488, Thm 2.1), batched over trials and over the groups of one size.

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

Gradient: autograd through the steps (``torch.linalg.matrix_exp`` included), the exact
gradient of the discrete scheme. Torch path only: any device, any dtype, gated networks.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from colenv.models.column.transfer import rate_function
from colenv.solve import FastOptions

if TYPE_CHECKING:
    from colenv.models.column.network import ColumnTerms


def coupled_groups(*weights_t: torch.Tensor) -> list[torch.Tensor]:
    """The strongly connected components of the directed graph with an edge source -> target
    wherever any of ``weights_t`` ([P source, P target]) is nonzero (self-loops implied):
    sorted index tensors, in order of their smallest index."""
    P = weights_t[0].shape[0]
    adj = torch.eye(P, dtype=torch.bool, device=weights_t[0].device)
    for w in weights_t:
        adj |= w.detach() != 0
    reach = adj.clone()
    for _ in range(max(1, math.ceil(math.log2(max(P, 2))))):  # transitive closure
        reach = reach | ((reach.float() @ reach.float()) > 0)
    same = reach & reach.T  # i and j reach each other
    seen = torch.zeros(P, dtype=torch.bool)
    groups = []
    for i in range(P):
        if seen[i]:
            continue
        members = torch.nonzero(same[i].cpu(), as_tuple=False).flatten()
        seen[members] = True
        groups.append(members.to(weights_t[0].device))
    return groups


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


class _Drift:
    """F and the coupled groups' Jacobian blocks of one rollout's column equations; state
    y = [v, a, r] ([v, a, r, S] with gating), each [B, P]."""

    def __init__(self, terms: ColumnTerms) -> None:
        c = terms.constants
        self.P = terms.n_pop
        self.w_t, self.kappa = terms.w_t, terms.kappa
        self.inv_tau_m, self.inv_tau_a = 1.0 / c["tau_m"], 1.0 / c["tau_a"]
        self.inv_tau_s = 1.0 / c["tau_s"]
        self.rate = rate_function(c, "slope")
        self.w_slow = getattr(terms, "w_slow_t", None)
        self.n_var = 3 if self.w_slow is None else 4
        if self.w_slow is not None:
            self.tau_g, self.gamma_g = float(terms.gate_tau), float(terms.gate_gamma)
            self.inv_g = 1.0 / (self.gamma_g * self.tau_g)
            self.groups = coupled_groups(self.w_t, self.w_slow)
        else:
            self.groups = coupled_groups(self.w_t)
        by_size: dict[int, list[torch.Tensor]] = {}
        for g in self.groups:
            by_size.setdefault(int(g.numel()), []).append(g)
        # per group size: the groups' populations [G, s] and their weights [G, s tgt, s src]
        self.buckets = []
        for s, gs in sorted(by_size.items()):
            idx = torch.stack(gs)
            w_in = self.w_t[idx.unsqueeze(2), idx.unsqueeze(1)].transpose(1, 2)
            ws_in = None
            if self.w_slow is not None:
                ws_in = self.w_slow[idx.unsqueeze(2), idx.unsqueeze(1)].transpose(1, 2)
            self.buckets.append((s, idx, w_in, ws_in))
        order = torch.cat([idx.flatten() for _, idx, _, _ in self.buckets])
        self.unsort = torch.argsort(order)  # bucket order -> population order

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

    def step(self, y: torch.Tensor, drive: torch.Tensor, h: float) -> torch.Tensor:
        """y + h phi1(h J) F(y), J the Jacobian within the coupled groups."""
        P, nv = self.P, self.n_var
        B = y.shape[0]
        f, p, s = self.f(y, drive)
        fv = f.view(B, nv, P)
        pieces = []
        for size, idx, w_in, ws_in in self.buckets:
            G = idx.shape[0]
            n = nv * size
            sg = s[:, idx]  # [B, G, s]
            eye = torch.eye(size, dtype=y.dtype, device=y.device)
            ws = w_in.unsqueeze(0) * sg.unsqueeze(2)  # [B, G, tgt, src]
            m = y.new_zeros(B, G, n + 1, n + 1)
            sl = [slice(i * size, (i + 1) * size) for i in range(nv)]
            m[..., sl[0], sl[0]] = ws - eye * self.inv_tau_m
            m[..., sl[0], sl[1]] = -ws
            kg = self.kappa[idx] * sg
            m[..., sl[1], sl[0]] = torch.diag_embed(kg * self.inv_tau_a)
            m[..., sl[1], sl[1]] = torch.diag_embed(-(1.0 + kg) * self.inv_tau_a)
            m[..., sl[2], sl[0]] = torch.diag_embed(sg * self.inv_tau_s)
            m[..., sl[2], sl[1]] = torch.diag_embed(-sg * self.inv_tau_s)
            m[..., sl[2], sl[2]] = -eye * self.inv_tau_s
            if ws_in is not None:
                S = y[:, 3 * P :][:, idx]
                gs = self.gamma_g * (1.0 - S) * sg
                m[..., sl[0], sl[3]] = (ws_in * self.inv_g).expand(B, G, size, size)
                m[..., sl[3], sl[0]] = torch.diag_embed(gs)
                m[..., sl[3], sl[1]] = torch.diag_embed(-gs)
                decay = 1.0 / self.tau_g + self.gamma_g * p[:, idx]
                m[..., sl[3], sl[3]] = torch.diag_embed(-decay)
            m = m * h  # [[h J_g, h F_g], [0, 0]]
            m[..., :n, n] = fv[:, :, idx].transpose(1, 2).reshape(B, G, n) * h  # var-major
            phi1f = torch.linalg.matrix_exp(m)[..., :n, n].reshape(B, G, nv, size)
            pieces.append(phi1f.permute(0, 2, 1, 3).reshape(B, nv, G * size))
        inc = torch.cat(pieces, dim=2)[:, :, self.unsort]
        return y + inc.reshape(B, nv * P)


def exprb2_rollout(
    terms: ColumnTerms,
    y0: torch.Tensor,
    n_points: int,
    n_sub: int,
    h: float,
    options: FastOptions | None = None,
    *,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """States [n_points, B, S] of exprb2 from y0 [B, S] (S = 3P, or 4P with gating),
    ``n_sub`` steps of ``h`` seconds per grid interval under the piecewise-constant
    ``terms.drive`` ([T, B, P]), with ``options.onset_refine`` times smaller steps for
    ``options.onset_window_ms`` after every change of the drive; ``noise``: None or the
    kicks on v [n_points - 1, n_sub, B, P]. Gradient by autograd."""
    options = FastOptions() if options is None else options
    options.check("exprb2", sde=noise is not None)  # (fast_rollout may skip SolverConfig's)
    refine, window_ms = options.onset_refine, options.onset_window_ms
    P = terms.n_pop
    drift = _Drift(terms)
    if y0.shape[-1] != drift.n_var * P:
        raise ValueError(f"y0 must be [B, {drift.n_var}P = {drift.n_var * P}], got {list(y0.shape)}")  # fmt: skip
    n_int = n_points - 1
    dt_s = n_sub * h
    window = math.ceil(window_ms * 1e-3 / dt_s - 1e-9) if refine > 1 else 0
    fine = onset_intervals(terms.drive, n_int, window).tolist()
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
