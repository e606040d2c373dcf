"""Psychometric and chronometric curves of a noise-trained Decision network next to Wong & Wang.

    python analysis/decision_psychometric.py --checkpoint runs/<run>    # a trained network
    python analysis/decision_psychometric.py                            # trains decision_noisy first
    python analysis/decision_psychometric.py --config config/tasks/decision_noisy.toml \\
        --trials 100 --set model.network.noise_std=2      # a config's untrained start
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

Task rule: next to the threshold read-out, every trial is also scored by the Decision task's own
rule (:meth:`Decision.choice_gap`: over the last 100 ms of the stimulus the favoured pool's
output leads by >= ``choice_margin_hz``, 5 Hz; the Wong-Wang pools' rates are scaled by
``target_scale`` first, as the task's targets are), and ``criterion`` is the task's
``accuracy`` over those trials: with config/tasks/decision_noisy.toml's
``accuracy_min_coherence_pct = 12.8`` the trials with |c'| >= 12.8 %. Wong-Wang's own value of
that criterion is what a network that decides as Wong & Wang's pools do can score.

Time: the network's trials run without autograd in chunks of ``--chunk`` (each one batched rollout
of the native kernel, its noise drawn at once); the stimulus and the noise-free targets are
built once per signed coherence (11 Wong-Wang runs, not one per trial). The wall and CPU time
of each generator are printed. ``--reference-only`` runs Wong-Wang alone (no network).

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

from colenv import Decision, Trial, rollout
from colenv.reference.wong_wang import decide, fit_weibull, simulate

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
def trial_block(task: Decision, coherence: torch.Tensor) -> Trial:
    """The task's trials [T, B] for the signed coherences ``coherence`` (float64): stimulus,
    noise-free Wong-Wang targets and mask, built once per distinct c' and indexed (a
    noise-free trial depends on c' alone), so 6000 trials cost 11 reference runs."""
    levels, index = torch.unique(coherence.double(), return_inverse=True)
    grid = task.sample_batch(conditions={"coherence_pct": levels}, dtype=torch.float64)
    return grid[index]


def run_reference(task: Decision, trial: Trial, seed: int) -> torch.Tensor:
    """Wong-Wang pools (their own OU noise) on the trials' stimulus: rates [T, B, 2] (Hz).

    One torch thread: the reference is a Python loop of small element-wise ops ([B, 2]), which
    a second thread only slows down (10x in CPU time on 2 busy cores: each op waits for it)."""
    gen = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return simulate(
            trial.stimulus, task.dt_ms, params=task.params, noise=True, generator=gen
        ).rates_hz
    finally:
        torch.set_num_threads(threads)


def load_network(checkpoint: str, overrides: list[str] = (), device: str = "cpu"):
    """(config, task, model) of a Decision checkpoint (a run folder or a .pt file), its config
    with ``overrides`` (key=value, e.g. another ``solver.step_ms``)."""
    from trainers.build import build_model, build_task
    from trainers.checkpoint import read_checkpoint, resolve_checkpoint
    from trainers.config import TrainConfig, apply_overrides

    ckpt = read_checkpoint(resolve_checkpoint(checkpoint))
    raw = apply_overrides(ckpt["config"], list(overrides))
    config = TrainConfig.from_dict(raw, source=f"checkpoint {checkpoint}")
    task = build_task(config)
    if not isinstance(task, Decision):
        raise SystemExit(f"{checkpoint}: a {config.task} checkpoint, not colenv/Decision-v0")
    model = build_model(config, task, torch.device(device), torch.float32)
    model.load_state_dict(ckpt["state_dict"])
    return config, task, model


def start_network(path: str, overrides: list[str], device: str = "cpu"):
    """(config, task, model) of a Decision config at its start: the initial weights of its
    stated rule (``train.seed``'s jitter), untrained. ``overrides`` as on the command line."""
    from trainers.build import build_model, build_task
    from trainers.config import load_config

    config = load_config(path, overrides)
    task = build_task(config)
    if not isinstance(task, Decision):
        raise SystemExit(f"{path}: a {config.task} config, not colenv/Decision-v0")
    return config, task, build_model(config, task, torch.device(device), torch.float32)


def run_network(config, model, trial: Trial, seed: int, chunk: int) -> torch.Tensor:
    """The network's outputs [T, B, 2] (Hz, float64 on CPU) on noisy trials (its SDE,
    ``config.solver`` with sde on), ``chunk`` trials per batched rollout, without autograd,
    noise seeded by (seed, chunk index)."""
    solver = config.solver.model_copy(update={"sde": True})
    param = next(model.parameters())
    outs = []
    with torch.no_grad():
        for i, start in enumerate(range(0, trial.batch_size, chunk)):
            part = trial[slice(start, start + chunk)].to(device=param.device, dtype=param.dtype)
            result = rollout(model, part.stimulus, part.t_ms, solver, seed=seed * 100_003 + i)
            outs.append(model.readout(result.states).double().cpu())
    return torch.cat(outs, dim=1)


def task_rule(task: Decision, output: torch.Tensor, trial: Trial, levels=COHERENCES_PCT):
    """The task's own read-out of outputs [T, B, 2] (Hz, the pools' scale x target_scale):
    per |c'|, the fraction of trials whose favoured pool leads by >= the margin over the last
    100 ms of the stimulus, and the task's ``accuracy`` (its ``accuracy_min_coherence_pct``
    rule). At c' = 0 the noise-free pools have no winner: that level is nan."""
    window = task.choice_windows(trial.n_steps)["stimulus end"]
    gap = task.choice_gap(output, trial.target.to(output.dtype), window)
    correct = (gap > 0) & (gap >= task.choice_margin_hz)
    c = trial.conditions["coherence_pct"]
    per_level = [
        float(correct[c.abs() == level].double().mean()) if level else math.nan for level in levels
    ]
    return per_level, task.evaluate(output, trial)["accuracy"]


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
def table(results: list[dict], task: Decision | None = None) -> str:
    """Markdown: per |c'| and generator the fraction correct (threshold read-out), undecided
    trials, decision time of correct trials and, where ``task_rule`` ran, the fraction correct
    by the task's margin rule; then the fits and the task's criterion."""
    ruled = all("rule" in r for r in results)
    head = "correct, undecided, DT (ms)" + (", task rule" if ruled else "")
    lines = [
        "| c' (%) | " + " | ".join(f"{r['name']}: {head}" for r in results) + " |",
        "|---:|" + "---|" * len(results),
    ]
    for i, c in enumerate(COHERENCES_PCT):
        cells = []
        for r in results:
            row = r["rows"][i]
            rt = "-" if math.isnan(row["rt_ms"]) else f"{row['rt_ms']:.0f} +- {row['rt_sd_ms']:.0f}"
            cell = f"{row['p_correct']:.3f}, {row['undecided']}/{row['n']}, {rt}"
            if ruled:
                rule = r["rule"][i]
                cell += ", -" if math.isnan(rule) else f", {rule:.3f}"
            cells.append(cell)
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
    if ruled and task is not None:
        scored = (
            f"|c'| >= {task.accuracy_min_coherence_pct:g} %"
            if task.accuracy_min_coherence_pct > 0
            else "c' != 0"
        )
        lines.append(
            f"- task criterion (accuracy over {scored}, lead >= {task.choice_margin_hz:g} Hz "
            f"over the last 100 ms of the stimulus; solved at {task.success_threshold:g}): "
            + ", ".join(f"{r['name']} {r['criterion']:.3f}" for r in results)
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
    ap.add_argument("--reference-only", action="store_true", help="Wong-Wang alone, no network")
    ap.add_argument(
        "--config", default="", help="a Decision TOML: its untrained start instead of a checkpoint"
    )
    ap.add_argument(
        "--set",
        nargs="*",
        default=[],
        help="key=value overrides of --config or --checkpoint's config",
    )
    ap.add_argument("--trials", type=int, default=1000, help="noisy trials per coherence")
    ap.add_argument("--seed", type=int, default=0, help="seeds every trial's noise")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--chunk", type=int, default=1000, help="trials per network rollout")
    ap.add_argument("--out", default="docs/figures/decision_psychometric.png")
    ap.add_argument("--table", default="", help="also write the markdown table to this file")
    args = ap.parse_args()
    if args.trials < 2:
        raise SystemExit("--trials must be >= 2")
    if args.chunk < 1:
        raise SystemExit("--chunk must be >= 1")
    torch.set_num_threads(args.threads)
    if args.reference_only:
        from trainers.build import build_task
        from trainers.config import load_config

        config, model, checkpoint = load_config(NOISY_CONFIG), None, ""
        task = build_task(config)
    elif args.config:
        config, task, model = start_network(args.config, args.set)
        checkpoint = f"{args.config} (start)"
    else:
        checkpoint = args.checkpoint or train_noisy(args.threads)
        config, task, model = load_network(checkpoint, args.set)
    coherence = trial_coherences(args.trials)
    trial = trial_block(task, coherence)

    clock = time.perf_counter(), time.process_time()
    reference = run_reference(task, trial, args.seed)
    times = [("Wong-Wang", time.perf_counter() - clock[0], time.process_time() - clock[1])]
    results = [summarize("Wong-Wang", coherence, *read_choices(reference, task, THRESHOLD_HZ))]
    results[0]["rule"], results[0]["criterion"] = task_rule(
        task, task.target_scale * reference, trial
    )
    threshold = task.target_scale * THRESHOLD_HZ
    if model is not None:
        clock = time.perf_counter(), time.process_time()
        network = run_network(config, model, trial, args.seed, args.chunk)
        times.append(("network", time.perf_counter() - clock[0], time.process_time() - clock[1]))
        results.append(summarize("network", coherence, *read_choices(network, task, threshold)))
        results[1]["rule"], results[1]["criterion"] = task_rule(task, network, trial)

    n = coherence.numel()
    spent = ", ".join(f"{name} {wall:.1f} s wall / {cpu:.1f} s CPU" for name, wall, cpu in times)
    solver = (
        f" (network: solver {config.solver.method} at {config.solver.step_ms:g} ms, noise_std "
        f"{model.spec.noise_std:g}, chunks of {args.chunk})"
        if model is not None
        else ""
    )
    print(
        f"{n} trials ({args.trials} x {len(COHERENCES_PCT)} coherences, "
        f"{task.n_steps * task.dt_ms:g} ms each) on {args.threads} threads: {spent}{solver}; "
        f"thresholds: Wong-Wang {THRESHOLD_HZ:g} Hz, network {threshold:g} Hz\n"
    )
    text = table(results, task)
    print(text)
    if args.table:
        Path(args.table).write_text(text)
    who = f"network ({Path(checkpoint).name}) vs " if model is not None else ""
    path = plot(
        results,
        Path(args.out),
        f"Decision: {who}Wong & Wang (2006), {args.trials} trials per coherence",
    )
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
