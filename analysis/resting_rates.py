"""Resting rates of one isolated column (background drive only) next to P&D 2014.

    python analysis/resting_rates.py            # the shipped defaults (config/model.toml)
    python analysis/resting_rates.py --all      # also the predecessor's variants

Prints a markdown table: the steady state of the rate column with P&D 2014 population sizes,
against the published spontaneous rates of the full-scale microcircuit (INM-6 reference
implementation of Potjans & Diesmann 2014), with the ratio per population.
"""

from __future__ import annotations

import argparse

import torch

from colenv.models import POPULATIONS, AreaSpec, ColumnNetwork, NetworkSpec, load_params

PUBLISHED_HZ = [0.90, 2.97, 4.41, 5.88, 7.57, 8.63, 1.11, 7.83]

VARIANTS = {
    "shipped defaults (tau_m 10 ms, g = 4, L4e->L2/3e weight x2)": {},
    "tau_m = 20 ms (predecessor)": {"neuron.tau_m_ms": 20.0},
    "tau_m = 20 ms, layer-ratio inhibition, p x2 (predecessor)": {
        "neuron.tau_m_ms": 20.0,
        "synapses.inhibitory_scale": "layer_ratio",
        "synapses.l4e_to_l23e_doubles": "probability",
    },
}


def resting_rates(overrides: dict, sizes: str = "pd2014") -> list[float]:
    params = load_params(overrides=overrides)
    spec = NetworkSpec(areas=(AreaSpec("col", 1, sizes),), n_inputs=1)
    net = ColumnNetwork(params, spec, dtype=torch.float64)
    return net.rest_state()[2 * 8 :].tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all", action="store_true", help="also print the predecessor's variants")
    args = ap.parse_args()
    variants = VARIANTS if args.all else dict(list(VARIANTS.items())[:1])
    for name, overrides in variants.items():
        rates = resting_rates(overrides)
        print(f"\n{name}\n")
        print("| population | P&D 2014 (Hz) | colenv (Hz) | ratio |")
        print("|---|---:|---:|---:|")
        for pop, pub, r in zip(POPULATIONS, PUBLISHED_HZ, rates, strict=True):
            print(f"| {pop} | {pub:.2f} | {r:.2f} | {r / pub:.2f} |")
        worst = max(max(r / p, p / r) for r, p in zip(rates, PUBLISHED_HZ, strict=True))
        print(f"\nworst factor: {worst:.2f}")


if __name__ == "__main__":
    main()
