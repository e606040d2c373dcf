"""Parity: one output must report whether an even number of binary inputs is on.

## Description

``n_bits`` inputs (default 4), each off (0 Hz) or on (``input_hz``, 15 Hz), are
presented together after a silent pre-stimulus period. At the end of the
stimulus the single output must fire at ``target_hz`` (20 Hz) when the number of
active inputs is even (including none) and be silent (0 Hz) when it is odd::

    target = target_hz * [ (b_1 + ... + b_n) mod 2 == 0 ],   b_i in {0, 1}

In the predecessor project the inputs feed a chain of
areas of 8, 4 and 1 columns; what is learned is the feedforward weights between
areas and the lateral inhibition within areas. All 2^n patterns must be
classified correctly (the predecessor trained only 4 of the 16).

## Timing (ms)

| period         | default | kwarg             | inputs             |
|----------------|---------|-------------------|--------------------|
| `pre_stimulus` | 500     | `pre_stimulus_ms` | 0 Hz               |
| `stimulus`     | 500     | `stimulus_ms`     | `input_hz * b_i`   |

The loss window (mask) is the last ``response_ms`` (100 ms) of the stimulus.

## Inputs (observation), shape [T, B, n_bits]

| index | meaning       | values (Hz)      |
|-------|---------------|------------------|
| i     | bit `b_(i+1)` | 0 or `input_hz`  |

## Targets, shape [T, B, 1]

| index | meaning     | value (Hz)                                                     |
|-------|-------------|----------------------------------------------------------------|
| 0     | output rate | `target_hz` if sum(b) is even else 0, during the stimulus; 0 before |

Only the masked window counts; outside it the target is informative only.

## Conditions

``bits`` [B, n_bits] (int64, 0/1). ``conditions="all"``: all 2^n_bits patterns in
binary counting order (pattern j has bit i = (j >> (n-1-i)) & 1). Random trials
draw each bit with probability 1/2.

## Success

A trial is correct when the output's mean over the masked window is within
5 Hz of the target (``|mean(output) - target| <= 5 Hz``: a noisy rate that
fluctuates around the target counts, a steady offset does not); solved when all
trials are correct (``success_threshold = 1.0``). With ``eval.noise_draws = K``
and ``solver.sde = true`` every pattern is scored on K noisy trials and all of
them must be correct.

``report_accuracy`` (reported next to ``accuracy``; ``success.metric = "report_accuracy"``
makes it the criterion, as config/tasks/parity_noisy.toml does) scores what a single noisy
trial and the trial average can each be asked for: a trial is correct when its window mean is
on the correct side of ``target_hz / 2`` (the answer it reports: even or odd) *and* the
average of the window means of all trials of its pattern (the noise draws) is within 5 Hz of
the target (the rate code, as without noise). With one trial per pattern (a noise-free
evaluation) it equals ``accuracy`` whenever the 5 Hz band lies on one side of the threshold
(``target_hz > 10``, the default 20 included). Under noise it does not ask a single 100 ms
window of a fluctuating rate to land within 5 Hz of the target (docs/noise.md, Parity).

## Gymnasium face

Observation: the inputs (Hz) at the current step, ``Box(0, input_hz)``.
Action: the output rate divided by ``action_scale = 50 Hz``, ``Box(0, 1)``.
Reward: ``-mask * (50 * action - target)^2`` (Hz^2). One episode is one trial.

## Arguments

``gym.make("colenv/Parity-v0", n_bits=4, dt_ms=1.0, pre_stimulus_ms=500.0,
stimulus_ms=500.0, response_ms=100.0, input_hz=15.0, target_hz=20.0)``;
``n_bits`` must be an int in 2..8.

## Version History

* v0: initial version.
"""

from __future__ import annotations

import torch
from torch import Tensor

from colenv.core import Trial, window_means
from colenv.tasks.binary import TOLERANCE_HZ, BinaryPatternTask

DEFAULTS = {
    "n_bits": 4,
    "dt_ms": 1.0,
    "pre_stimulus_ms": 500.0,
    "stimulus_ms": 500.0,
    "response_ms": 100.0,
    "input_hz": 15.0,
    "target_hz": 20.0,
}
N_BITS_ALLOWED = range(2, 9)
__all__ = ["DEFAULTS", "N_BITS_ALLOWED", "TOLERANCE_HZ", "Parity", "report_correct"]


class Parity(BinaryPatternTask):
    """n binary inputs, one output: high iff an even number of inputs is on."""

    metadata = {
        "render_modes": [],
        "paper": "Parity benchmark for laminar column networks (predecessor project)",
        "tags": ["binary", "nonlinear", "classification", "columns", "hierarchy"],
    }

    def __init__(
        self,
        *,
        n_bits: int = DEFAULTS["n_bits"],
        dt_ms: float = DEFAULTS["dt_ms"],
        pre_stimulus_ms: float = DEFAULTS["pre_stimulus_ms"],
        stimulus_ms: float = DEFAULTS["stimulus_ms"],
        response_ms: float = DEFAULTS["response_ms"],
        input_hz: float = DEFAULTS["input_hz"],
        target_hz: float = DEFAULTS["target_hz"],
        render_mode: str | None = None,
        **unknown,
    ) -> None:
        self._reject_unknown(type(self), unknown)
        if isinstance(n_bits, bool) or not isinstance(n_bits, int) or n_bits not in N_BITS_ALLOWED:
            raise ValueError(f"n_bits must be an int in 2..8, got {n_bits!r}")
        super().__init__(
            n_bits=n_bits,
            dt_ms=dt_ms,
            pre_stimulus_ms=pre_stimulus_ms,
            stimulus_ms=stimulus_ms,
            response_ms=response_ms,
            input_hz=input_hz,
            target_hz=target_hz,
            render_mode=render_mode,
        )

    def label(self, bits: Tensor) -> Tensor:
        """An even number of inputs on (none included)."""
        return bits.sum(dim=1) % 2 == 0

    def evaluate(self, output: Tensor, trial: Trial) -> dict[str, float]:
        """The window-mean metrics of :class:`BinaryPatternTask` and ``report_accuracy`` (see
        the module doc): each trial on the correct side of ``target_hz / 2`` and its pattern's
        trials, averaged, within 5 Hz of the target."""
        metrics = super().evaluate(output, trial)
        metrics["report_accuracy"] = float(
            report_correct(output, trial, self.target_hz).double().mean()
        )
        return metrics


def report_correct(output: Tensor, trial: Trial, target_hz: float) -> Tensor:
    """[B] bool: trial b's window mean is on the correct side of ``target_hz / 2`` and the mean
    of the window means of every trial with b's bit pattern is within ``TOLERANCE_HZ`` of the
    target. Trials are grouped by ``trial.conditions["bits"]`` (the noise draws of a pattern
    are the trials that share its bits)."""
    out_mean, target_mean, _ = window_means(output, trial)  # [B, 1]
    out_mean, target_mean = out_mean[:, 0], target_mean[:, 0]
    threshold = target_hz / 2.0
    side = (out_mean > threshold) == (target_mean > threshold)
    bits = trial.conditions["bits"].to(out_mean.device)
    _, pattern = torch.unique(bits, dim=0, return_inverse=True)  # [B] pattern index
    n = int(pattern.max()) + 1
    total = torch.zeros(n, dtype=out_mean.dtype, device=out_mean.device)
    count = torch.zeros_like(total)
    total.index_add_(0, pattern, out_mean)
    count.index_add_(0, pattern, torch.ones_like(out_mean))
    average = (total / count)[pattern]
    band = (average - target_mean).abs() <= TOLERANCE_HZ
    return side & band
