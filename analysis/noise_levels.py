"""What ``model.network.noise_std`` does to the rates of an isolated column at rest.

    python analysis/noise_levels.py                       # noise_std 0.5, 1, 2; MT and P&D sizes
    python analysis/noise_levels.py --noise 1,3 --sizes mt --seconds 20

``noise_std`` is defined on the membrane potential: the stationary std of v of an isolated,
uncoupled population under the SDE (the diffusion on v is noise_std * sqrt(2 / tau_m)). What a
user sees is the rate r, shaped by the transfer function at the resting point and by the
column's recurrent loops. This script integrates one column with background drive only (no
stimulus), on the fast SDE path (rk4exp + additive kick, ``solver.step_ms``), for a batch of
independent trials, drops the first ``--settle`` ms and prints, per population, the resting
rate, the std of r over time (pooled over trials) and the std of v. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time

import torch

from colenv import SolverConfig, rollout
from colenv.models import POPULATIONS, AreaSpec, ColumnNetwork, NetworkSpec, load_params

P = len(POPULATIONS)


def rate_fluctuations(
    noise_std: float,
    *,
    sizes: str = "mt",
    seconds: float = 10.0,
    settle_ms: float = 500.0,
    trials: int = 8,
    step_ms: float = 0.5,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, list[float]]:
    """Rest, std of r and std of v of each population of one isolated column under the SDE.

    Returns ``{"rest_hz", "std_r_hz", "std_v", "mean_r_hz"}``, each a list of the 8
    populations (POPULATIONS order); the stds are over time after ``settle_ms`` and over the
    ``trials`` independent trials (pooled), the rest rate is the noise-free steady state.
    """
    spec = NetworkSpec(areas=(AreaSpec("col", 1, sizes),), n_inputs=1, noise_std=noise_std)
    net = ColumnNetwork(load_params(), spec, dtype=torch.float32, device=device)
    dt = 1.0
    n = round((settle_ms + 1000.0 * seconds) / dt) + 1
    t_ms = torch.arange(n, dtype=torch.float32, device=device) * dt
    stimulus = torch.zeros(n, trials, 1, device=device)
    solver = SolverConfig(method="rk4exp", sde=True, step_ms=step_ms)
    with torch.no_grad():
        states = rollout(net, stimulus, t_ms, solver, seed=seed).states
    keep = states[round(settle_ms / dt) :].double()  # [T, B, 3P]: v, a, r
    v, r = keep[..., :P], net.rates(keep.float()).double()
    rest = net.rest_state().double()
    return {
        "rest_hz": rest[2 * P : 3 * P].tolist(),
        "mean_r_hz": r.mean(dim=(0, 1)).tolist(),
        "std_r_hz": r.std(dim=(0, 1)).tolist(),
        "std_v": v.std(dim=(0, 1)).tolist(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--noise", default="0.5,1,2", help="noise_std values, comma-separated")
    ap.add_argument("--sizes", default="mt,pd2014", help="column sizes, comma-separated")
    ap.add_argument("--seconds", type=float, default=10.0, help="recorded time per trial (s)")
    ap.add_argument("--trials", type=int, default=8, help="independent trials")
    ap.add_argument("--step-ms", type=float, default=0.5, help="solver.step_ms")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for sizes in args.sizes.split(","):
        levels = [float(x) for x in args.noise.split(",")]
        start = time.perf_counter()
        results = [
            rate_fluctuations(
                s,
                sizes=sizes,
                seconds=args.seconds,
                trials=args.trials,
                step_ms=args.step_ms,
                seed=args.seed,
            )
            for s in levels
        ]
        wall = time.perf_counter() - start
        print(
            f"\n{sizes} column at rest, {args.trials} trials x {args.seconds:g} s, rk4exp + SDE "
            f"kick at {args.step_ms:g} ms ({wall:.0f} s)\n"
        )
        head = " | ".join(f"std r @ {s:g} (Hz) | std v @ {s:g}" for s in levels)
        print(f"| population | rest (Hz) | {head} |")
        print("|---|---:|" + "---:|---:|" * len(levels))
        for i, pop in enumerate(POPULATIONS):
            cells = " | ".join(
                f"{res['std_r_hz'][i]:.2f} | {res['std_v'][i]:.2f}" for res in results
            )
            print(f"| {pop} | {results[0]['rest_hz'][i]:.2f} | {cells} |")
        print(
            "\nmean r (Hz) under noise (a shift from rest: the noise moved the operating point)\n"
        )
        print("| population | rest | " + " | ".join(f"@ {s:g}" for s in levels) + " |")
        print("|---|---:|" + "---:|" * len(levels))
        for i, pop in enumerate(POPULATIONS):
            cells = " | ".join(f"{res['mean_r_hz'][i]:.2f}" for res in results)
            print(f"| {pop} | {results[0]['rest_hz'][i]:.2f} | {cells} |")


if __name__ == "__main__":
    main()
