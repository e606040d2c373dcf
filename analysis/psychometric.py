"""Psychometric and chronometric curves of the Wong & Wang (2006) reduced model.

Runs the noisy two-pool model on the paper's coherences (one batched, seeded
call), decides with the paper's rule (50 ms running average crosses 15 Hz),
prints a markdown table and the Weibull fit next to the published one, and
saves docs/psychometric.png.

    python analysis/psychometric.py [--trials 1000] [--seed 2006]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)

from colenv.reference.wong_wang import (  # noqa: E402
    WongWangParams,
    decide,
    fit_weibull,
    simulate,
    stimulus_hz,
)

COHERENCES_PCT = (0.0, 3.2, 6.4, 12.8, 25.6, 51.2)
PUBLISHED = {"model": (7.2, 1.25), "monkeys": (7.4, 1.3)}  # (alpha %, beta), paper's fits
DT_MS = 1.0
STIMULUS_MS = 2000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000, help="trials per coherence")
    parser.add_argument("--seed", type=int, default=2006)
    parser.add_argument("--out", type=Path, default=Path("docs/psychometric.png"))
    args = parser.parse_args()

    params = WongWangParams()
    coherence = torch.tensor(COHERENCES_PCT).repeat_interleave(args.trials)
    n_samples = int(round(STIMULUS_MS / DT_MS)) + 1
    input_hz = stimulus_hz(coherence, params.mu0_hz).expand(n_samples, -1, -1)
    generator = torch.Generator().manual_seed(args.seed)
    rates_hz = simulate(input_hz, DT_MS, params=params, generator=generator).rates_hz
    choice, time_ms = decide(rates_hz, DT_MS)
    choice, time_ms = choice.view(-1, args.trials), time_ms.view(-1, args.trials)

    decided = choice >= 0
    p_correct = (choice == 0).double().sum(1) / decided.sum(1).clamp(min=1)
    mean_time_ms = torch.nanmean(time_ms.double(), dim=1)
    alpha, beta = fit_weibull(COHERENCES_PCT, p_correct)

    print(f"Wong & Wang (2006) reduced model, {STIMULUS_MS:.0f} ms stimulus, seed {args.seed}\n")
    print("| coherence % | p_correct | mean decision time ms | n trials | undecided |")
    print("|---:|---:|---:|---:|---:|")
    for i, c in enumerate(COHERENCES_PCT):
        n_undecided = int((~decided[i]).sum())
        print(
            f"| {c:.1f} | {p_correct[i]:.3f} | {mean_time_ms[i]:.0f} | {args.trials} "
            f"| {n_undecided} |"
        )
    print("\n| Weibull fit | alpha % | beta |\n|---|---:|---:|")
    print(f"| this model | {alpha:.2f} | {beta:.2f} |")
    for who, (a, b) in PUBLISHED.items():
        print(f"| paper, {who} | {a} | {b} |")

    fig, (ax_p, ax_t) = plt.subplots(1, 2, figsize=(9, 3.6))
    c_pos = [c for c in COHERENCES_PCT if c > 0]
    c_fine = torch.logspace(math.log10(1.0), math.log10(100.0), 200).tolist()

    def weibull(c, a, b):
        return [1.0 - 0.5 * math.exp(-((x / a) ** b)) for x in c]

    ax_p.plot(c_pos, p_correct[1:].tolist(), "ko", label="simulated")
    ax_p.plot(c_fine, weibull(c_fine, alpha, beta), "k-", label=f"fit a={alpha:.1f}%, b={beta:.2f}")
    a_pub, b_pub = PUBLISHED["model"]
    ax_p.plot(c_fine, weibull(c_fine, a_pub, b_pub), "r--", label=f"paper a={a_pub}%, b={b_pub}")
    ax_p.axhline(p_correct[0].item(), color="0.6", lw=0.8, label="c' = 0")
    ax_p.set(xscale="log", xlabel="coherence c' (%)", ylabel="p correct", ylim=(0.4, 1.02))
    ax_p.legend(fontsize=8, loc="lower right")
    ax_t.plot(c_pos, mean_time_ms[1:].tolist(), "ko-")
    ax_t.set(xscale="log", xlabel="coherence c' (%)", ylabel="mean decision time (ms)")
    for ax in (ax_p, ax_t):
        ax.set_xticks(c_pos, [f"{c:g}" for c in c_pos])
        ax.minorticks_off()
    fig.suptitle(f"Wong & Wang (2006) reduced model, {args.trials} trials per coherence")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"\nsaved {args.out}")


if __name__ == "__main__":
    main()
