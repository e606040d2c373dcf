"""Steady-state response of one MT column to extra drive on one population.

    python analysis/column_response.py

Prints a markdown table: the rates of L2/3e and L5e at the column's stable steady state
(ColumnNetwork.rest_state) when a constant drive (nA Hz, i.e. weight x presynaptic rate) is
added to L2/3e or to L4e on top of the background. It is the measurement behind docs/research.md
"Results": L2/3e is inhibition-stabilised (large direct drive lifts it little), L4 drive
silences it, and L5e answers strongly.
"""

from __future__ import annotations

import argparse

import torch

from colenv.models import ColumnNetwork, NetworkSpec, population_index

DRIVES = (0.0, 500.0, 1000.0, 2000.0, 4000.0, 8000.0)


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    net = ColumnNetwork(spec=NetworkSpec(n_inputs=1), dtype=torch.float64)
    l23e, l5e = population_index("L23e"), population_index("L5e")
    print("| extra drive on | drive (nA Hz) | L2/3e (Hz) | L5e (Hz) |")
    print("|---|---:|---:|---:|")
    for target in ("L23e", "L4e"):
        for extra in DRIVES:
            drive = net.bg_drive.clone()
            drive[population_index(target)] += extra
            rates = net.rates(net.rest_state(drive))
            print(
                f"| {target} | {extra:.0f} | {float(rates[l23e]):.2f} | {float(rates[l5e]):.2f} |"
            )


if __name__ == "__main__":
    main()
