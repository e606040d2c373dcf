"""What the initial-weight jitter does to the resting rates of a P&D column.

    python analysis/jitter_rest.py                  # jitter 0.05, 0.1, 0.2; seeds 0-19
    python analysis/jitter_rest.py --jitter 0.1 --seeds 50

One column with the P&D 2014 population sizes, every recurrent weight trainable (so every one
is jittered), background drive only. For each jitter std and seed it solves the rest state of
the network jittered two ways: with plain log-normal factors exp(std * N(0, 1)) on the
recurrent weights, and with colenv's jitter (the same kind of factors, tilted per target so
that the net input at the anatomical resting rates is unchanged;
colenv.models.column.config.jitter_weights_). Prints, per way, the median and largest factor
by which some population's resting rate moved from the anatomical column's, how many seeds
moved one by more than 1.5x and 2x, and how many lost the rest state altogether.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from colenv.errors import DivergenceError
from colenv.models import AreaSpec, ColumnNetwork, NetworkSpec
from colenv.models.column.spec import ConnectionSpec


def column(jitter: float, seed: int) -> ColumnNetwork:
    spec = NetworkSpec(
        areas=(AreaSpec("pd", 1, "pd2014"),),
        n_inputs=1,
        recurrent=ConnectionSpec(trainable=True),
        parametrization="log",
        init_jitter=jitter,
    )
    return ColumnNetwork(spec=spec, seed=seed, dtype=torch.float64)


def plain(jitter: float, seed: int) -> ColumnNetwork:
    net = column(0.0, 0)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        noise = torch.randn(net.recurrent.weight.shape, generator=gen, dtype=torch.float64)
        net.recurrent.weight.add_(jitter * noise * net.recurrent.train_mask)
    return net


def worst_factor(net: ColumnNetwork, rest0: torch.Tensor) -> float | None:
    try:
        rest = net.rest_state()[2 * net.n_pop :]
    except DivergenceError:
        return None
    return float((rest / rest0).log().abs().max().exp())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jitter", default="0.05,0.1,0.2", help="comma-separated stds")
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args()
    anatomical = column(0.0, 0)
    rest0 = anatomical.rest_state()[2 * anatomical.n_pop :]
    print("| jitter | factors | median worst factor | largest | > 1.5x | > 2x | no rest state |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for std in (float(x) for x in args.jitter.split(",")):
        for way, build in (("plain log-normal", plain), ("colenv (tilted)", column)):
            factors = [worst_factor(build(std, s), rest0) for s in range(args.seeds)]
            ok = [f for f in factors if f is not None]
            lost = len(factors) - len(ok)
            median = f"{statistics.median(ok):.3g}" if ok else "-"
            largest = f"{max(ok):.3g}" if ok else "-"
            print(
                f"| {std:g} | {way} | {median} | {largest} | {sum(f > 1.5 for f in ok)} | "
                f"{sum(f > 2 for f in ok)} | {lost} |"
            )


if __name__ == "__main__":
    main()
