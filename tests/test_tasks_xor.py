"""XOR task: stimuli, targets, mask window and evaluate."""

import pytest
import torch

from colenv import XOR


def test_all_patterns_targets_and_mask():
    task = XOR()
    trial = task.sample_batch(conditions="all")
    assert trial.conditions["bits"].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert trial.stimulus.shape == (1000, 4, 2) and trial.target.shape == (1000, 4, 1)
    assert torch.all(trial.stimulus[:500] == 0)
    assert torch.equal(trial.stimulus[700], 20.0 * trial.conditions["bits"].float())
    assert trial.target[-1, :, 0].tolist() == [0.0, 20.0, 20.0, 0.0]
    masked_steps = trial.mask[:, 0, 0].nonzero()[:, 0]
    assert masked_steps.tolist() == list(range(900, 1000))  # last 100 ms of the stimulus


def test_random_draws_cover_patterns():
    bits = XOR().sample_batch(256, seed=0).conditions["bits"]
    assert bits.shape == (256, 2) and set(bits.unique().tolist()) == {0, 1}
    assert len({tuple(b) for b in bits.tolist()}) == 4


def test_evaluate_counts_trials_within_5_hz():
    task = XOR()
    trial = task.sample_batch(conditions="all")
    assert task.evaluate(trial.target.clone(), trial)["accuracy"] == 1.0
    output = trial.target + 4.0
    output[-1, 1, 0] = trial.target[-1, 1, 0] + 6.0  # one step out of tolerance
    result = task.evaluate(output, trial)
    assert result["n_correct"] == 3 and result["n_trials"] == 4 and result["accuracy"] == 0.75
    assert result["rmse_hz"] == pytest.approx(4.0, abs=0.05)
    with pytest.raises(ValueError, match="shape"):
        task.evaluate(output[:, :2], trial)


def test_kwargs_validation():
    with pytest.raises(ValueError, match="response_ms"):
        XOR(response_ms=600)
    with pytest.raises(ValueError, match="input_hz"):
        XOR(input_hz=-1)
