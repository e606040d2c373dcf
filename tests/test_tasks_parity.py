"""Parity task: all 2^n patterns, targets by parity, n_bits validation."""

import pytest
import torch

from colenv import Parity


@pytest.mark.parametrize("n_bits", [2, 4, 8])
def test_all_patterns_and_targets(n_bits):
    task = Parity(n_bits=n_bits)
    trial = task.sample_batch(conditions="all")
    bits = trial.conditions["bits"]
    assert bits.shape == (2**n_bits, n_bits)
    assert len({tuple(b) for b in bits.tolist()}) == 2**n_bits
    even = bits.sum(1) % 2 == 0
    assert torch.equal(trial.target[-1, :, 0], torch.where(even, 20.0, 0.0))
    assert torch.equal(trial.stimulus[-1], 15.0 * bits.float())
    assert torch.all(trial.stimulus[:500] == 0)
    assert trial.mask[:, 0, 0].sum() == 100 and trial.mask[899, 0, 0] == 0


def test_default_shapes():
    task = Parity()
    trial = task.sample_batch(32, seed=1)
    assert trial.stimulus.shape == (1000, 32, 4) and trial.target.shape == (1000, 32, 1)
    assert task.n_inputs == 4 and task.success_threshold == 1.0


@pytest.mark.parametrize("bad", [1, 9, 4.0, "4"])
def test_n_bits_outside_2_to_8_is_an_error(bad):
    with pytest.raises(ValueError, match="n_bits must be an int in 2..8"):
        Parity(n_bits=bad)


def test_evaluate():
    task = Parity(n_bits=3)
    trial = task.sample_batch(conditions="all")
    flipped = 20.0 - trial.target
    assert task.evaluate(trial.target, trial)["accuracy"] == 1.0
    assert task.evaluate(flipped, trial)["accuracy"] == 0.0


def test_evaluate_scores_the_window_mean():
    task = Parity(n_bits=3)
    trial = task.sample_batch(conditions="all")
    n = trial.n_steps
    sign = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)[:, None, None]
    assert task.evaluate(trial.target + 9.0 * sign, trial)["accuracy"] == 1.0  # mean exact
    assert task.evaluate(trial.target - 6.0, trial)["accuracy"] == 0.0  # steady offset
