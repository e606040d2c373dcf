"""Decision's starting network: the choice at the end of the stimulus, and the step it needs.

Builds the network of ``config/tasks/decision.toml`` (untrained, or from ``--checkpoint``),
optionally with other lateral in-degrees (``--lateral-k``, the config's ``init_k``), runs the
task's evaluation grid (the 11 signed coherences) and prints per network:

For each fixed step (``--steps``, float32, the fast rk4exp scheme as in training) and for a
float64 reference (rk4exp at 0.05 ms): the task's ``accuracy`` (choice over the last 100 ms
of the stimulus, 5 Hz margin), the smallest winner - loser gap over c' != 0, the outputs at
c' = +3.2 and +51.2 % in that window, the largest rate of any population in the trial, and
where the rollout first leaves the reference by more than 1 Hz. A step that is too large for
the network throws the rollout off at the stimulus onset and it runs away (rates of 1e3-1e6
Hz that the reference does not have); the trainer reports that as a diverged step.

    python analysis/decision_start.py                                  # the config as shipped
    python analysis/decision_start.py --lateral-k 2500,5000,7500 --steps 0.5,0.25
    python analysis/decision_start.py --checkpoint runs/<decision run>/checkpoints/last.pt
"""

from __future__ import annotations

import argparse

import torch

from colenv import SolverConfig, rollout
from trainers import TrainConfig, build_model, build_task, load_config, read_checkpoint


def network(config: TrainConfig, task, dtype, state: dict | None):
    model = build_model(config, task, torch.device("cpu"), dtype)
    if state is not None:
        model.load_state_dict(state)
    return model


def readout_stats(model, task, trial, step_ms: float) -> dict:
    solver = SolverConfig("rk4exp", step_ms=step_ms)
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        result = rollout(model, trial.stimulus.to(dtype), trial.t_ms.to(dtype), solver)
        out = model.readout(result.states)
        rates = model.rates(result.states)
        max_rate = float(rates.max())
    metrics = task.evaluate(out.float(), trial)
    window = task.choice_windows()["stimulus end"]
    mean = out[window].mean(dim=0)  # [B, 2]
    coherence = trial.conditions["coherence_pct"]
    gap = task.choice_gap(out.float(), trial.target.float(), window)
    scored = coherence != 0
    at = {c: int((coherence - c).abs().argmin()) for c in (3.2, 51.2)}
    return {
        "accuracy": metrics["accuracy"],
        "min_gap": float(gap[scored].min()),
        "out": {c: [round(float(x), 1) for x in mean[i]] for c, i in at.items()},
        "max_rate": max_rate,
        "rates": rates.double(),
    }


def departure(rates, ref, trial, names: list[str]) -> str:
    """Where a rollout first leaves the reference by more than 1 Hz (any population, trials
    with c' != 0: at c' = 0 the two columns are symmetric and rounding picks the winner)."""
    err = (rates - ref).abs()  # [T, B, P]
    err[:, trial.conditions["coherence_pct"] == 0] = 0.0
    bad = (err > 1.0).nonzero()
    if not len(bad):
        return "within 1 Hz throughout"
    i, b, p = (int(x) for x in bad[0])
    c = float(trial.conditions["coherence_pct"][b])
    return f"off by > 1 Hz from t = {float(trial.t_ms[i]):g} ms (c' = {c:g} %, {names[p]})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lateral-k", default="", help="comma list of lateral init_k values")
    parser.add_argument("--steps", default="0.5,0.25", help="comma list of steps (ms)")
    parser.add_argument("--checkpoint", default=None, help="a Decision run's checkpoint")
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps = [float(s) for s in args.steps.split(",")]
    if args.checkpoint:
        saved = read_checkpoint(args.checkpoint)
        variants = [("checkpoint", TrainConfig.from_dict(saved["config"]), saved["state_dict"])]
    elif args.lateral_k:
        variants = [
            (
                f"lateral init_k {k}",
                load_config("colenv/Decision-v0", [f"model.network.lateral.init_k={k}"]),
                None,
            )
            for k in args.lateral_k.split(",")
        ]
    else:
        variants = [("config/tasks/decision.toml", load_config("colenv/Decision-v0", []), None)]
    for name, config, state in variants:
        task = build_task(config)
        trial = task.sample_batch(conditions="all", seed=0)
        print(f"== {name}")
        print(
            "| step (ms) | accuracy | min gap (Hz) | out at +3.2 % | out at +51.2 % "
            "| max rate (Hz) | vs reference |"
        )
        print("|---|---:|---:|---|---|---:|---|")
        ref_model = network(config, task, torch.float64, state)
        ref = readout_stats(ref_model, task, trial, 0.05)
        rows = []
        for step in steps:
            r = readout_stats(network(config, task, torch.float32, state), task, trial, step)
            where = departure(r["rates"], ref["rates"], trial, ref_model.population_names)
            rows.append((f"{step:g}", r, where))
        rows.append(("0.05 (float64 reference)", ref, ""))
        for label, r, where in rows:
            print(
                f"| {label} | {r['accuracy']:.1f} | {r['min_gap']:.2f} | {r['out'][3.2]} | "
                f"{r['out'][51.2]} | {r['max_rate']:.4g} | {where} |"
            )
        print()


if __name__ == "__main__":
    main()
