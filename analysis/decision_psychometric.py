"""Psychometric and chronometric curves of a noise-trained Decision network next to Wong & Wang.

    python analysis/decision_psychometric.py --checkpoint runs/<run>    # a trained network
    python analysis/decision_psychometric.py                            # trains decision_noisy first
    python analysis/decision_psychometric.py --checkpoint RUN --trials 1000 \\
        --out docs/figures/decision_psychometric.png

Both the network and the Wong-Wang reference generator (colenv.reference.wong_wang, with its
own Ornstein-Uhlenbeck noise) answer ``--trials`` noisy trials at each coherence (0, 3.2, 6.4,
12.8, 25.6, 51.2 %), on the Decision task's timing (300 ms before, 1000 ms of stimulus, 200 ms
after). Half of the trials of a coherence favour pool 1 (c' > 0), half pool 2, so a bias of
one column does not count as skill. Both are read the way Wong & Wang read their pools:

- decision: the first time after stimulus onset that the 50 ms running average of a pool's
  rate reaches the threshold; the choice is that pool. The reference's threshold is the
  paper's 15 Hz; the network's outputs are the pools' rates times the task's
  ``target_scale`` (0.5), so its threshold is ``target_scale * 15 Hz`` = 7.5 Hz.
- decision time: that time, from stimulus onset (the paper adds 100 ms of non-decision time
  for a reaction time; not added here).
- a trial without a decision during the stimulus is chosen as the task's ``accuracy`` reads
  it, by the pool with the higher mean rate over the last 100 ms of the stimulus, and counted
  in the ``undecided`` column; it has no decision time.

Psychometric curve: fraction correct (chose the favoured pool; at c' = 0 "correct" is pool 1)
against |c'|, fitted with the Weibull function p = 1 - 0.5 exp(-(c/alpha)^beta)
(:func:`colenv.reference.wong_wang.fit_weibull`, scipy curve_fit). Chronometric curve: mean
decision time of correct trials against |c'|, fitted with the diffusion-to-bound form of
Palmer, Huk & Shadlen (2005), t(c) = A / (k c) tanh(A k c) + t_0 (c as a fraction; at c = 0
the limit A^2 + t_0), by scipy curve_fit.

Writes a side-by-side plot (``--out``) and prints a markdown table (``--table`` writes it to a
file too). Every trial's noise comes from ``--seed``; the same command gives the same numbers.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import scipy.optimize
import torch

from colenv import Decision, rollout
from colenv.reference.wong_wang import decide, fit_weibull, simulate, stimulus_hz

COHERENCES_PCT = (0.0, 3.2, 6.4, 12.8, 25.6, 51.2)
THRESHOLD_HZ = 15.0
"""Wong & Wang's decision threshold on a pool's 50 ms running-average rate."""
WINDOW_MS = 50.0
NOISY_CONFIG = "config/tasks/decision_noisy.toml"


# ------------------------------------------------------------------ trials and read-out
def trial_coherences(trials: int, coherences=COHERENCES_PCT) -> torch.Tensor:
    """[6 * trials] signed c': per coherence, the first half +c, the second half -c."""
    signs = torch.where(torch.arange(trials) < (trials + 1) // 2, 1.0, -1.0).double()
    return torch.cat([c * signs for c in coherences])


def read_choices(rates_hz: torch.Tensor, task: Decision, threshold_hz: float):
    """Choice (0 pool 1, 1 pool 2), decision time from stimulus onset (ms, nan if none) and
    whether a decision was made, for pools' rates [T, B, 2] on the task's grid."""
    stim = task.period("stimulus")
    during = rates_hz[stim]
    choice, t_ms = decide(during, task.dt_ms, threshold_hz, WINDOW_MS)
    decided = choice >= 0
    last = during[-task.decision_window_steps :].mean(dim=0)  # [B, 2]
    fallback = (last[:, 1] > last[:, 0]).long()
    return torch.where(decided, choice, fallback), t_ms, decided


def summarize(name, coherence, choice, t_ms, decided, levels=COHERENCES_PCT) -> dict:
    """Per |c'|: fraction correct, undecided count, mean/sd decision time of correct trials."""
    favoured = (coherence < 0).long()  # c' > 0 favours pool 1 (0); c' = 0: pool 1 is "correct"
    correct = choice == favoured
    rows = []
    for c in levels:
        sel = coherence.abs() == c
        ok = correct[sel]
        times = t_ms[sel & correct & decided]
        rows.append(
            {
                "coherence_pct": c,
                "n": int(sel.sum()),
                "p_correct": float(ok.double().mean()),
                "undecided": int((~decided[sel]).sum()),
                "rt_ms": float(times.mean()) if times.numel() else math.nan,
                "rt_sd_ms": float(times.std()) if times.numel() > 1 else math.nan,
            }
        )
    c = np.array([r["coherence_pct"] for r in rows])
    p = np.array([r["p_correct"] for r in rows])
    alpha, beta = fit_weibull(c, p)
    chrono = fit_chronometric(c, np.array([r["rt_ms"] for r in rows]))
    return {"name": name, "rows": rows, "alpha": alpha, "beta": beta, "chrono": chrono}


def chronometric(c_pct, a, k, t0):
    """Palmer et al. (2005): mean decision time (ms) of a diffusion to a bound at coherence c."""
    x = np.asarray(c_pct, dtype=np.float64) / 100.0
    ax = a * k * x
    safe = np.where(np.abs(ax) < 1e-9, 1.0, ax)
    return np.where(np.abs(ax) < 1e-9, a * a, a * a * np.tanh(safe) / safe) + t0


def fit_chronometric(c_pct, rt_ms):
    """(A, k, t0) of :func:`chronometric` by least squares (scipy curve_fit); None if fewer
    than 3 coherences have a decision time."""
    ok = np.isfinite(rt_ms)
    if ok.sum() < 3:
        return None
    c, t = c_pct[ok], rt_ms[ok]
    p0 = (math.sqrt(max(t.max() - t.min(), 1.0)), 10.0, float(t.min()) * 0.5)
    try:
        theta, _ = scipy.optimize.curve_fit(
            chronometric, c, t, p0=p0, bounds=([0, 0, 0], [np.inf, np.inf, np.inf]), maxfev=20000
        )
    except RuntimeError:
        return None
    return tuple(float(v) for v in theta)


# ------------------------------------------------------------------ the two generators
def run_reference(task: Decision, coherence: torch.Tensor, seed: int):
    """Wong-Wang pools (their own OU noise) on the task's timing: rates [T, B, 2] (Hz)."""
    stimulus = torch.zeros(task.n_steps, coherence.numel(), 2, dtype=torch.float64)
    stimulus[task.period("stimulus")] = stimulus_hz(coherence, task.params.mu0_hz)
    gen = torch.Generator().manual_seed(seed)
    return simulate(stimulus, task.dt_ms, params=task.params, noise=True, generator=gen).rates_hz


def load_network(checkpoint: str, device: str = "cpu"):
    """(config, task, model) of a Decision checkpoint (a run folder or a .pt file)."""
    from trainers.build import build_model, build_task
    from trainers.checkpoint import read_checkpoint, resolve_checkpoint
    from trainers.config import TrainConfig

    ckpt = read_checkpoint(resolve_checkpoint(checkpoint))
    config = TrainConfig.from_dict(ckpt["config"], source=f"checkpoint {checkpoint}")
    task = build_task(config)
    if not isinstance(task, Decision):
        raise SystemExit(f"{checkpoint}: a {config.task} checkpoint, not colenv/Decision-v0")
    model = build_model(config, task, torch.device(device), torch.float32)
    model.load_state_dict(ckpt["state_dict"])
    return config, task, model


def run_network(config, task, model, coherence: torch.Tensor, seed: int, chunk: int):
    """The network's outputs [T, B, 2] (Hz) on noisy trials (its SDE, ``config.solver`` with
    sde on), ``chunk`` trials per rollout, noise seeded by (seed, chunk index)."""
    solver = config.solver.model_copy(update={"sde": True})
    param = next(model.parameters())
    trial = task.sample_batch(
        conditions={"coherence_pct": coherence}, seed=seed, device=param.device, dtype=param.dtype
    )
    outs = []
    with torch.no_grad():
        for i, start in enumerate(range(0, coherence.numel(), chunk)):
            part = trial[slice(start, start + chunk)]
            result = rollout(model, part.stimulus, part.t_ms, solver, seed=seed * 100_003 + i)
            outs.append(model.readout(result.states).double().cpu())
    return torch.cat(outs, dim=1)


def train_noisy(threads: int) -> str:
    """Train config/tasks/decision_noisy.toml (seed 0) and return its checkpoint."""
    from trainers.config import load_config
    from trainers.run import train

    config = load_config(NOISY_CONFIG, [f"train.threads={threads}", "logging.wandb=false"])
    result = train(config)
    if not result.solved:
        print(f"warning: {NOISY_CONFIG} did not reach its criterion ({result.message})")
    return result.checkpoint


# ------------------------------------------------------------------ output
def table(results: list[dict]) -> str:
    lines = [
        "| c' (%) | "
        + " | ".join(f"{r['name']}: correct, undecided, DT (ms)" for r in results)
        + " |",
        "|---:|" + "---|" * len(results),
    ]
    for i, c in enumerate(COHERENCES_PCT):
        cells = []
        for r in results:
            row = r["rows"][i]
            rt = "-" if math.isnan(row["rt_ms"]) else f"{row['rt_ms']:.0f} +- {row['rt_sd_ms']:.0f}"
            cells.append(f"{row['p_correct']:.3f}, {row['undecided']}/{row['n']}, {rt}")
        lines.append(f"| {c:g} | " + " | ".join(cells) + " |")
    lines.append("")
    for r in results:
        chrono = r["chrono"]
        fit = (
            f"A = {chrono[0]:.2f}, k = {chrono[1]:.2f}, t0 = {chrono[2]:.0f} ms"
            if chrono
            else "no fit"
        )
        lines.append(
            f"- {r['name']}: Weibull alpha = {r['alpha']:.2f} %, beta = {r['beta']:.2f}; "
            f"chronometric {fit}"
        )
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path, title: str) -> Path:
    from colenv.tasks.plotting import figure, save

    fig = figure(9.0, 3.6)
    ax_p, ax_t = fig.subplots(1, 2)
    fine = np.geomspace(0.5, 100, 200)
    styles = {0: ("s", "black"), 1: ("o", "tab:blue")}
    for i, r in enumerate(results):
        marker, color = styles[i % 2]
        c = np.array([row["coherence_pct"] for row in r["rows"]])
        shown = np.where(c == 0, 0.5, c)  # c' = 0 drawn at 0.5 % on the log axis
        p = [row["p_correct"] for row in r["rows"]]
        ax_p.plot(shown, p, marker, color=color, mfc="none", label=r["name"])
        weibull = 1 - 0.5 * np.exp(-((fine / r["alpha"]) ** r["beta"]))
        ax_p.plot(
            fine, weibull, "-", color=color, lw=1,
            label=f"alpha {r['alpha']:.1f} %, beta {r['beta']:.2f}",
        )  # fmt: skip
        rt = np.array([row["rt_ms"] for row in r["rows"]])
        sd = np.array([row["rt_sd_ms"] for row in r["rows"]])
        ax_t.errorbar(shown, rt, yerr=sd, fmt=marker, color=color, mfc="none", label=r["name"])
        timed = c[np.isfinite(rt) & (c > 0)]
        if r["chrono"] and timed.size:  # the fit, drawn over the coherences it was fitted to
            span = fine[fine >= timed.min()]
            ax_t.plot(span, chronometric(span, *r["chrono"]), "-", color=color, lw=1)
    for ax in (ax_p, ax_t):
        ax.set_xscale("log")
        ax.set_xlabel("coherence |c'| (%) (0 drawn at 0.5)")
        ax.legend(fontsize=7)
    ax_p.set_ylabel("fraction correct")
    ax_p.set_ylim(0.4, 1.02)
    ax_t.set_ylabel("decision time, correct trials (ms)")
    fig.suptitle(title, fontsize=9)
    return save(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="", help="Decision run folder or .pt; none: train")
    ap.add_argument("--trials", type=int, default=1000, help="noisy trials per coherence")
    ap.add_argument("--seed", type=int, default=0, help="seeds every trial's noise")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--chunk", type=int, default=500, help="trials per network rollout")
    ap.add_argument("--out", default="docs/figures/decision_psychometric.png")
    ap.add_argument("--table", default="", help="also write the markdown table to this file")
    args = ap.parse_args()
    if args.trials < 2:
        raise SystemExit("--trials must be >= 2")
    torch.set_num_threads(args.threads)
    checkpoint = args.checkpoint or train_noisy(args.threads)
    config, task, model = load_network(checkpoint)
    coherence = trial_coherences(args.trials)
    threshold = task.target_scale * THRESHOLD_HZ

    start = time.perf_counter()
    reference = run_reference(task, coherence, args.seed)
    ref_s = time.perf_counter() - start
    start = time.perf_counter()
    network = run_network(config, task, model, coherence, args.seed, args.chunk)
    net_s = time.perf_counter() - start

    results = [
        summarize("Wong-Wang", coherence, *read_choices(reference, task, THRESHOLD_HZ)),
        summarize("network", coherence, *read_choices(network, task, threshold)),
    ]
    n = coherence.numel()
    print(
        f"{n} trials ({args.trials} x {len(COHERENCES_PCT)} coherences, "
        f"{task.n_steps * task.dt_ms:g} ms each): Wong-Wang {ref_s:.1f} s, network {net_s:.1f} s "
        f"(solver {config.solver.method} at {config.solver.step_ms:g} ms, noise_std "
        f"{model.spec.noise_std:g}, {args.threads} threads); thresholds: Wong-Wang "
        f"{THRESHOLD_HZ:g} Hz, network {threshold:g} Hz\n"
    )
    text = table(results)
    print(text)
    if args.table:
        Path(args.table).write_text(text)
    path = plot(
        results,
        Path(args.out),
        f"Decision: network ({Path(checkpoint).name}) vs Wong & Wang (2006), "
        f"{args.trials} trials per coherence",
    )
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
