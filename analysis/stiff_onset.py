"""Which error source dominates a large step on the Decision network, and what removes it.

Runs the Decision network (untrained from the shipped config, or a trained one from
``--checkpoint``) on the task's evaluation grid in float64 on the torch path with candidate
stiff steps, and prints for each the readout error against float64 dopri5 (rtol = atol =
1e-9, as ``python -m trainers.bench`` measures it: the largest |readout - reference| over
trials, time and outputs, Hz) and the forward time relative to rk4exp at 0.1 ms measured in
the same process on the same thread count.

Schemes (``--schemes``, each at every ``--steps`` value):

- ``rk4exp``: the column model's explicit exponential RK4 (the baseline);
- ``ros2``: the two-stage Rosenbrock-W step (:mod:`colenv.models.column.rosenbrock`);
- ``ros2+onset``: ros2 with the step divided by ``--refine`` inside a window of
  ``--window-ms`` after every change of the piecewise-constant drive (a restart at each
  discontinuity);
- ``exprb2``: exponential Rosenbrock-Euler, y' = y + h phi1(h J) F(y), J the full Jacobian of
  (v, a, r) at y (exact for the linearised dynamics, order 2);
- ``exprb2-blk``: the same with J restricted to each column's (v, a, r) block (no lateral
  entries);
- ``exprb32``: Hochbruck, Ostermann & Schweitzer's exprb32 (order 3, full Jacobian);
- ``exprb2+onset``, ``exprb32+onset``: with the onset refinement;
- ``exprb2-solver``: the shipped solver ``method = "exprb2"`` (:mod:`colenv.models.column.exprb`)
  with ``onset_refine`` and ``onset_window_ms`` from ``--refine`` and ``--window-ms``.

phi_k(h J) times vectors come from one ``torch.linalg.matrix_exp`` of the augmented matrix
[[h J, W], [0, K]] per step (Al-Mohy & Higham 2011, Theorem 2.1).

    python analysis/stiff_onset.py
    python analysis/stiff_onset.py --checkpoint runs/<run>/checkpoints/last.pt --steps 0.5 0.25
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from colenv import SolverConfig, rollout
from colenv.errors import DivergenceError
from colenv.models.column import rosenbrock
from colenv.models.column.exprb import onset_intervals
from colenv.models.column.transfer import rate_function
from colenv.solve import FastOptions
from trainers.bench import build_network, readout_error_hz, reference_readout

SCHEMES = (
    "rk4exp",
    "ros2",
    "ros2+onset",
    "exprb2",
    "exprb2-blk",
    "exprb32",
    "exprb2+onset",
    "exprb32+onset",
    "exprb2-solver",
)


def phi_products(hj: torch.Tensor, vectors: list[torch.Tensor]) -> torch.Tensor:
    """sum_k phi_k(hJ) vectors[k-1] for hJ [B, n, n], vectors [B, n] (k = 1..p)."""
    B, n, _ = hj.shape
    p = len(vectors)
    m = hj.new_zeros(B, n + p, n + p)
    m[:, :n, :n] = hj
    for k, vec in enumerate(vectors, start=1):  # column n + p - k holds w_k
        m[:, :n, n + p - k] = vec
    for i in range(p - 1):
        m[:, n + i, n + i + 1] = 1.0
    return torch.linalg.matrix_exp(m)[:, :n, n + p - 1]


class Model:
    """F and its Jacobian for the ungated column equations of ``terms`` (state [v, a, r])."""

    def __init__(self, terms) -> None:
        c = terms.constants
        self.P = terms.n_pop
        self.w_t, self.kappa = terms.w_t, terms.kappa
        self.inv_tau_m, self.inv_tau_a, self.inv_tau_s = (
            1.0 / c["tau_m"],
            1.0 / c["tau_a"],
            1.0 / c["tau_s"],
        )
        self.slope = rate_function(c, "slope")
        self.c = c

    def f(self, y: torch.Tensor, drive: torch.Tensor) -> torch.Tensor:
        P = self.P
        v, a, r = y[:, :P], y[:, P : 2 * P], y[:, 2 * P :]
        p, _ = self.slope(v - a)
        dv = p @ self.w_t - v * self.inv_tau_m + drive
        da = (self.kappa * p - a) * self.inv_tau_a
        dr = (p - r) * self.inv_tau_s
        return torch.cat([dv, da, dr], dim=-1)

    def jac(self, y: torch.Tensor, block: bool = False) -> torch.Tensor:
        P = self.P
        B = y.shape[0]
        v, a = y[:, :P], y[:, P : 2 * P]
        _, s = self.slope(v - a)
        wt = self.w_t.T  # [target, source]
        if block:
            n = P // 8
            mask = torch.block_diag(*[torch.ones(8, 8, dtype=y.dtype)] * n)
            wt = wt * mask
        eye = torch.eye(P, dtype=y.dtype)
        ws = wt.unsqueeze(0) * s.unsqueeze(1)  # [B, target, source]
        j = y.new_zeros(B, 3 * P, 3 * P)
        j[:, :P, :P] = ws - eye * self.inv_tau_m
        j[:, :P, P : 2 * P] = -ws
        j[:, P : 2 * P, :P] = torch.diag_embed(self.kappa * s * self.inv_tau_a)
        j[:, P : 2 * P, P : 2 * P] = torch.diag_embed(-(1.0 + self.kappa * s) * self.inv_tau_a)
        j[:, 2 * P :, :P] = torch.diag_embed(s * self.inv_tau_s)
        j[:, 2 * P :, P : 2 * P] = torch.diag_embed(-s * self.inv_tau_s)
        j[:, 2 * P :, 2 * P :] = -eye * self.inv_tau_s
        return j


def exprb_step(model: Model, y, drive, h, kind: str):
    f0 = model.f(y, drive)
    if kind == "exprb2-blk":
        j = model.jac(y, block=True)
    else:
        j = model.jac(y)
    hj = h * j
    if kind in ("exprb2", "exprb2-blk"):
        return y + h * phi_products(hj, [f0])
    # exprb32: U = y + h phi1 F; y' = U + 2 h phi3 (g(U) - g(y)), g(u) = F(u) - J u
    u = y + h * phi_products(hj, [f0])
    d = model.f(u, drive) - f0 - torch.einsum("bij,bj->bi", j, u - y)
    return u + 2.0 * h * phi_products(hj, [torch.zeros_like(d), torch.zeros_like(d), d])


def integrate(scheme, terms, y0, n_points, n_sub, h, refine, window_ms, dt_ms):
    """States [n_points, B, 3P] of ``scheme`` (see the module docstring)."""
    onset = scheme.endswith("+onset")
    base = scheme.removesuffix("+onset")
    n_int = n_points - 1
    span = max(1, round(window_ms / dt_ms)) if onset else 0
    fine = onset_intervals(terms.drive, n_int, span).tolist()  # exprb2's own windows
    if base == "ros2":  # the shipped scheme, run over runs of equally refined intervals
        options = FastOptions(kernel="torch")
        out, y, k = [y0], y0, 0
        while k < n_int:
            k1 = k
            while k1 < n_int and fine[k1] == fine[k]:
                k1 += 1
            m = refine if fine[k] else 1
            part = terms._replace(drive=terms.drive[k:k1])
            seg = rosenbrock.ros2_rollout(part, y, k1 - k + 1, n_sub * m, h / m, options)
            out.extend(seg[1:])
            y, k = seg[-1], k1
        return torch.stack(out)
    model = Model(terms)
    y, out = y0, [y0]
    for k in range(n_int):
        m = refine if fine[k] else 1
        for _ in range(n_sub * m):
            y = exprb_step(model, y, terms.drive[k], h / m, base)
        out.append(y)
    return torch.stack(out)


def measure(model, trial, ref, scheme, step, refine, window_ms, dt_ms):
    """(error Hz, CPU seconds, note) of one forward of ``scheme`` on ``trial``."""
    t0 = time.process_time()
    with torch.no_grad():
        try:
            if scheme in ("rk4exp", "exprb2-solver"):
                if scheme == "rk4exp":
                    fast = {"kernel": "torch"}
                else:
                    fast = {"onset_refine": refine, "onset_window_ms": window_ms}
                solver = SolverConfig(scheme.removesuffix("-solver"), step_ms=step, fast=fast)
                states = rollout(model, trial.stimulus, trial.t_ms, solver).states
            else:
                dyn = model.prepare(trial.stimulus)
                t_s = trial.t_ms.to(dtype=trial.stimulus.dtype) * 1e-3
                dyn.set_grid(t_s)
                y0 = model.initial_state(trial.stimulus.shape[1])
                n_sub = max(1, round(dt_ms / step))
                h = dt_ms / n_sub * 1e-3
                states = integrate(
                    scheme, dyn.terms, y0, t_s.numel(), n_sub, h, refine, window_ms, dt_ms
                )
                if not bool(torch.isfinite(states).all()):
                    raise DivergenceError(f"{scheme} at {step:g} ms: non-finite states")
                if float(model.rates(states).abs().max()) > 1e4:
                    raise DivergenceError(f"{scheme} at {step:g} ms: a rate above 1e4 Hz")
        except DivergenceError as exc:  # a runaway is a result
            return float("nan"), time.process_time() - t0, f"runs away ({exc})"[:120]
        out = model.readout(states)
    cpu = time.process_time() - t0
    err, b = readout_error_hz(out, ref)
    return err, cpu, f"worst trial {b}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=None, help="a trained Decision checkpoint")
    ap.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=SCHEMES)
    ap.add_argument("--steps", nargs="+", type=float, default=[0.5, 0.25])
    ap.add_argument("--refine", nargs="+", type=int, default=[16])
    ap.add_argument("--window-ms", nargs="+", type=float, default=[5.0])
    ap.add_argument("--reference-cache", default=None, help="file to keep the reference in")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    net = build_network(args.checkpoint or "colenv/Decision-v0", device="cpu")
    trial = net.trial(None, torch.float32)
    trial64 = trial.to(dtype=torch.float64)
    model64 = net.with_dtype(torch.float64)
    if net.config.model.initial_state != "rest":
        raise SystemExit("this script starts from the rest state (model.initial_state = 'rest')")
    dt_ms = float(trial.t_ms[1] - trial.t_ms[0])
    cache = Path(args.reference_cache) if args.reference_cache else None
    if cache is not None and cache.exists():
        ref = torch.load(cache)
    else:
        ref = reference_readout(net, trial)
        if cache is not None:
            torch.save(ref, cache)
    print(f"grid {dt_ms:g} ms, {trial.t_ms.numel()} points, {trial64.stimulus.shape[1]} trials")
    _, base_cpu, _ = measure(model64, trial64, ref, "rk4exp", 0.1, 1, 0.0, dt_ms)
    print(f"rk4exp 0.1 ms (float64 torch): {base_cpu:.2f} s CPU = cost 1")
    for scheme in args.schemes:
        onset = scheme.endswith(("+onset", "-solver"))
        for step in args.steps:
            for refine in args.refine if onset else [1]:
                for window in args.window_ms if onset else [0.0]:
                    err, cpu, note = measure(
                        model64, trial64, ref, scheme, step, refine, window, dt_ms
                    )
                    tag = f" refine {refine} window {window:g} ms" if onset else ""
                    print(
                        f"{scheme:14s} {step:g} ms{tag}: error {err:.4g} Hz, "
                        f"cost {cpu / base_cpu:.2f} ({note})",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
