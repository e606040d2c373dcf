"""The holding Decision: where its starting weights come from (config/tasks/decision_hold.toml).

Five tables; every start of the config is read off one of them, none from a trained run.

1. Do the targets hold? The noise-free Wong & Wang (2006) pools (scaled x 0.5, as the task's
   targets) after a 1 s stimulus: per coherence the decision time, winner and loser at the end
   of the stimulus and over the 500 ms after it, and the smallest winner - loser lead there
   (the task's hold rule needs >= 5 Hz in every 100 ms window).

2. Which self-excitation makes one column bistable? One isolated MT column (background drive
   only) whose L2/3e -> L2/3e weight is x ``scale`` and gated by the slow synapse
   (``network.gating``, docs/science.md "Slow gating synapse"): dS/dt = -S / tau_S +
   gamma (1 - S) phi, and the gated weight acts on S / (gamma tau_S) instead of phi. At a
   steady state S* = gamma tau_S phi / (1 + gamma tau_S phi), so the gated self-excitation
   acts on phi_eff = phi / (1 + gamma tau_S phi), which saturates at 1 / (gamma tau_S) =
   15.6 Hz: a high state can no longer run away. Steady states with the L2/3e adaptation a
   held fixed (tau_a = 10 s: over a trial a moves by at most ~3) are found as in
   ``analysis/column_bistability.py``: clamp the L2/3e rate E, solve the other seven
   populations (Newton), and find the roots of the L2/3e residual G(E) = a, G with the gated
   term. The column's rest is its lowest steady state with a = kappa E. Stability:
   eigenvalues of the Jacobian of (v, S) with a fixed (v of all 8 populations, S of L2/3e).
   Per L2/3i -> L2/3e factor ``ie`` and scale: the rest and every steady state.

3. The rule for the self-excitation: per ``ie``, the smallest scale whose column has a
   stable upper state at the Wong-Wang winner's persistent rate (10.2 Hz scaled, table 1)
   next to a stable rest below 1 Hz.

4. The rule for the lateral in-degree: ``ColumnNetwork.rest_state`` (the network's initial
   state) follows the dynamics from a cold start and, with bistable columns, can end in the
   symmetric upper state; the smallest in-degree (steps of 2500) whose rest is low.

5. The rule for the input onto L2/3e: the winner's decision time per coherence (Wong & Wang's
   rule on output / 0.5) against the weight, untrained and jitter-free; the weight at which
   the 12.8 % decision time equals theirs.

    python analysis/decision_hold.py                 # all five (about 5 min on one core)
    python analysis/decision_hold.py --scales 4,5,6 --ie-scales 1.75 --a-steps 0,3
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import scipy.optimize
import torch

from colenv.reference.wong_wang import decide
from colenv.tasks.decision import Decision


def _sibling(name: str):
    """A module of analysis/ (this script's folder) by path, without touching sys.path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


column = _sibling("column_bistability").column

GAMMA = 0.641  # Wong & Wang (2006): gating saturation (phi in Hz, time in s)
TAU_S = 0.1  # s, NMDA gating decay
KAPPA_L23E = 1.5  # config/model.toml neuron.kappa of L2/3e
PERSISTENT_WINNER_HZ = 10.2  # table 1: the scaled Wong-Wang winner 500 ms after the stimulus


def wong_wang_hold(post_ms: float = 500.0) -> None:
    task = Decision(
        pre_stimulus_ms=100, stimulus_ms=1000, post_stimulus_ms=post_ms, hold_window_ms=post_ms
    )
    trial = task.sample_batch(conditions="all")
    c = trial.conditions["coherence_pct"]
    stim, post = task.period("stimulus"), task.period("post_stimulus")
    end = task.choice_windows()["stimulus end"]
    print(f"Wong-Wang targets (x 0.5), 1 s stimulus, {post_ms:g} ms after it (Hz)\n")
    print(
        "| c' (%) | decision (ms after onset) | winner / loser at stimulus end "
        "| winner after (min-max) | loser after (max) | min lead after |"
    )
    print("|---:|---:|---|---|---:|---:|")
    for b in range(len(c)):
        if float(c[b]) < 0:
            continue  # mirror images of c' > 0
        win = int(trial.target[end, b].mean(0).argmax())
        w_post, l_post = trial.target[post, b, win], trial.target[post, b, 1 - win]
        t_dec = float(trial.conditions["decision_time_ms"][b]) - stim.start * task.dt_ms
        print(
            f"| {float(c[b]):g} | {t_dec:.0f} | {float(trial.target[end, b, win].mean()):.2f} / "
            f"{float(trial.target[end, b, 1 - win].mean()):.2f} | {float(w_post.min()):.2f}-"
            f"{float(w_post.max()):.2f} | {float(l_post.max()):.2f} | "
            f"{float((w_post - l_post).min()):.2f} |"
        )
    m = task.evaluate(trial.target, trial)
    print(
        f"\ntargets scored as outputs: accuracy {m['accuracy']:g}, hold_accuracy "
        f"{m['hold_accuracy']:g} (every 100 ms window of the {post_ms:g} ms), "
        f"hold_solved {m['hold_solved']:g}\n"
    )


class Column:
    """One isolated MT column in numpy: the network's weights w (dv/dt per Hz of source
    rate, 1/s), background drive d, tau_m, the rate function f(u) = g(da u - db) / d of
    ``colenv.models.column.transfer`` (no ceiling) and the rest state, from ColumnNetwork via
    ``analysis/column_bistability.py``; L2/3e -> L2/3e x ``scale``, gated."""

    def __init__(self, scale: float, ei_scale: float = 1.0, ie_scale: float = 1.0) -> None:
        w, d, c, u_start, _ = column("mt", [1.0, 1.0, 1.0, 1.0])  # P&D weights: a start
        w[0, 0] *= scale
        w[1, 0] *= ei_scale  # L2/3e -> L2/3i
        w[0, 1] *= ie_scale  # L2/3i -> L2/3e
        self.w, self.d = w.numpy(), d.numpy()
        self.tau_m, self.da, self.db, self.dd = c["tau_m"], c["da"], c["db"], c["d"]
        self.kappa = KAPPA_L23E
        check = self.rate(u_start.numpy())
        assert np.allclose(check, c["rate"](u_start).numpy(), rtol=1e-9), "rate function differs"
        self.u_start = u_start.numpy()
        self._branch = self.branch()
        # rest: the lowest steady state with its own adaptation, G(E) = kappa E
        self.rest_hz = self._roots(lambda e: self.kappa * e)[0][0]
        self.a_rest = self.kappa * self.rest_hz

    def rate(self, u):
        z = self.da * np.asarray(u, dtype=np.float64) - self.db
        small = np.abs(z) < 1e-6
        zs = np.where(small, 1.0, z)
        g = np.where(small, 1.0 + z / 2.0, zs / -np.expm1(-zs))
        return g / self.dd

    def slope(self, u):
        z = self.da * np.asarray(u, dtype=np.float64) - self.db
        small = np.abs(z) < 1e-4
        zs = np.where(small, 1.0, z)
        e = np.exp(-np.abs(zs))
        # g'(z) = (1 - e^-z (1 + z)) / (1 - e^-z)^2, written for either sign of z
        pos = (1.0 - e * (1.0 + zs)) / (1.0 - e) ** 2
        neg = e * (e - 1.0 - zs) / (e - 1.0) ** 2  # z < 0: multiply through by e^{2z}
        gp = np.where(small, 0.5 + z / 6.0, np.where(zs > 0, pos, neg))
        return gp * self.da / self.dd

    def inverse_rate(self, rate: float) -> float:
        return scipy.optimize.brentq(lambda x: float(self.rate(x)) - rate, -2000.0, 2000.0)

    def clamped(self, e: float, u: np.ndarray):
        """Populations 1..7 at steady state with L2/3e clamped at rate e (Newton from u)."""
        u = u.copy()
        u[0] = self.inverse_rate(e)
        w = self.w
        for _ in range(60):
            phi = self.rate(u)
            f = self.tau_m * (w[1:] @ phi + self.d[1:]) - u[1:]
            if np.abs(f).max() < 1e-9:
                return u, True
            jac = self.tau_m * w[1:, 1:] * self.slope(u)[None, 1:] - np.eye(7)
            step = np.linalg.solve(jac, -f)
            u[1:] += step * min(1.0, 5.0 / max(np.abs(step).max(), 1e-300))
        return u, False

    def residual(self, u: np.ndarray) -> float:
        """G = tau_m (w_0 . f(u) + d_0) - u_0, the gated self term on phi_eff: the L2/3e
        adaptation a this clamped state needs."""
        phi = self.rate(u)
        drive = self.w[0] @ phi - self.w[0, 0] * phi[0] + self.w[0, 0] * phi_eff(phi[0])
        return self.tau_m * (drive + self.d[0]) - u[0]

    def top_eigenvalue(self, u: np.ndarray) -> float:
        """Largest real part of the eigenvalues (1/s) of d(v, S_L2/3e)/dt, a fixed."""
        phi, slope = self.rate(u), self.slope(u)
        e = phi[0]
        s_star = GAMMA * TAU_S * e / (1.0 + GAMMA * TAU_S * e)
        fast = self.w.copy()
        fast[0, 0] = 0.0
        n = len(u)
        jac = np.zeros((n + 1, n + 1))
        jac[:n, :n] = fast * slope[None, :] - np.eye(n) / self.tau_m
        jac[0, n] = self.w[0, 0] / (GAMMA * TAU_S)  # the gated entry acts on S / (gamma tau_S)
        jac[n, 0] = GAMMA * (1.0 - s_star) * slope[0]
        jac[n, n] = -1.0 / TAU_S - GAMMA * e
        return float(np.linalg.eigvals(jac).real.max())

    def branch(self, e_max: float = 200.0, n: int = 240):
        """[(E, G(E), u)] along the clamped branch, continued upwards in E from rest."""
        out, u = [], self.u_start
        for e in np.geomspace(1e-4, e_max, n):
            u, ok = self.clamped(float(e), u)
            if not ok:
                break
            out.append((float(e), self.residual(u), u.copy()))
        return out

    def _roots(self, adaptation):
        """[(L2/3e Hz, stable)] at every root of G(E) = adaptation(E) along the branch."""
        roots = []
        for (e0, g0, u0), (e1, g1, _) in zip(self._branch, self._branch[1:], strict=False):
            if (g0 - adaptation(e0)) * (g1 - adaptation(e1)) > 0:
                continue
            cache = {}

            def h(log_e, u0=u0, cache=cache):
                e = math.exp(log_e)
                u, _ = self.clamped(e, cache.get("u", u0))
                cache["u"] = u
                return self.residual(u) - adaptation(e)

            log_e = scipy.optimize.brentq(h, math.log(e0), math.log(e1), xtol=1e-10)
            u, _ = self.clamped(math.exp(log_e), cache["u"])
            roots.append((math.exp(log_e), self.top_eigenvalue(u) < 0))
        return roots

    def steady_states(self, da_values):
        """{da: [(L2/3e Hz, stable)]} with adaptation held at a_rest + da."""
        return {da: self._roots(lambda e, da=da: self.a_rest + da) for da in da_values}


def phi_eff(rate):
    return rate / (1.0 + GAMMA * TAU_S * rate)


def upper_stable(scale: float, ie_scale: float, low_hz: float = 1.0) -> float:
    """The highest stable L2/3e state at the rest adaptation, 0 unless the column also has a
    stable rest below ``low_hz`` (its lowest steady state with a = kappa E)."""
    col = Column(scale, 1.0, ie_scale)
    stable = [r for r, ok in col.steady_states([0.0])[0.0] if ok]
    return max(stable) if len(stable) >= 2 and col.rest_hz < low_hz else 0.0


def rest_l23e(lateral_k: float, config_path: str) -> float:
    """The network's rest L2/3e rate (Hz, column 0) of ``config_path`` (no jitter) with the
    lateral in-degree ``lateral_k``; inf when its rest state does not converge."""
    from colenv.errors import DivergenceError
    from trainers import build_model, build_task, load_config

    config = load_config(
        config_path, [f"model.network.lateral.init_k={lateral_k}", "model.network.init_jitter=0"]
    )
    model = build_model(config, build_task(config), torch.device("cpu"), torch.float64)
    try:
        rest = model.rest_state()
    except DivergenceError:
        return math.inf
    return float(model.readout(rest[None])[0, 0])


def lateral_rule(config_path: str, low_hz: float = 1.0) -> None:
    """Table 4: the network's rest against the lateral in-degree. ``ColumnNetwork.rest_state``
    follows the dynamics (adaptation at its steady state) from a cold start; with a bistable
    column it can end in the symmetric upper state (both columns high) unless the lateral
    inhibition removes that state. The rule: the smallest in-degree (x 1000) whose rest has
    both L2/3e below ``low_hz``."""
    print(f"\nTwo-column network of {config_path} (no jitter): rest L2/3e vs lateral in-degree\n")
    print("| lateral init_k | rest L2/3e (Hz) |")
    print("|---:|---:|")
    first = None
    for k in range(5000, 40001, 2500):
        r = rest_l23e(k, config_path)
        print(f"| {k} | {r:.3f} |")
        if first is None and r < low_hz:
            first = k
    print(f"\nsmallest lateral in-degree with a low rest (< {low_hz:g} Hz): {first}")


def decision_times(config_path: str, input_nA: float, overrides=()) -> tuple[dict, dict]:
    """({c': ms}, metrics) of the untrained, jitter-free network of ``config_path`` with the
    input onto L2/3e set to ``input_nA`` (nA per Hz): the time after stimulus onset at which
    the winner decides by Wong & Wang's rule (``decide``: a 50 ms running average of the
    output / target_scale reaches 15 Hz), at c' > 0; -1 when it never does."""
    from colenv import rollout
    from trainers import build_model, build_task, load_config

    edges = ", ".join(f'["input[{k}]", "a1[{k}].L23e", {input_nA}]' for k in range(2))
    config = load_config(
        config_path,
        ["model.network.init_jitter=0", f"model.network.input.edges=[{edges}]", *overrides],
    )
    task = build_task(config)
    model = build_model(config, task, torch.device("cpu"), torch.float32)
    trial = task.sample_batch(conditions="all", seed=0)
    with torch.no_grad():
        result = rollout(model, trial.stimulus.float(), trial.t_ms.float(), config.solver)
        out = model.readout(result.states).float()
    # Wong & Wang's own rule on the unscaled rates: a 50 ms running average reaching 15 Hz
    _, t_ms = decide(out.double() / task.target_scale, task.dt_ms)
    onset = task.period("stimulus").start * task.dt_ms
    times = {}
    for b, c in enumerate(trial.conditions["coherence_pct"].tolist()):
        if c > 0:
            t = float(t_ms[b])
            times[round(c, 1)] = t - onset if math.isfinite(t) else -1.0
    return times, task.evaluate(out, trial)


def wong_wang_times(config_path: str) -> dict:
    from trainers import build_task, load_config

    task = build_task(load_config(config_path, []))
    trial = task.sample_batch(conditions="all", seed=0)
    onset = task.period("stimulus").start * task.dt_ms
    c = trial.conditions["coherence_pct"].tolist()
    t = trial.conditions["decision_time_ms"].tolist()
    return {round(ci, 1): ti - onset for ci, ti in zip(c, t, strict=True) if ci > 0}


def input_rule(config_path: str, match_pct: float = 12.8) -> None:
    """Table 5: the input onto L2/3e (nA per Hz; the stimulus drives L2/3e only) against the
    winner's decision time per coherence, untrained and jitter-free, next to Wong & Wang's.
    The rule: the weight at which the decision time at ``match_pct`` (the middle coherence)
    equals Wong & Wang's (bisection on a log scale)."""
    ww = wong_wang_times(config_path)
    cs = sorted(ww)
    print(f"\nInput onto L2/3e vs decision time (ms after onset; Wong-Wang rule), {config_path}\n")
    print(
        "| input (nA/Hz) | "
        + " | ".join(f"{c:g} %" for c in cs)
        + " | accuracy | hold | stimulus rmse (Hz) |"
    )
    print("|---:|" + "---:|" * (len(cs) + 3))
    print("| Wong-Wang (15 Hz) | " + " | ".join(f"{ww[c]:.0f}" for c in cs) + " | | | |")
    for w in (31.7, 21.1, 15.8, 13.7, 12.7, 11.6, 10.6):
        times, m = decision_times(config_path, w)
        print(
            f"| {w:g} | "
            + " | ".join(f"{times[c]:.0f}" for c in cs)
            + f" | {m['accuracy']:.2f} | {m['hold_accuracy']:.2f} | {m['stimulus_rmse_hz']:.2f} |"
        )
    lo, hi = 8.0, 40.0  # the decision time falls with the input weight
    for _ in range(12):
        mid = math.sqrt(lo * hi)
        t = decision_times(config_path, mid)[0][match_pct]
        lo, hi = (mid, hi) if (t < 0 or t > ww[match_pct]) else (lo, mid)
    print(
        f"\nRule: input onto L2/3e {hi:.2f} nA per Hz: the {match_pct:g} % decision time "
        f"{decision_times(config_path, hi)[0][match_pct]:.0f} ms (Wong-Wang {ww[match_pct]:.0f} ms)"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scales", default="2,3,4,5,6,7", help="L2/3e -> L2/3e factors")
    ap.add_argument("--a-steps", default="0,1,2,3", help="adaptation above the rest's")
    ap.add_argument("--ie-scales", default="1,1.75", help="L2/3i -> L2/3e factors")
    ap.add_argument("--skip-targets", action="store_true")
    ap.add_argument("--config", default="config/tasks/decision_hold.toml")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if not args.skip_targets:
        wong_wang_hold()
    a_steps = [float(x) for x in args.a_steps.split(",")]
    ie_scales = [float(x) for x in args.ie_scales.split(",")]
    print("One MT column, L2/3e -> L2/3e gated (tau_S 100 ms, gamma 0.641) and x scale,")
    print("L2/3i -> L2/3e x ie; rest = lowest steady state with a = kappa E; steady L2/3e")
    print("rates (Hz) with adaptation a = a_rest + da held fixed; * = stable\n")
    print("| ie | scale | rest | " + " | ".join(f"da = {x:g}" for x in a_steps) + " |")
    print("|---:|---:|---:|" + "---|" * len(a_steps))
    for ie in ie_scales:
        for s in (float(x) for x in args.scales.split(",")):
            col = Column(s, 1.0, ie)
            states = col.steady_states(a_steps)
            cells = [
                ", ".join(f"{r:.2f}{'*' if ok else ''}" for r, ok in states[x]) or "none"
                for x in a_steps
            ]
            print(f"| {ie:g} | {s:g} | {col.rest_hz:.3f} | " + " | ".join(cells) + " |")
    # the rule: smallest scale whose upper stable state reaches the persistent winner next to
    # a low rest
    print()
    for ie in ie_scales:
        grid = [3.0 * 1.25**k for k in range(8)]  # 3 .. 14.3
        first = next((g for g in grid if upper_stable(g, ie) >= PERSISTENT_WINNER_HZ), None)
        if first is None:
            print(
                f"L2/3i -> L2/3e x {ie:g}: no L2/3e -> L2/3e scale in 3-14 gives a stable "
                f"state >= {PERSISTENT_WINNER_HZ} Hz next to a rest below 1 Hz"
            )
            continue
        lo, hi = first / 1.25, first
        for _ in range(20):
            mid = math.sqrt(lo * hi)
            lo, hi = (mid, hi) if upper_stable(mid, ie) < PERSISTENT_WINNER_HZ else (lo, mid)
        col = Column(hi, 1.0, ie)
        states = col.steady_states(a_steps)
        print(
            f"Rule, L2/3i -> L2/3e x {ie:g}: smallest L2/3e -> L2/3e scale with a stable upper "
            f"state >= {PERSISTENT_WINNER_HZ} Hz next to a stable rest: {hi:.4f} (rest "
            f"{col.rest_hz:.4f} Hz)"
        )
        for x in a_steps:
            print(
                f"  da = {x:g}: "
                + ", ".join(f"{r:.3f}{' (stable)' if ok else ''}" for r, ok in states[x])
            )
    lateral_rule(args.config)
    input_rule(args.config)


if __name__ == "__main__":
    main()
