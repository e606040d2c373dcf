"""What XOR and Parity share: binary inputs held through a stimulus, one output scored at
the end of it.

Timing: ``pre_stimulus`` (inputs off) then ``stimulus`` (each bit 0 Hz or ``input_hz``);
the target is ``target_hz`` times the task's label (its ``label(bits)``, 0 or 1) during the
stimulus and 0 before; the mask is the last ``response_ms`` of the stimulus. A trial is
correct when the output's mean over the mask (the window-averaged rate) is within 5 Hz of
the target; averaging over the window lets a noisy network that does the task (solver.sde
= true) count as doing it. With ``eval.noise_draws = K`` the trainer scores K noisy trials
per pattern and ``accuracy`` is the fraction of all of them that are correct. The tasks'
own docstrings (colenv/tasks/xor.py, parity.py) are the spec; this is the shared mechanism.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from colenv.core import Trial, TrialTask, steps_in, window_accuracy, window_means

TOLERANCE_HZ = 5.0
"""A trial is correct when the output's mean over the mask is within this of the target."""


class BinaryPatternTask(TrialTask):
    """Base of the binary-pattern tasks: subclasses set the metadata and ``label``."""

    n_outputs = 1
    success_threshold = 1.0
    action_scale = 50.0

    def __init__(
        self,
        *,
        n_bits: int,
        dt_ms: float,
        pre_stimulus_ms: float,
        stimulus_ms: float,
        response_ms: float,
        input_hz: float,
        target_hz: float,
        render_mode: str | None,
    ) -> None:
        for name, value in (("input_hz", input_hz), ("target_hz", target_hz)):
            if not isinstance(value, int | float) or not 0 < value <= self.action_scale:
                raise ValueError(f"{name} must be in (0, {self.action_scale}] Hz, got {value!r}")
        self.n_bits = n_bits
        self.n_inputs = n_bits
        self.input_hz = float(input_hz)
        self.target_hz = float(target_hz)
        self.observation_bounds = (0.0, self.input_hz)
        super().__init__(
            dt_ms=dt_ms,
            periods_ms={"pre_stimulus": pre_stimulus_ms, "stimulus": stimulus_ms},
            render_mode=render_mode,
        )
        self.response_steps = steps_in(response_ms, self.dt_ms, "response_ms")
        if response_ms > stimulus_ms:
            raise ValueError(
                f"response_ms={response_ms} must be <= stimulus_ms={stimulus_ms} "
                "(the loss window lies at the end of the stimulus)"
            )
        self.response_ms = float(response_ms)

    def label(self, bits: Tensor) -> Tensor:
        """[B] 1.0 where the pattern bits [B, n] should give a high output, else 0.0."""
        raise NotImplementedError

    def _draw_conditions(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        return {"bits": torch.randint(0, 2, (batch_size, self.n_bits), generator=generator)}

    def condition_grid(self) -> dict[str, Tensor]:
        """All 2^n patterns, in binary counting order (first bit most significant)."""
        j = torch.arange(2**self.n_bits)[:, None]
        shifts = torch.arange(self.n_bits - 1, -1, -1)
        return {"bits": (j >> shifts) & 1}

    def _check_conditions(self, conditions: dict[str, Tensor]) -> None:
        bits = conditions["bits"]
        if not bool(((bits == 0) | (bits == 1)).all()):
            raise ValueError(f"conditions['bits'] must be 0 or 1, got {bits.tolist()}")

    def _build(self, conditions, generator):
        bits = conditions["bits"].to(torch.float64)  # [B, n]
        batch = bits.shape[0]
        stim = self.period("stimulus")
        label = self.label(conditions["bits"]).to(torch.float64)  # [B]

        stimulus = torch.zeros(self.n_steps, batch, self.n_bits, dtype=torch.float64)
        stimulus[stim] = self.input_hz * bits
        target = torch.zeros(self.n_steps, batch, 1, dtype=torch.float64)
        target[stim] = self.target_hz * label[:, None]
        mask = torch.zeros(self.n_steps, batch, 1, dtype=torch.bool)
        mask[stim.stop - self.response_steps : stim.stop] = True
        return stimulus, target, mask, {}

    def evaluate(self, output: Tensor, trial: Trial) -> dict[str, float]:
        """Correct when ``|mean of the output over the mask - target| <= 5 Hz``; see the module
        doc and :func:`colenv.core.window_accuracy`."""
        return window_accuracy(output, trial, TOLERANCE_HZ)

    def plot(
        self,
        outputs: dict[str, Tensor],
        trial: Trial,
        path: Path,
        title: str,
        *,
        unit_names: Sequence[str] | None = None,
    ) -> list[Path]:
        """``outputs.png``: the output for each pattern against its target, with the 5 Hz band
        over the loss window and whether the pattern counts as correct (its window mean within
        the band); ``populations.png``
        (models with rates): the units of the first pattern that must answer high."""
        from colenv.tasks.plotting import first_where, plot_outputs, plot_unit_rates

        path = Path(path)
        output = outputs["output"]
        bits = trial.conditions["bits"]
        out_mean, target_mean, scored = window_means(output, trial)
        ok = torch.where(scored, (out_mean - target_mean).abs() <= TOLERANCE_HZ, True).all(dim=1)

        def label(b: int) -> str:
            pattern = "".join(str(int(x)) for x in bits[b])
            target = float(trial.target[:, b].max())
            return f"bits {pattern} -> {target:g} Hz: {'correct' if ok[b] else 'wrong'}"

        paths = [
            plot_outputs(
                output,
                trial,
                path / "outputs.png",
                f"{title}, {int(ok.sum())}/{trial.batch_size} correct",
                label=label,
                tolerance=TOLERANCE_HZ,
            )
        ]
        if "rates" in outputs:
            b = first_where(self.label(bits).bool())
            pattern = "".join(str(int(x)) for x in bits[b])
            paths.append(
                plot_unit_rates(
                    outputs["rates"],
                    trial,
                    b,
                    path / "populations.png",
                    f"{title}: rates for bits {pattern} (target {self.target_hz:g} Hz)",
                    unit_names=unit_names,
                )
            )
        return paths
