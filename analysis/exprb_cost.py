"""How many Jacobian products exprb2 takes per step on a network (its native kernel's counts).

exprb2 computes phi1(h J) F by a Taylor series whose length follows ||h J|| and the series'
early termination (docs/numerics.md, "exprb2"), so its cost per step depends on the network
and the step. This rolls the task's evaluation grid out once per ``--steps`` value on the
native kernel (CPU, float32, no gradient) and prints the steps taken (the onset restart's
sub-steps included), the Jacobian products, and their ratio.

    python analysis/exprb_cost.py colenv/Decision-v0
    python analysis/exprb_cost.py runs/<run>/checkpoints/last.pt config/tasks/decision_hold.toml

Targets as ``python -m trainers.bench`` takes them: a task id, a training config or a
checkpoint (its trained weights).
"""

from __future__ import annotations

import argparse

import torch

from colenv.models.column import exprb, native
from trainers.bench import build_network


def products(target: str, step_ms: float) -> tuple[int, int]:
    """(steps, Jacobian products) of one exprb2 rollout of ``target``'s evaluation grid."""
    net = build_network(target, device="cpu")
    grid = net.trial(None, torch.float32)
    model = net.model
    with torch.no_grad():
        terms = model.prepare(grid.stimulus).terms
        y0 = net.initial_state(grid)
        if y0 is None:
            y0 = model.initial_state(grid.stimulus.shape[1])
    dt_ms = float(grid.t_ms[1] - grid.t_ms[0])
    n_sub = max(1, round(dt_ms / step_ms))
    return exprb.jacobian_products(terms, y0, len(grid.t_ms), n_sub, dt_ms / n_sub * 1e-3)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("targets", nargs="+", help="task ids, training configs or checkpoints")
    ap.add_argument("--steps", nargs="+", type=float, default=[0.5, 1.0], help="step_ms values")
    args = ap.parse_args(argv)
    if not native.available():
        raise SystemExit(f"the native kernel is unavailable: {native.unavailable_reason()}")
    torch.set_num_threads(1)
    print("| network | step (ms) | steps | products | per step |")
    print("|---|---:|---:|---:|---:|")
    for target in args.targets:
        for step in args.steps:
            n, jmv = products(target, step)
            print(f"| {target} | {step:g} | {n} | {jmv} | {jmv / n:.1f} |")


if __name__ == "__main__":
    main()
