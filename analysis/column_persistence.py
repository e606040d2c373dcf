"""Can one laminar column hold an elevated L2/3e rate after its input ends?

Decision's ``hold_accuracy`` reads the choice 100-200 ms after the stimulus has ended, so
the winning column's L2/3e must stay >= 5 Hz above the loser's without input. This
scans the trained knob of that task, the L2/3e -> L2/3e weight (x self_scale), together with
the L2/3e -> L2/3i weight (x ei_scale), for one column (MT sizes by default): from rest, a
300 ms kick of ``--kick-hz`` onto L2/3e, then 800 ms without input. Each configuration is
its own one-column network (float64, rk4exp at ``--step-ms``, default 0.5 ms: an L2/3 loop
at high rates is stiff, check a runaway at a smaller step, e.g. 0.1); the 500 Hz soft ceiling of
config/model.toml (``transfer.max_rate_hz``) is switched on so that a runaway ends at the
ceiling instead of overflowing.

Prints, per configuration: L2/3e at rest, at the end of the kick, and 200 / 800 ms after it.
A persistent state shows as a rate that stays up after the kick; the question is at which
rate it settles.

A second table (Parity's question: how high can L2/3e *rest*?) scales the L2/3i -> L2/3e
weight down and reports the resting L2/3e rate from ``ColumnNetwork.rest_state`` (no
ceiling), or that the column has no stable rest state any more.

    python analysis/column_persistence.py [--sizes mt] [--kick-hz 200] [--rest-sizes pd2014]
"""

from __future__ import annotations

import argparse
import itertools
import math

import torch

from colenv import SolverConfig, rollout
from colenv.errors import DivergenceError
from colenv.models import ColumnNetwork, load_params


def run(
    sizes: str, self_scale: float, ei_scale: float, kick_hz: float, step_ms: float = 0.5
) -> tuple[float, ...]:
    params = load_params(overrides={"transfer.max_rate_hz": 500.0})
    spec = {
        "n_inputs": 1,
        "areas": [{"name": "a", "n_columns": 1, "sizes": sizes}],
        "input": {"pairs": [["input", "L23e"]]},
        "parametrization": "log",
    }
    rest = ColumnNetwork(params, spec, dtype=torch.float64).rest_state()
    net = ColumnNetwork(params, spec, dtype=torch.float64)
    with torch.no_grad():  # log weights: add log(scale) to the two recurrent entries
        net.recurrent.weight[0, 0] += math.log(self_scale)  # L2/3e -> L2/3e
        net.recurrent.weight[1, 0] += math.log(ei_scale)  # L2/3e -> L2/3i
    T = 1400
    stim = torch.zeros(T, 1, 1, dtype=torch.float64)
    stim[300:600] = kick_hz
    t = torch.arange(T, dtype=torch.float64)
    out = rollout(net, stim, t, SolverConfig("rk4exp", step_ms=step_ms), y0=rest[None])
    e = net.rates(out.states)[:, 0, 0]
    return float(e[299]), float(e[599]), float(e[799]), float(e[T - 1])


def resting_l23e(sizes: str, ie_scale: float) -> float | None:
    """Resting L2/3e (Hz) with the L2/3i -> L2/3e weight x ie_scale; None without a rest state."""
    spec = {"areas": [{"name": "a", "n_columns": 1, "sizes": sizes}], "parametrization": "log"}
    net = ColumnNetwork(spec=spec, dtype=torch.float64)
    with torch.no_grad():
        net.recurrent.weight[0, 1] += math.log(ie_scale)
    try:
        return float(net.rest_state()[2 * net.n_pop])
    except DivergenceError:
        return None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="mt")
    ap.add_argument("--kick-hz", type=float, default=200.0)
    ap.add_argument("--step-ms", type=float, default=0.5, help="rk4exp step (ms)")
    ap.add_argument("--self-scales", default="1,1.5,2,2.5,3,4,6")
    ap.add_argument("--ei-scales", default="0.5,1,2,4")
    ap.add_argument("--rest-sizes", default="pd2014")
    ap.add_argument("--ie-scales", default="1,0.8,0.6,0.5,0.4,0.35,0.3,0.25,0.2,0.15")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    grid = itertools.product(
        [float(x) for x in args.self_scales.split(",")],
        [float(x) for x in args.ei_scales.split(",")],
    )
    print(
        f"One {args.sizes} column, {args.kick_hz:g} Hz kick onto L2/3e for 300 ms, "
        f"step {args.step_ms:g} ms (L2/3e, Hz)\n"
    )
    print("| L2/3e->L2/3e x | L2/3e->L2/3i x | rest | end of kick | +200 ms | +800 ms |")
    print("|---:|---:|---:|---:|---:|---:|")
    for s, ei in grid:
        try:
            rates = run(args.sizes, s, ei, args.kick_hz, args.step_ms)
            cells = " | ".join(f"{r:.2f}" for r in rates)
        except DivergenceError:
            cells = "no rest state | | |"
        print(f"| {s:g} | {ei:g} | {cells} |", flush=True)

    print(f"\nResting L2/3e of one {args.rest_sizes} column, L2/3i -> L2/3e weight scaled\n")
    print("| L2/3i->L2/3e x | resting L2/3e (Hz) |")
    print("|---:|---:|")
    for ie in (float(x) for x in args.ie_scales.split(",")):
        rate = resting_l23e(args.rest_sizes, ie)
        print(f"| {ie:g} | {'no stable rest state' if rate is None else f'{rate:.2f}'} |")


if __name__ == "__main__":
    main()
