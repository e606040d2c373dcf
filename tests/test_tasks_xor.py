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


def test_evaluate_scores_the_window_mean_within_5_hz():
    task = XOR()
    trial = task.sample_batch(conditions="all")
    assert task.evaluate(trial.target.clone(), trial)["accuracy"] == 1.0
    output = trial.target + 4.0
    output[-1, 1, 0] = trial.target[-1, 1, 0] + 6.0  # one sample out of 5 Hz: mean still in
    result = task.evaluate(output, trial)
    assert result["accuracy"] == 1.0 and result["n_trials"] == 4
    assert result["rmse_hz"] == pytest.approx(4.0, abs=0.05)
    with pytest.raises(ValueError, match="shape"):
        task.evaluate(output[:, :2], trial)


def test_a_trace_wiggling_8_hz_around_the_target_is_correct_a_6_hz_offset_is_not():
    task = XOR()
    trial = task.sample_batch(conditions="all")
    t = torch.arange(trial.n_steps, dtype=torch.float32)[:, None, None]
    wiggle = 8.0 * torch.sin(2 * torch.pi * t / 20.0)  # 50 Hz, 5 whole periods in the window
    noisy = task.evaluate(trial.target + wiggle, trial)
    assert noisy["accuracy"] == 1.0 and noisy["window_error_hz"] < 0.01
    assert noisy["rmse_hz"] == pytest.approx(8.0 / 2**0.5, rel=0.01)  # sample by sample: large
    offset = trial.target.clone()
    offset[:, 2] += 6.0  # pattern (1, 0) steadily 6 Hz too high
    result = task.evaluate(offset, trial)
    assert result["accuracy"] == 0.75 and result["n_correct"] == 3
    assert result["window_error_hz"] == pytest.approx(3.0, abs=1e-4)  # sqrt(36 / 4)
    below = task.evaluate(trial.target + 4.9, trial)  # just inside, on every pattern
    assert below["accuracy"] == 1.0


def test_only_the_masked_window_counts():
    task = XOR()
    trial = task.sample_batch(conditions="all")
    output = trial.target.clone()
    output[:899] += 30.0  # way off before the window (ends at step 899)
    assert task.evaluate(output, trial)["accuracy"] == 1.0
    output[899:] += 10.0  # the last 100 steps shifted by 10 Hz
    assert task.evaluate(output, trial)["accuracy"] == 0.0


def test_kwargs_validation():
    with pytest.raises(ValueError, match="response_ms"):
        XOR(response_ms=600)
    with pytest.raises(ValueError, match="input_hz"):
        XOR(input_hz=-1)
