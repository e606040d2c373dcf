"""What the trained XOR module does, as a building block for Parity's tree.

Loads an XOR checkpoint (``python -m trainers train colenv/XOR-v0`` leaves one in
``runs/xor-v0-<time>/checkpoints/last.pt``) and runs its network (float64, rk4exp 0.5 ms) on
the four bit patterns, plus input A held on for the whole trial ("always on", with B off or
on). Prints, at rest and at the end of the stimulus, the rates Parity's config builds on:
the input columns' L5e (their output to C) and L4e (their cross-inhibition), and C's L2/3e
(the module's output); then the ratio of an input column's L5e on to at rest, the factor the
Parity curriculum (trainers/curriculum.py) applies to the feedforward weights of its resting
"always on" column.

    python analysis/xor_module.py --checkpoint runs/xor-v0-.../checkpoints/last.pt
"""

from __future__ import annotations

import argparse

import torch

from colenv import SolverConfig, rollout
from trainers import TrainConfig, build_model, build_task, read_checkpoint

REST_MS, ON_MS, T_MS = 400, 950, 1000  # read-out times; the stimulus runs 500-1000 ms


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="an XOR run's checkpoint or run dir")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ckpt = read_checkpoint(args.checkpoint)
    config = TrainConfig.from_dict(ckpt["config"], source=args.checkpoint)
    if config.task != "colenv/XOR-v0":
        ap.error(f"--checkpoint must be an XOR run, got a {config.task} run")
    task = build_task(config)
    net = build_model(config, task, torch.device("cpu"), torch.float64)
    net.load_state_dict(ckpt["state_dict"])

    # (label, A on from, B on from) in ms; None = off
    cases = [("00", None, None), ("10", 500, None), ("01", None, 500), ("11", 500, 500)]
    cases += [("A always on, B off", 0, None), ("A always on, B on", 0, 500)]
    stim = torch.zeros(T_MS + 1, len(cases), 2, dtype=torch.float64)
    for b, (_, a_on, b_on) in enumerate(cases):
        for channel, start in ((0, a_on), (1, b_on)):
            if start is not None:
                stim[start:, b, channel] = task.input_hz
    t = torch.arange(T_MS + 1, dtype=torch.float64)
    with torch.no_grad():
        out = rollout(net, stim, t, SolverConfig("rk4exp", step_ms=0.5))
    rates = net.rates(out.states)
    idx = {name: i for i, name in enumerate(net.population_names)}
    ab, c = net.spec.areas[0].name, net.spec.areas[1].name  # A, B = ab[0], ab[1]; C = c[0]
    cols = {
        "A L5e": idx[f"{ab}[0].L5e"],
        "A L4e": idx[f"{ab}[0].L4e"],
        "B L5e": idx[f"{ab}[1].L5e"],
        "C L2/3e": idx[f"{c}[0].L23e"],
    }
    print(f"XOR module of {args.checkpoint} (step {ckpt['step']}), rates in Hz\n")
    print("| pattern | time (ms) | " + " | ".join(cols) + " |")
    print("|---|---:|" + "---:|" * len(cols))
    for b, (label, _, _) in enumerate(cases):
        for ms in (REST_MS, ON_MS):
            cells = " | ".join(f"{float(rates[ms, b, i]):.2f}" for i in cols.values())
            print(f"| {label} | {ms} | {cells} |")
    on, rest = float(rates[ON_MS, 1, cols["A L5e"]]), float(rates[REST_MS, 0, cols["A L5e"]])
    print(f"\ninput column L5e: {on:.1f} Hz on, {rest:.2f} Hz at rest: ratio {on / rest:.1f}")


if __name__ == "__main__":
    main()
