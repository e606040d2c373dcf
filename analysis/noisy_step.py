"""Which fixed step a noisy (SDE) run can use: runaways and scores under noise, per solver.

    python analysis/noisy_step.py config/tasks/parity_noisy.toml --solvers rk4exp:0.25 \
        rk4exp:0.5 exprb2:0.5 exprb2:1
    python analysis/noisy_step.py runs/<run>/checkpoints/last.pt --draws 16 --solvers ...

A noise-free step is judged against a float64 reference (``python -m trainers.bench``). A
noisy rollout has no deterministic reference, and a step that is accurate without noise can
still run away with it: the noise can push the state where the step no longer holds. For each ``method:step_ms`` this script
integrates ``--draws`` noisy copies of every condition of the task's evaluation grid (the
network the target builds: a task id, a training config or a checkpoint, with ``key=value``
overrides as for ``train``; noise seeds ``--seed`` + draw, the same for every solver) with
the runaway check off, and prints

- runaway trials: a rate above ``--runaway-hz`` (default 1e4 Hz, ``solver.max_rate_hz``'s
  default) or a NaN/inf at any time;
- the largest rate of the other trials;
- the task's metrics (``task.evaluate``) over all noisy trials (a runaway trial scores as it
  scores: NaN outputs are wrong);
- the scored output: the mean over each trial's scoring window (``mask``), averaged over the
  draws of each condition that did not run away, and its largest difference from the first
  solver listed (the baseline; use the smallest step there), with the standard error of that
  difference (from the spread over draws). Noise makes two solvers' draws differ even at the same seed
  (different steps draw different increments), so only differences well above the standard
  error are the step's; the largest of G differences that are pure sampling noise is about
  2 standard errors for a grid of 16 conditions.

Solvers are ``colenv.SolverConfig`` methods with a fast SDE path (``rk4exp``, ``exprb2``,
``expeuler``, ``exprk2``) at the step given, with the default ``[solver.fast]`` options.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from colenv import SolverConfig, rollout
from colenv.errors import ConfigError
from trainers.bench import build_network

FAST_SDE = ("rk4exp", "exprb2", "expeuler", "exprk2")


def parse_solver(text: str) -> tuple[str, float]:
    """``"exprb2:0.5"`` -> ("exprb2", 0.5); a ConfigError naming the value otherwise."""
    method, sep, step = text.partition(":")
    try:
        step_ms = float(step)
    except ValueError:
        step_ms = math.nan
    if not sep or method not in FAST_SDE or not (step_ms > 0 and math.isfinite(step_ms)):
        raise ConfigError(
            f"--solvers {text!r}: expected METHOD:STEP_MS with METHOD one of "
            f"{', '.join(FAST_SDE)} and STEP_MS > 0 (e.g. exprb2:0.5)"
        )
    return method, step_ms


def solver_for(method: str, step_ms: float) -> SolverConfig:
    """``method`` at ``step_ms`` with the SDE on and the runaway check off (default fast
    options: the native kernel on CPU in float32, as ``python -m trainers.bench`` runs)."""
    return SolverConfig(method=method, step_ms=step_ms, sde=True, check_finite=False)


def noise_std(net) -> float:
    """The network's ``noise_std`` (``model.network.noise_std``; 0 for models without one)."""
    return float(getattr(getattr(net.model, "spec", None), "noise_std", 0.0) or 0.0)


def window_means(output: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``output`` [T, B, O] over each trial's scoring window (``mask``): [B, O]."""
    m = mask.to(output.dtype)
    return (output * m).sum(0) / m.sum(0).clamp_min(1)


def run(net, trial, solver: SolverConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(readout [T, B, O], each trial's largest rate [B], inf where not finite) of one noisy
    rollout of ``trial``."""
    res = rollout(
        net.model, trial.stimulus, trial.t_ms, solver, y0=net.initial_state(trial), seed=seed
    )
    peak = net.model.rates(res.states).abs().amax(dim=(0, 2))
    peak = torch.where(torch.isfinite(peak), peak, torch.full_like(peak, math.inf))
    return net.model.readout(res.states), peak


def measure(net, solver: SolverConfig, draws: int, seed: int, runaway_hz: float) -> dict:
    """Runaways, largest rate, metrics and per-condition window means of ``draws`` noisy
    copies of the evaluation grid."""
    grid = net.trial(None, torch.float32)
    g = grid.batch_size
    outputs, peaks = [], []
    t0 = time.perf_counter()
    with torch.no_grad():
        for d in range(draws):
            out, peak = run(net, grid, solver, seed + d)
            outputs.append(out)
            peaks.append(peak)
    wall = time.perf_counter() - t0
    output = torch.cat(outputs, dim=1)  # [T, draws * G, O], draw d of condition i at d*G + i
    batch = grid[torch.arange(draws * g) % g]
    peak = torch.cat(peaks)
    runaway = ~(peak <= runaway_hz)
    metrics = dict(net.task.evaluate(output, batch))
    means = window_means(output, batch.mask).reshape(draws, g, -1)
    means = torch.where(runaway.reshape(draws, g, 1), torch.full_like(means, math.nan), means)
    kept = (~means.isnan()).sum(0).clamp_min(1)
    mean = means.nanmean(0)
    spread = ((means - mean).nan_to_num(0.0) ** 2).sum(0) / (kept - 1).clamp_min(1)
    return {
        "runaways": int(runaway.sum()),
        "trials": draws * g,
        "peak_hz": float(peak[~runaway].max()) if bool((~runaway).any()) else math.nan,
        "metrics": metrics,
        "mean": mean,  # [G, O], over the draws that did not run away
        "sem": (spread / kept).sqrt(),
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> None:
    try:
        run_cli(argv)
    except ConfigError as err:  # bad arguments: one line naming the value, no traceback
        raise SystemExit(f"error: {err}") from None


def run_cli(argv: list[str] | None = None) -> None:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("target", help="task id, training config (.toml) or checkpoint")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides, as for train")
    ap.add_argument("--solvers", nargs="+", required=True, help="METHOD:STEP_MS ...")
    ap.add_argument("--draws", type=int, default=16, help="noisy copies of the grid (16)")
    ap.add_argument("--seed", type=int, default=0, help="noise seed of the first draw (0)")
    ap.add_argument("--runaway-hz", type=float, default=1e4, help="runaway bound (1e4 Hz)")
    ap.add_argument("--metrics", nargs="*", default=None, help="task metrics to print")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    args = ap.parse_args(argv)
    if args.draws < 1:
        raise ConfigError(f"--draws {args.draws}: must be >= 1")
    if not (args.runaway_hz > 0):
        raise ConfigError(f"--runaway-hz {args.runaway_hz}: must be > 0")
    solvers = [parse_solver(s) for s in args.solvers]
    torch.set_num_threads(args.threads)
    net = build_network(args.target, args.overrides, device=args.device)
    if not noise_std(net):
        print("note: the model's noise_std is 0: these are noise-free rollouts")

    rows, base = [], None
    for method, step in solvers:
        solver = solver_for(method, step)
        r = measure(net, solver, args.draws, args.seed, args.runaway_hz)
        if base is None:
            base = r
            unknown = [n for n in args.metrics or () if n not in r["metrics"]]
            if unknown:
                raise ConfigError(
                    f"--metrics {unknown}: not metrics of {net.config.task}; allowed: "
                    f"{', '.join(r['metrics'])}"
                )
        diff = (r["mean"] - base["mean"]).abs().reshape(-1)
        se = (r["sem"] ** 2 + base["sem"] ** 2).sqrt().reshape(-1)
        r["lost"] = int(diff.isnan().sum())  # conditions without a draw left in one of them
        if r["lost"] < diff.numel():
            k = int(diff.nan_to_num(-1.0).argmax())
            r["diff"], r["diff_se"] = float(diff[k]), float(se[k])
        else:
            r["diff"] = r["diff_se"] = math.nan
        rows.append((f"{method} {step:g} ms", r))
        print(f"{method} {step:g} ms: {r['runaways']}/{r['trials']} runaway, {r['wall_s']:.1f} s")

    names = args.metrics
    if names is None:
        names = [
            k for k in ("accuracy", "report_accuracy", "hold_solved") if k in rows[0][1]["metrics"]
        ]
    head = "| solver | runaway trials | largest other rate (Hz) | " + " | ".join(names)
    head += " | window mean vs baseline (Hz) |"
    print()
    print(
        f"{args.draws} noisy draws of the evaluation grid, noise_std "
        f"{noise_std(net):g}, runaway above {args.runaway_hz:g} Hz; "
        "baseline: the first row"
    )
    print()
    print(head)
    print("|---|---:|---:|" + "---:|" * len(names) + "---:|")
    for label, r in rows:
        vals = " | ".join(f"{r['metrics'].get(n, math.nan):.3f}" for n in names)
        diff = f"{r['diff']:.2f} +- {r['diff_se']:.2f}"
        if r["lost"]:
            diff += f" ({r['lost']} conditions ran away on every draw)"
        print(f"| {label} | {r['runaways']}/{r['trials']} | {r['peak_hz']:.4g} | {vals} | {diff} |")


if __name__ == "__main__":
    main()
