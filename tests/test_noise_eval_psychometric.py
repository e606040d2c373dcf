"""analysis/decision_psychometric.py: choices and decision times read as Wong & Wang read
their pools, the Weibull and chronometric fits, on traces whose answers are known."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from colenv import Decision

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def psy():
    spec = importlib.util.spec_from_file_location(
        "decision_psychometric", ROOT / "analysis" / "decision_psychometric.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_trials_are_half_for_each_pool_at_every_coherence(psy):
    c = psy.trial_coherences(4)
    assert c.tolist() == [v for level in psy.COHERENCES_PCT for v in (level, level, -level, -level)]


def test_choice_is_the_first_pool_whose_50_ms_average_crosses(psy):
    task = Decision(pre_stimulus_ms=100, stimulus_ms=400, post_stimulus_ms=100)
    t = torch.arange(task.n_steps, dtype=torch.float64)
    rates = torch.zeros(task.n_steps, 3, 2, dtype=torch.float64)
    onset = task.period("stimulus").start
    # trial 0: pool 2 jumps to 20 Hz 100 ms after onset; its 50-sample mean reaches 7.5 Hz
    # after 19 samples (19 * 20 / 50 = 7.6): decision at 118 ms
    rates[onset + 100 :, 0, 1] = 20.0
    # trial 1: pool 1 jumps at 50 ms but pool 2 was at 6 Hz all along: pool 1 still first
    rates[onset + 50 :, 1, 0] = 20.0
    rates[:, 1, 1] = 6.0
    # trial 2: no crossing; pool 1 higher at the end of the stimulus
    rates[:, 2, 0] = 5.0 + 0.0 * t
    rates[:, 2, 1] = 4.0
    choice, t_ms, decided = psy.read_choices(rates, task, 7.5)
    assert choice.tolist() == [1, 0, 0] and decided.tolist() == [True, True, False]
    assert t_ms[0].item() == 118.0 and t_ms[1].item() == 68.0 and math.isnan(t_ms[2].item())


def test_summary_fits_the_curve_it_was_given(psy):
    levels = psy.COHERENCES_PCT
    alpha, beta, n = 8.0, 1.5, 2000
    coherence, choice = [], []
    for c in levels:
        p = 1 - 0.5 * math.exp(-((c / alpha) ** beta))
        k = round(p * n)
        coherence += [c] * n
        choice += [0] * k + [1] * (n - k)  # c' > 0: pool 1 (0) is correct
    coherence = torch.tensor(coherence, dtype=torch.float64)
    choice = torch.tensor(choice)
    rt = torch.tensor(
        [float(psy.chronometric(c, 20.0, 15.0, 150.0)) for c in coherence.tolist()],
        dtype=torch.float64,
    )
    result = psy.summarize("exact", coherence, choice, rt, torch.ones_like(choice, dtype=bool))
    assert result["alpha"] == pytest.approx(alpha, rel=0.02)
    assert result["beta"] == pytest.approx(beta, rel=0.05)
    a, k, t0 = result["chrono"]
    assert (a, k, t0) == pytest.approx((20.0, 15.0, 150.0), rel=0.02)
    assert [r["undecided"] for r in result["rows"]] == [0] * len(levels)
    assert "| 51.2 |" in psy.table([result])


def test_chronometric_at_zero_coherence_is_its_limit(psy):
    near = psy.chronometric(np.array([1e-7]), 20.0, 15.0, 150.0)[0]
    assert psy.chronometric(np.array([0.0]), 20.0, 15.0, 150.0)[0] == pytest.approx(near)
    assert near == pytest.approx(20.0**2 + 150.0, rel=1e-6)


def test_reference_trials_are_reproducible(psy):
    task = Decision(pre_stimulus_ms=50, stimulus_ms=200, post_stimulus_ms=50)
    c = psy.trial_coherences(2)
    a, b = psy.run_reference(task, c, 3), psy.run_reference(task, c, 3)
    assert torch.equal(a, b) and not torch.equal(a, psy.run_reference(task, c, 4))
