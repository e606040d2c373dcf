"""Steady states of one column's L2/3e, and their stability, with adaptation held fixed.

Holding a decision needs a column whose L2/3e can hold ~15 Hz after its input ends, next to a
stable low rest state: two stable steady states. This script finds every steady state of one
isolated column (background drive only) for given scales of the four L2/3 weights
(L2/3e -> L2/3e, L2/3e -> L2/3i, L2/3i -> L2/3e, L2/3i -> L2/3i) and a given L2/3e adaptation
a, held fixed (tau_a = 10 s: over a 1.5 s trial a moves by ~kappa * rate * t / tau_a, so
a state that exists only in a narrow range of a does not survive a trial).

Method. With u = v - a, a steady state solves u = tau_m (w f(u) + d) - a (w, d: the network's
weights and background drive as in ``ColumnNetwork.prepare``). Clamp the L2/3e rate to E
(u_0 = f^-1(E)), solve the other seven populations by Newton with continuation in E from the
rest state, and follow the L2/3e residual G(E) = tau_m (w_0 . f(u) + d_0) - u_0: steady states
with adaptation a are the roots of G(E) = a. Each root's stability comes from the eigenvalues
of the Jacobian of dv/dt with a fixed, w diag(f'(u)) - I / tau_m (1/s).

    python analysis/column_bistability.py                             # P&D weights, MT sizes
    python analysis/column_bistability.py --scales 0.4466,0.1414,0.09911,0.1189 --a 2,3,4
"""

from __future__ import annotations

import argparse
import math

import torch

from colenv.models import ColumnNetwork

WEIGHTS = (
    ("L2/3e -> L2/3e", 0, 0),
    ("L2/3e -> L2/3i", 1, 0),
    ("L2/3i -> L2/3e", 0, 1),
    ("L2/3i -> L2/3i", 1, 1),
)  # (name, target, source)


class Rate:
    """f(u) of a network's populations (its transfer function, ceiling included): the
    instantaneous rate ``net.phi`` of a state with v = u and no adaptation."""

    def __init__(self, net: ColumnNetwork) -> None:
        self.net = net

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        u = torch.as_tensor(u, dtype=torch.float64)
        zeros = torch.zeros_like(u)
        if u.dim() == 0:  # one value: as population 0 of the column
            y = torch.zeros(3 * self.net.n_pop, dtype=torch.float64)
            y[0] = u
            return self.net.phi(y)[0]
        return self.net.phi(torch.cat([u, zeros, zeros], dim=-1))


def column(sizes: str, scales: list[float]):
    """(w [8, 8] in 1/s per Hz, d [8], constants with the rate function, rest u [8], rest
    L2/3e adaptation) of one column, weights scaled."""
    net = ColumnNetwork(
        spec={"areas": [{"name": "a", "n_columns": 1, "sizes": sizes}], "parametrization": "log"},
        dtype=torch.float64,
    )
    with torch.no_grad():
        for (_, tgt, src), s in zip(WEIGHTS, scales, strict=True):
            net.recurrent.weight[tgt, src] += math.log(s)
        c = dict(net.constants(), rate=Rate(net))
        w = net.weight_matrix() * c["gain"]  # dv/dt per Hz of source rate
        d = net.bg_drive * c["gain"]
        rest = net.rest_state()
    P = net.n_pop
    u_rest = rest[:P] - rest[P : 2 * P]
    return w.detach(), d.detach(), c, u_rest, float(rest[P])


def rate_and_slope(u: torch.Tensor, c: dict) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        x = u.detach().requires_grad_(True)
        phi = c["rate"](x)
        (slope,) = torch.autograd.grad(phi.sum(), x)
    return phi.detach(), slope


def inverse_rate(rate: float, c: dict) -> float:
    """u with f(u) = rate, by bisection (f is increasing)."""
    lo, hi = torch.tensor(-2000.0, dtype=torch.float64), torch.tensor(2000.0, dtype=torch.float64)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if float(c["rate"](mid)) < rate:
            lo = mid
        else:
            hi = mid
    return float(0.5 * (lo + hi))


def clamped(w, d, c, E: float, u: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Steady state of populations 1..7 with L2/3e clamped at rate E (Newton from u)."""
    tau = c["tau_m"]
    u = u.clone()
    u[0] = inverse_rate(E, c)
    for _ in range(100):
        phi, slope = rate_and_slope(u, c)
        F = tau * (w[1:] @ phi + d[1:]) - u[1:]
        if float(F.abs().max()) < 1e-10:
            return u, True
        J = tau * w[1:, 1:] * slope[None, 1:] - torch.eye(7, dtype=u.dtype)
        step = torch.linalg.solve(J, -F)
        u[1:] += step * min(1.0, 5.0 / max(float(step.abs().max()), 1e-300))  # at most 5 units
    return u, False


def residual(w, d, c, u: torch.Tensor) -> float:
    """G = tau_m (w_0 . f(u) + d_0) - u_0: the L2/3e adaptation a this clamped state needs."""
    phi, _ = rate_and_slope(u, c)
    return float(c["tau_m"] * (w[0] @ phi + d[0]) - u[0])


def steady_states(w, d, c, u_rest, a_values, e_max=200.0, n=600):
    """Per a: a list of (L2/3e, L2/3i, max Re eigenvalue, its Im) at every root of G(E) = a."""
    grid = torch.logspace(math.log10(0.02), math.log10(e_max), n, dtype=torch.float64).tolist()
    branch, u = [], u_rest
    for E in grid:  # continuation upwards in E
        u, ok = clamped(w, d, c, E, u)
        if not ok:
            break  # the clamped branch folds or runs away: no steady state above this E
        branch.append((E, residual(w, d, c, u), u.clone()))
    out = {}
    for a in a_values:
        roots = []
        for (e0, g0, u0), (e1, g1, _) in zip(branch, branch[1:], strict=False):
            if (g0 - a) * (g1 - a) > 0:
                continue
            lo, hi, glo, u_mid = e0, e1, g0 - a, u0
            for _ in range(50):  # bisection in E on the clamped branch
                mid = math.sqrt(lo * hi)
                u_mid, _ = clamped(w, d, c, mid, u_mid)
                g = residual(w, d, c, u_mid) - a
                lo, hi, glo = (mid, hi, g) if g * glo > 0 else (lo, mid, glo)
            phi, slope = rate_and_slope(u_mid, c)
            jac = w * slope[None, :] - torch.eye(8, dtype=w.dtype) / c["tau_m"]
            ev = torch.linalg.eigvals(jac)
            top = ev[ev.real.argmax()]
            roots.append((float(phi[0]), float(phi[1]), float(top.real), abs(float(top.imag))))
        out[a] = (roots, branch[-1][0] if branch else 0.0)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="mt")
    ap.add_argument("--scales", default="1,1,1,1", help="factors on the four L2/3 weights")
    ap.add_argument("--a", default="", help="L2/3e adaptation values (default: the rest's)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    scales = [float(x) for x in args.scales.split(",")]
    if len(scales) != 4 or not all(x > 0 for x in scales):
        ap.error(f"--scales needs four positive factors (EE, IE, EI, II), got {args.scales!r}")
    w, d, c, u_rest, a_rest = column(args.sizes, scales)
    rest_rate = float(c["rate"](u_rest)[0])
    a_values = (
        [float(x) for x in args.a.split(",")]
        if args.a
        else [a_rest, a_rest + 1.0, a_rest + 2.0]  # the rest's own adaptation, then more
    )
    named = ", ".join(f"{n} x {s:g}" for (n, _, _), s in zip(WEIGHTS, scales, strict=True))
    print(f"One {args.sizes} column, {named}; rest L2/3e {rest_rate:.3f} Hz\n")
    print("| a (L2/3e) | L2/3e (Hz) | L2/3i (Hz) | max Re eigenvalue (1/s) | Im | stable |")
    print("|---:|---:|---:|---:|---:|---|")
    for a, (roots, e_end) in steady_states(w, d, c, u_rest, a_values).items():
        for e, i, re, im in roots:
            print(
                f"| {a:.3g} | {e:.3f} | {i:.3f} | {re:.1f} | {im:.1f} | {'yes' if re < 0 else 'no'} |"
            )
        if not roots:
            print(f"| {a:.3g} | none | | | | |")
        print(f"| {a:.3g} | (clamped branch followed up to {e_end:.3g} Hz) | | | | |")


if __name__ == "__main__":
    main()
