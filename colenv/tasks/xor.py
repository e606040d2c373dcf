"""XOR: one output must report whether exactly one of two binary inputs is on.

## Description

Two inputs, each either off (0 Hz) or on (``input_hz``, 20 Hz), are presented
together after a silent pre-stimulus period. At the end of the stimulus the
single output must fire at ``target_hz`` (20 Hz) when exactly one input is on
and be silent (0 Hz) otherwise::

    target = target_hz * (b_1 XOR b_2),   b_i in {0, 1}

In the column network of the predecessor project, columns A
and B each receive one input on L4 and both feed column C, whose L2/3e rate is
the output; what is learned is the input weights and the A, B -> C feedforward
weights. All 4 patterns must be classified correctly.

## Timing (ms)

| period         | default | kwarg             | inputs             |
|----------------|---------|-------------------|--------------------|
| `pre_stimulus` | 500     | `pre_stimulus_ms` | 0 Hz               |
| `stimulus`     | 500     | `stimulus_ms`     | `input_hz * b_i`   |

The loss window (mask) is the last ``response_ms`` (100 ms) of the stimulus.

## Inputs (observation), shape [T, B, 2]

| index | meaning                  | values (Hz)       |
|-------|--------------------------|-------------------|
| 0     | input A, bit `b_1`        | 0 or `input_hz`   |
| 1     | input B, bit `b_2`        | 0 or `input_hz`   |

## Targets, shape [T, B, 1]

| index | meaning      | value (Hz)                                              |
|-------|--------------|---------------------------------------------------------|
| 0     | output rate  | `target_hz * (b_1 XOR b_2)` during the stimulus, 0 before |

Only the masked window counts; outside it the target is informative only.

## Conditions

``bits`` [B, 2] (int64, 0/1). ``conditions="all"``: the 4 patterns
(0,0), (0,1), (1,0), (1,1). Random trials draw each bit with probability 1/2.

## Success

A trial is correct when the output's mean over the masked window is within
5 Hz of the target (``|mean(output) - target| <= 5 Hz``: a noisy rate that
fluctuates around the target counts, a steady offset does not); solved when all
trials are correct (``success_threshold = 1.0``). With ``eval.noise_draws = K``
and ``solver.sde = true`` every pattern is scored on K noisy trials and all of
them must be correct.

## Gymnasium face

Observation: the two inputs (Hz) at the current step, ``Box(0, input_hz)``.
Action: the output rate divided by ``action_scale = 50 Hz``, ``Box(0, 1)``.
Reward: ``-mask * (50 * action - target)^2`` (Hz^2). One episode is one trial.

## Arguments

``gym.make("colenv/XOR-v0", dt_ms=1.0, pre_stimulus_ms=500.0, stimulus_ms=500.0,
response_ms=100.0, input_hz=20.0, target_hz=20.0)``

## Version History

* v0: initial version.
"""

from __future__ import annotations

from torch import Tensor

from colenv.tasks.binary import TOLERANCE_HZ, BinaryPatternTask

DEFAULTS = {
    "dt_ms": 1.0,
    "pre_stimulus_ms": 500.0,
    "stimulus_ms": 500.0,
    "response_ms": 100.0,
    "input_hz": 20.0,
    "target_hz": 20.0,
}
__all__ = ["DEFAULTS", "TOLERANCE_HZ", "XOR"]


class XOR(BinaryPatternTask):
    """Two binary inputs, one output: high iff exactly one input is on."""

    metadata = {
        "render_modes": [],
        "paper": "XOR benchmark for laminar column networks (predecessor project)",
        "tags": ["binary", "nonlinear", "classification", "columns"],
    }
    n_inputs = 2

    def __init__(
        self,
        *,
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
        super().__init__(
            n_bits=2,
            dt_ms=dt_ms,
            pre_stimulus_ms=pre_stimulus_ms,
            stimulus_ms=stimulus_ms,
            response_ms=response_ms,
            input_hz=input_hz,
            target_hz=target_hz,
            render_mode=render_mode,
        )

    def label(self, bits: Tensor) -> Tensor:
        """Exactly one input on."""
        return bits.sum(dim=1) == 1
