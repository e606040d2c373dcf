"""Decision: two columns follow the reduced Wong & Wang (2006) decision model.

## Description

Random-dot motion discrimination as modelled by K.-F. Wong and X.-J. Wang (2006),
"A recurrent network mechanism of time integration in perceptual decisions",
J. Neurosci. 26(4):1314-1328, reduced two-variable model (see
``colenv/reference/wong_wang.py`` for the equations and parameters). Two
selective pools receive stimulus rates that differ by the signed coherence c'::

    mu_1,2 = mu0 (1 +- c'/100),   mu0 = 30 Hz

and compete through NMDA self-excitation and mutual inhibition until one wins
(near 30 Hz) and the other is suppressed (near 1 Hz). Here two columns get the
two pools' inputs on L4, and their L2/3e rates must follow the two pools' rates
scaled into the column's rate range::

    target_i(t) = target_scale * r_i^WW(t)      (target_scale = 0.5: winner ~15 Hz)

What is learned: lateral inhibition between the columns and L2/3e
self-excitation. Coherences are drawn from (0, 3.2, 6.4, 12.8, 25.6, 51.2) %
(the paper's values) with a random sign: c' > 0 favours pool 1 (index 0).

The targets of a batch come from one batched ``simulate`` call. With
``noise=False`` (default) the Wong-Wang model is deterministic, so a trial's
target depends only on c' (at c' = 0 both pools rise together and there is no
winner): clean regression targets. With ``noise=True`` each trial gets its own
Ornstein-Uhlenbeck background noise (sigma = 0.02 nA, tau_AMPA = 2 ms) from the
trial's generator, so targets include errors and a psychometric curve; the same
seed still gives the same batch.

## Timing (ms)

| period          | default | kwarg              | inputs                     |
|-----------------|---------|--------------------|----------------------------|
| `pre_stimulus`  | 300     | `pre_stimulus_ms`  | 0 Hz (spontaneous state)   |
| `stimulus`      | 1000    | `stimulus_ms`      | `mu0 (1 +- c'/100)`        |
| `post_stimulus` | 200     | `post_stimulus_ms` | 0 Hz (the winner persists) |

The mask covers every step from stimulus onset to the end of the trial (both
outputs): the columns must integrate, decide and then hold the decision. The
pre-stimulus period lets a model settle from its initial state unscored.

## Inputs (observation), shape [T, B, 2]

| index | meaning                  | values (Hz)                       |
|-------|--------------------------|-----------------------------------|
| 0     | stimulus to pool 1       | `mu0 (1 + c'/100)` in the stimulus, else 0 |
| 1     | stimulus to pool 2       | `mu0 (1 - c'/100)` in the stimulus, else 0 |

## Targets, shape [T, B, 2]

| index | meaning                         | value (Hz)                   |
|-------|---------------------------------|------------------------------|
| 0     | L2/3e rate of column 1          | `target_scale * r_1^WW(t)`   |
| 1     | L2/3e rate of column 2          | `target_scale * r_2^WW(t)`   |

## Conditions

``coherence_pct`` [B] signed c' (%); ``choice`` [B] int64, the Wong-Wang winner
(0: pool 1, 1: pool 2, -1: no pool reached 15 Hz on a 50 ms running average);
``decision_time_ms`` [B] (from trial start; nan without a decision).
``conditions="all"``: the 11 signed coherences -51.2 .. 51.2 %.

## Success

The choice is read where Wong & Wang read it: during the stimulus (their model decides
when a pool crosses 15 Hz; in the reaction-time task the stimulus ends with the choice).
Over trials with c' != 0, a trial is correct when, averaged over the last 100 ms of the
stimulus, the output of the winner's column exceeds the other's by at least
``choice_margin_hz`` (default 5 Hz, about a third of the scaled targets' winner-loser
gap of ~14 Hz; without a margin an untrained network "chooses" by 0.0002 Hz). The winner
is the pool with the higher mean target in that window (it equals
``conditions["choice"]`` whenever the Wong-Wang model reached threshold). Solved at
``accuracy >= 0.95``. The choice is read from window-averaged rates, so it holds for a
noisy network (``solver.sde = true``) as it is: with ``eval.noise_draws = K`` each signed
coherence is answered by K noisy trials, each scored on its own, and ``accuracy`` is the
fraction of all those trials (c' != 0) that are correct: a network that picks the favoured
pool on 3 of 4 noisy trials at some coherence scores 0.75 there, as a psychophysicist would
score a subject (analysis/decision_psychometric.py draws its full psychometric curve).

``accuracy_min_coherence_pct`` (default 0: every c' != 0) restricts ``accuracy``,
``n_correct``, ``n_trials`` and ``hold_accuracy`` to trials with |c'| at or above it, and
``accuracy_all`` is always the accuracy over every c' != 0: the noisy variant scores its
choice where the science says a subject is reliable: Wong-Wang under noise is ~67 % correct
at 3.2 %, >= 0.97 from 12.8 % (config/tasks/decision_noisy.toml, docs/noise.md).

``hold_accuracy`` applies the same rule after the stimulus: whether the choice is still
held without input, as the Wong-Wang pools hold it through their NMDA self-excitation
(working memory). The last ``hold_window_ms`` of the trial (default 100 ms: 100-200 ms after
the stimulus by default) are cut into consecutive 100 ms windows, and a trial holds when the
winner's column leads by the margin in every one of them (``hold_window_ms =
post_stimulus_ms`` scores the whole post-stimulus period). The noise-free Wong-Wang targets
hold at every c' != 0 for >= 600 ms after a 1 s stimulus (winner ~10 Hz, loser < 0.5 Hz
after scaling; docs/decision.md). With the column equations alone (no gating synapse)
``hold_accuracy`` is reported, not reached: they have no persistent state at moderate rates
(``analysis/column_bistability.py``); ``config/tasks/decision_hold.toml`` holds with the slow
gating synapse (``network.gating``; docs/decision.md).

``rmse_hz`` is over the whole mask, the post-stimulus period included.
``stimulus_rmse_hz`` is over the stimulus period only and over the trials ``accuracy`` scores
(c' != 0, and |c'| >= ``accuracy_min_coherence_pct``; at c' = 0 the noise-free pools rise
together with no winner, which competing columns cannot follow): how well the winner's and the
loser's columns track the pools while they decide. (Under noise a network as noisy as Wong &
Wang's picks the other pool on a third of the 3.2 % trials, where the noise-free target is the
favoured pool's; restricting the coherences keeps those lapses out of a rate error.)
``hold_solved`` is 1.0 when ``accuracy`` and ``hold_accuracy`` are >= 0.95 and
``stimulus_rmse_hz <= stimulus_rmse_limit_hz`` (default 3 Hz), else 0.0: the criterion of the
holding Decision (``[success] metric = "hold_solved"``).

## Gymnasium face

Observation: the two stimulus rates (Hz), ``Box(0, 2 mu0)``. Action: the two
output rates divided by ``action_scale = 50 Hz``, ``Box(0, 1)``. Reward:
``-sum(mask * (50 * action - target)^2)`` (Hz^2). One episode is one trial.

## Arguments

``gym.make("colenv/Decision-v0", dt_ms=1.0, pre_stimulus_ms=300.0,
stimulus_ms=1000.0, post_stimulus_ms=200.0, coherences_pct=(0, 3.2, 6.4, 12.8,
25.6, 51.2), target_scale=0.5, noise=False, choice_margin_hz=5.0, hold_window_ms=100.0,
stimulus_rmse_limit_hz=3.0, accuracy_min_coherence_pct=0.0)``. Model parameters (mu0 = 30 Hz
etc.) are those of ``WongWangParams``.

## Version History

* v0: initial version.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from colenv.core import Trial, TrialTask, check_output
from colenv.reference.wong_wang import WongWangParams, decide, simulate, stimulus_hz

DEFAULTS = {
    "dt_ms": 1.0,
    "pre_stimulus_ms": 300.0,
    "stimulus_ms": 1000.0,
    "post_stimulus_ms": 200.0,
    "coherences_pct": (0.0, 3.2, 6.4, 12.8, 25.6, 51.2),
    "target_scale": 0.5,
    "noise": False,
    "choice_margin_hz": 5.0,
    "hold_window_ms": 100.0,
    "stimulus_rmse_limit_hz": 3.0,
    "accuracy_min_coherence_pct": 0.0,
}
DECISION_WINDOW_MS = 100.0
"""evaluate() compares the two columns' mean outputs over the last this many ms of the
stimulus (``accuracy``) and over each such window of the hold (``hold_accuracy``)."""


class Decision(TrialTask):
    """Two inputs, two outputs: follow the Wong-Wang (2006) pool rates, scaled."""

    metadata = {
        "render_modes": [],
        "paper": "Wong & Wang (2006), J Neurosci 26:1314",
        "tags": ["decision", "perceptual", "integration", "winner-take-all", "columns"],
    }
    n_inputs = 2
    n_outputs = 2
    success_threshold = 0.95
    action_scale = 50.0

    def __init__(
        self,
        *,
        dt_ms: float = DEFAULTS["dt_ms"],
        pre_stimulus_ms: float = DEFAULTS["pre_stimulus_ms"],
        stimulus_ms: float = DEFAULTS["stimulus_ms"],
        post_stimulus_ms: float = DEFAULTS["post_stimulus_ms"],
        coherences_pct: tuple[float, ...] = DEFAULTS["coherences_pct"],
        target_scale: float = DEFAULTS["target_scale"],
        noise: bool = DEFAULTS["noise"],
        choice_margin_hz: float = DEFAULTS["choice_margin_hz"],
        hold_window_ms: float = DEFAULTS["hold_window_ms"],
        stimulus_rmse_limit_hz: float = DEFAULTS["stimulus_rmse_limit_hz"],
        accuracy_min_coherence_pct: float = DEFAULTS["accuracy_min_coherence_pct"],
        render_mode: str | None = None,
        **unknown,
    ) -> None:
        self._reject_unknown(type(self), unknown)
        self.params = WongWangParams()
        coherences = tuple(float(c) for c in coherences_pct)
        if not coherences or not all(0.0 <= c <= 100.0 for c in coherences):
            raise ValueError(
                f"coherences_pct must be a non-empty sequence of values in [0, 100] %, "
                f"got {coherences_pct!r}"
            )
        if not isinstance(target_scale, int | float) or not 0 < target_scale <= 1:
            raise ValueError(f"target_scale must be in (0, 1], got {target_scale!r}")
        if not isinstance(noise, bool):
            raise ValueError(f"noise must be True or False, got {noise!r}")
        if not isinstance(choice_margin_hz, int | float) or not choice_margin_hz >= 0:
            raise ValueError(f"choice_margin_hz must be a number >= 0, got {choice_margin_hz!r}")
        if not isinstance(stimulus_rmse_limit_hz, int | float) or not stimulus_rmse_limit_hz > 0:
            raise ValueError(
                f"stimulus_rmse_limit_hz must be a number > 0, got {stimulus_rmse_limit_hz!r}"
            )
        if not _is_number(accuracy_min_coherence_pct) or not accuracy_min_coherence_pct >= 0:
            raise ValueError(
                f"accuracy_min_coherence_pct must be a number >= 0 (%), "
                f"got {accuracy_min_coherence_pct!r}"
            )
        self.accuracy_min_coherence_pct = float(accuracy_min_coherence_pct)
        self.choice_margin_hz = float(choice_margin_hz)
        self.stimulus_rmse_limit_hz = float(stimulus_rmse_limit_hz)
        self.coherences_pct = coherences
        self.target_scale = float(target_scale)
        self.noise = noise
        self.observation_bounds = (0.0, 2.0 * self.params.mu0_hz)
        super().__init__(
            dt_ms=dt_ms,
            periods_ms={
                "pre_stimulus": pre_stimulus_ms,
                "stimulus": stimulus_ms,
                "post_stimulus": post_stimulus_ms,
            },
            render_mode=render_mode,
        )
        n_windows = hold_window_ms / DECISION_WINDOW_MS if _is_number(hold_window_ms) else 0.0
        longest = max(DECISION_WINDOW_MS, self.periods_ms["post_stimulus"])
        if not (
            n_windows >= 1
            and abs(n_windows - round(n_windows)) < 1e-9
            and hold_window_ms <= longest
        ):
            raise ValueError(
                f"hold_window_ms must be a multiple of {DECISION_WINDOW_MS:g} ms (the choice "
                f"window) from {DECISION_WINDOW_MS:g} ms up to max({DECISION_WINDOW_MS:g} ms, "
                f"post_stimulus_ms) = {longest:g} ms, got {hold_window_ms!r}"
            )
        self.hold_window_ms = float(hold_window_ms)
        window = DECISION_WINDOW_MS / self.dt_ms
        self.decision_window_steps = max(1, min(round(window), self.n_steps))

    def _draw_conditions(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        levels = torch.tensor(self.coherences_pct, dtype=torch.float64)
        index = torch.randint(0, len(levels), (batch_size,), generator=generator)
        sign = torch.randint(0, 2, (batch_size,), generator=generator) * 2 - 1
        coherence = levels[index] * sign
        return {"coherence_pct": torch.where(coherence == 0, 0.0, coherence)}

    def condition_grid(self) -> dict[str, Tensor]:
        levels = sorted(set(self.coherences_pct))
        signed = sorted({-c for c in levels if c > 0} | set(levels))
        return {"coherence_pct": torch.tensor(signed, dtype=torch.float64)}

    def _check_conditions(self, conditions: dict[str, Tensor]) -> None:
        c = conditions["coherence_pct"]
        if c.ndim != 1 or not bool((c.abs() <= 100).all()):
            raise ValueError(
                f"conditions['coherence_pct'] must be [B] values in [-100, 100], got {c.tolist()}"
            )

    def _build(self, conditions, generator):
        coherence = conditions["coherence_pct"].to(torch.float64)  # [B]
        batch = coherence.shape[0]
        stimulus = torch.zeros(self.n_steps, batch, 2, dtype=torch.float64)
        stimulus[self.period("stimulus")] = stimulus_hz(coherence, self.params.mu0_hz)

        result = simulate(
            stimulus, self.dt_ms, params=self.params, noise=self.noise, generator=generator
        )
        choice, decision_time_ms = decide(result.rates_hz, self.dt_ms)
        target = self.target_scale * result.rates_hz
        mask = torch.zeros(self.n_steps, batch, 2, dtype=torch.bool)
        mask[self.period("stimulus").start :] = True
        extra = {"choice": choice, "decision_time_ms": decision_time_ms}
        return stimulus, target, mask, extra

    def evaluate(self, output: Tensor, trial: Trial) -> dict[str, float]:
        """Choice accuracy at the end of the stimulus, the hold after it, RMSE over the mask
        and over the stimulus, and ``hold_solved``. See the module doc."""
        check_output(output, trial)
        output = output.detach()  # metrics, not part of any graph
        target = trial.target.to(device=output.device, dtype=output.dtype)
        mask = trial.mask.to(output.device)
        coherence = trial.conditions["coherence_pct"].to(output.device)
        decided = coherence != 0
        scored = decided & (coherence.abs() >= self.accuracy_min_coherence_pct - 1e-9)
        n_scored = int(scored.sum())
        windows = self.choice_windows(trial.n_steps)
        correct = self._correct(output, target, windows["stimulus end"])
        n_correct = int((correct & scored).sum())
        n_decided = int(decided.sum())
        held = scored.clone()
        for window in self.hold_windows(trial.n_steps):
            held &= self._correct(output, target, window)
        n_held = int(held.sum())
        error2 = ((output - target) ** 2)[mask]
        stimulus = self.period("stimulus")
        stim_error2 = ((output[stimulus] - target[stimulus]) ** 2)[:, scored]
        accuracy = n_correct / n_scored if n_scored else math.nan
        hold_accuracy = n_held / n_scored if n_scored else math.nan
        stimulus_rmse = float(torch.sqrt(stim_error2.mean())) if stim_error2.numel() else math.nan
        solved = (
            accuracy >= self.success_threshold
            and hold_accuracy >= self.success_threshold
            and stimulus_rmse <= self.stimulus_rmse_limit_hz
        )  # False whenever one of them is nan (no scored trial)
        return {
            "accuracy": accuracy,
            "n_correct": n_correct,
            "n_trials": n_scored,
            "accuracy_all": int((correct & decided).sum()) / n_decided if n_decided else math.nan,
            "hold_accuracy": hold_accuracy,
            "rmse_hz": float(torch.sqrt(error2.mean())) if error2.numel() else 0.0,
            "stimulus_rmse_hz": stimulus_rmse,
            "hold_solved": float(solved),
        }

    def choice_windows(self, n_steps: int | None = None) -> dict[str, slice]:
        """The steps a choice is read from: the last ``decision_window_steps`` of the stimulus
        (``accuracy``) and of a trial of ``n_steps`` (default: this task's; the last of the
        ``hold_windows``)."""
        n = self.n_steps if n_steps is None else n_steps
        end = self.period("stimulus").stop
        w = self.decision_window_steps
        return {"stimulus end": slice(max(end - w, 0), end), "hold": slice(max(n - w, 0), n)}

    def hold_windows(self, n_steps: int | None = None) -> list[slice]:
        """The consecutive choice windows that tile the last ``hold_window_ms`` of a trial of
        ``n_steps`` (default: this task's), in time order: ``hold_accuracy`` needs the choice
        in every one of them."""
        n = self.n_steps if n_steps is None else n_steps
        w = self.decision_window_steps
        k = round(self.hold_window_ms / DECISION_WINDOW_MS)
        return [slice(max(n - j * w, 0), max(n - (j - 1) * w, 0)) for j in range(k, 0, -1)]

    def choice_gap(self, output: Tensor, target: Tensor, window: slice) -> Tensor:
        """[B] mean output of the winner's column minus the other's over ``window`` (Hz); the
        winner is the pool with the higher mean target there."""
        winner = target[window].mean(dim=0).argmax(dim=-1)  # [B]
        mean_out = output[window].mean(dim=0)  # [B, 2]
        return (
            mean_out.gather(1, winner[:, None])[:, 0]
            - mean_out.gather(1, 1 - winner[:, None])[:, 0]
        )

    def _correct(self, output: Tensor, target: Tensor, window: slice) -> Tensor:
        """[B] bool: over ``window`` the winner's column leads by at least the margin."""
        gap = self.choice_gap(output, target, window)
        return (gap > 0) & (gap >= self.choice_margin_hz)

    def plot(
        self,
        outputs: dict[str, Tensor],
        trial: Trial,
        path: Path,
        title: str,
        *,
        unit_names: Sequence[str] | None = None,
    ) -> list[Path]:
        """``outputs.png``: both outputs against the Wong-Wang pools' (scaled) rates per
        coherence. ``psychometric.png``: the choice of pool 1 and the pool 1 - pool 2 rate gap
        against signed coherence, network and Wong-Wang reference side by side, read where
        ``accuracy`` (end of the stimulus) and ``hold_accuracy`` (end of the trial) read them.
        ``populations.png`` (models with rates): the trial of the strongest coherence for
        pool 1, one panel per column (winner and loser apart, never averaged)."""
        from colenv.tasks.plotting import plot_outputs, plot_unit_rates

        path = Path(path)
        output = outputs["output"]
        coherence = trial.conditions["coherence_pct"]
        windows = self.choice_windows(trial.n_steps)
        stim_end = windows["stimulus end"]
        net_mean = output[stim_end].mean(dim=0)  # [B, 2]
        ww_winner = trial.target[stim_end].mean(dim=0).argmax(dim=-1)  # [B] 0: pool 1

        def label(b: int) -> str:
            gap = float(net_mean[b, 0] - net_mean[b, 1])
            net = "none" if abs(gap) < self.choice_margin_hz else ("1" if gap > 0 else "2")
            return f"c' = {float(coherence[b]):g} %: WW pool {int(ww_winner[b]) + 1}, net {net}"

        paths = [
            plot_outputs(
                output,
                trial,
                path / "outputs.png",
                f"{title}; targets: Wong-Wang pools x {self.target_scale:g}",
                label=label,
                output_names=("pool 1", "pool 2"),
            ),
            self._plot_psychometric(output, trial, windows, path / "psychometric.png", title),
        ]
        if "rates" in outputs:
            b = int(torch.argmax(coherence))
            winner = int(ww_winner[b])
            last_area = _last_area_columns(unit_names)
            group_titles = {
                column: f"output {o + 1} (pool {o + 1}), {'winner' if o == winner else 'loser'}"
                for o, column in enumerate(last_area)
            }
            paths.append(
                plot_unit_rates(
                    outputs["rates"],
                    trial,
                    b,
                    path / "populations.png",
                    f"{title}: rates at c' = {float(coherence[b]):g} % "
                    f"(Wong-Wang winner: pool {winner + 1})",
                    unit_names=unit_names,
                    group_titles=group_titles,
                )
            )
        return paths

    def _plot_psychometric(self, output, trial, windows, path: Path, title: str) -> Path:
        from colenv.tasks.plotting import figure, save

        coherence = trial.conditions["coherence_pct"]
        order = torch.argsort(coherence)
        c = coherence[order].numpy()
        target = trial.target
        fig = figure(8.5, 3.4)
        ax_choice, ax_gap = fig.subplots(1, 2)

        def pool1_gap(x: Tensor, window: slice) -> Tensor:  # [B] mean pool 1 - pool 2, Hz
            mean = x[window].mean(dim=0)
            return (mean[:, 0] - mean[:, 1])[order]

        def choice(gap: Tensor) -> Tensor:  # 1 pool 1, 0 pool 2, 0.5 no choice (|gap| < margin)
            chose1 = (gap >= self.choice_margin_hz).double()
            return chose1 + 0.5 * (gap.abs() < self.choice_margin_hz).double()

        ww = pool1_gap(target, windows["stimulus end"])
        reference = {"ms": 9, "mfc": "none", "mew": 1.5, "color": "black", "zorder": 3}
        ax_choice.plot(c, choice(ww).numpy(), "s--", label="Wong-Wang", **reference)
        ax_gap.plot(c, ww.numpy(), "s--", label="Wong-Wang", **reference)
        styles = {"stimulus end": ("o-", "tab:blue"), "hold": ("^:", "tab:orange")}
        for name, window in windows.items():
            style, color = styles[name]
            gap = pool1_gap(output, window)
            where = "end of stimulus" if name == "stimulus end" else "end of trial (hold)"
            kw = {"color": color, "ms": 5, "zorder": 4, "label": f"network, {where}"}
            ax_choice.plot(c, choice(gap).numpy(), style, **kw)
            ax_gap.plot(c, gap.numpy(), style, **kw)
        ax_gap.axhspan(-self.choice_margin_hz, self.choice_margin_hz, color="0.9", zorder=0)
        for ax in (ax_choice, ax_gap):
            ax.set_xscale("symlog", linthresh=1.0)
            ax.set_xlabel("signed coherence c' (%)")
            ax.tick_params(labelsize=7)
        ax_choice.set_ylabel("choice (1 pool 1, 0.5 none, 0 pool 2)")
        ax_choice.set_ylim(-0.08, 1.08)
        ax_gap.set_ylabel("pool 1 - pool 2 output (Hz)")
        ax_gap.set_title(f"grey: |gap| < {self.choice_margin_hz:g} Hz (no choice)", fontsize=8)
        ax_choice.legend(fontsize=7)
        fig.suptitle(f"{title}: psychometric curve, network vs Wong & Wang (2006)", fontsize=9)
        return save(fig, path)


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _last_area_columns(unit_names: Sequence[str] | None) -> list[str]:
    """The columns ("area[col]") of the last area named in ``unit_names``, in order: the
    column network reads its outputs from them."""
    if not unit_names:
        return []
    columns = list(dict.fromkeys(name.rsplit(".", 1)[0] for name in unit_names if "." in name))
    if not columns:
        return []
    last = columns[-1].split("[")[0]
    return [col for col in columns if col.split("[")[0] == last]
