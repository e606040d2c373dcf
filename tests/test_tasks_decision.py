"""Decision task: Wong-Wang targets, coherence conditions, one batched simulate call."""

import pytest
import torch

import colenv.tasks.decision as decision_module
from colenv import Decision
from colenv.reference.wong_wang import simulate


@pytest.fixture(scope="module")
def grid_trial():
    task = Decision()
    return task, task.sample_batch(conditions="all")


def test_grid_is_signed_coherences(grid_trial):
    task, trial = grid_trial
    c = trial.conditions["coherence_pct"]
    assert c.tolist() == pytest.approx(
        [-51.2, -25.6, -12.8, -6.4, -3.2, 0, 3.2, 6.4, 12.8, 25.6, 51.2]
    )
    assert trial.stimulus.shape == (1500, 11, 2) and trial.target.shape == (1500, 11, 2)


def test_stimulus_periods_and_mask(grid_trial):
    task, trial = grid_trial
    assert torch.all(trial.stimulus[:300] == 0) and torch.all(trial.stimulus[1300:] == 0)
    c = trial.conditions["coherence_pct"]
    expected = 30.0 * torch.stack((1 + c / 100, 1 - c / 100), dim=1)
    assert torch.allclose(trial.stimulus[300], expected) and torch.allclose(
        trial.stimulus[1299], expected
    )
    assert not trial.mask[:300].any() and trial.mask[300:].all()


def test_targets_are_scaled_wong_wang_rates_and_the_favoured_pool_wins(grid_trial):
    task, trial = grid_trial
    rates = simulate(trial.stimulus.double(), 1.0, noise=False).rates_hz
    assert torch.allclose(trial.target.double(), 0.5 * rates, atol=1e-4)
    c = trial.conditions["coherence_pct"]
    choice = trial.conditions["choice"]
    strong = c.abs() >= 6.4
    assert torch.equal(choice[strong], (c[strong] < 0).long())  # c' > 0 favours pool 1 (index 0)
    assert choice[c == 0].item() == -1  # no noise, no coherence: no winner
    winner_end = trial.target[1299, c > 0, 0]
    assert torch.all((winner_end > 10) & (winner_end < 20))  # winner ~30 Hz * 0.5
    assert task.evaluate(trial.target, trial)["accuracy"] == 1.0
    assert task.evaluate(trial.target.flip(-1), trial)["accuracy"] == 0.0


def test_one_batched_simulate_call_and_reproducible_noise(monkeypatch):
    calls = []

    def counting(input_hz, *args, **kwargs):
        calls.append(input_hz.shape)
        return simulate(input_hz, *args, **kwargs)

    monkeypatch.setattr(decision_module, "simulate", counting)
    task = Decision(noise=True, pre_stimulus_ms=50, stimulus_ms=300, post_stimulus_ms=50)
    a = task.sample_batch(64, seed=2)
    assert calls == [(400, 64, 2)]
    b = task.sample_batch(64, seed=2)
    assert torch.equal(a.target, b.target)
    c = a.conditions["coherence_pct"]
    levels = {round(v, 4) for v in c.abs().tolist()}
    assert levels <= {0.0, 3.2, 6.4, 12.8, 25.6, 51.2} and len(levels) >= 5
    assert (c > 0).any() and (c < 0).any()


def test_kwargs_validation():
    with pytest.raises(ValueError, match="target_scale"):
        Decision(target_scale=0)
    with pytest.raises(ValueError, match="coherences_pct"):
        Decision(coherences_pct=(120.0,))
    with pytest.raises(ValueError, match="post_stimulus_ms"):
        Decision(post_stimulus_ms=0)
    with pytest.raises(ValueError, match=r"dt_ms=0.7 does not divide"):
        Decision(dt_ms=0.7)


def test_choice_needs_a_margin():
    """Outputs that differ by a hair do not count as a choice; the targets themselves do."""
    task = Decision()  # default timing: every c' != 0 has decided and holds its winner
    trial = task.sample_batch(conditions="all")
    assert task.evaluate(trial.target, trial)["accuracy"] == 1.0
    flat = torch.full_like(trial.target, 0.3)
    winner_up = flat.clone()
    winner_up[..., 0] += 1e-3 * torch.sign(trial.conditions["coherence_pct"]).float()
    assert task.evaluate(winner_up, trial)["accuracy"] == 0.0
    assert Decision(choice_margin_hz=0.0).choice_margin_hz == 0.0
    with pytest.raises(ValueError, match="choice_margin_hz"):
        Decision(choice_margin_hz=-1.0)


def test_choice_is_read_at_the_end_of_the_stimulus_and_the_hold_after_it(grid_trial):
    """accuracy: last 100 ms of the stimulus (steps 1200-1299); hold_accuracy: last 100 ms of
    the trial (1400-1499). Columns that decide but fall back to rest after the stimulus get
    accuracy 1 and hold_accuracy 0."""
    task, trial = grid_trial
    assert task.choice_windows() == {"stimulus end": slice(1200, 1300), "hold": slice(1400, 1500)}
    decide_then_rest = trial.target.clone()
    decide_then_rest[1300:] = 0.3
    metrics = task.evaluate(decide_then_rest, trial)
    assert metrics["accuracy"] == 1.0 and metrics["hold_accuracy"] == 0.0
    hold_only = trial.target.clone()
    hold_only[1200:1300] = hold_only[1200:1300].flip(-1)  # wrong choice in the stimulus window
    metrics = task.evaluate(hold_only, trial)
    assert metrics["accuracy"] == 0.0 and metrics["hold_accuracy"] == 1.0
    early = trial.target.clone()
    early[1100:1200] = early[1100:1200].flip(-1)  # before the window: not scored
    assert task.evaluate(early, trial)["accuracy"] == 1.0


@pytest.fixture(scope="module")
def hold_trial():
    """The holding Decision's timing: 100 ms rest, 1 s stimulus, 500 ms scored hold."""
    task = Decision(pre_stimulus_ms=100, stimulus_ms=1000, post_stimulus_ms=500, hold_window_ms=500)
    return task, task.sample_batch(conditions="all")


def test_hold_windows_tile_the_post_stimulus_period(hold_trial):
    task, _ = hold_trial
    assert task.hold_windows() == [slice(1100 + 100 * k, 1200 + 100 * k) for k in range(5)]
    assert task.choice_windows()["hold"] == slice(1500, 1600)  # the last hold window
    assert Decision().hold_windows() == [slice(1400, 1500)]  # default: the last 100 ms only


def test_wong_wang_targets_hold_through_500_ms_after_the_stimulus(hold_trial):
    """The reference itself holds at every c' != 0 (NMDA persistence), so the criterion is
    reachable: the scaled winner stays >= 5 Hz above the loser in each post-stimulus window."""
    task, trial = hold_trial
    metrics = task.evaluate(trial.target, trial)
    assert metrics["accuracy"] == 1.0 and metrics["hold_accuracy"] == 1.0
    assert metrics["stimulus_rmse_hz"] == 0.0 and metrics["hold_solved"] == 1.0
    scored = trial.conditions["coherence_pct"] != 0
    winner = trial.conditions["choice"][scored]
    post = trial.target[1100:, scored]  # [500, 10, 2]
    lead = (
        post.gather(2, winner[None, :, None].expand(500, -1, 1))[..., 0]
        - post.gather(2, 1 - winner[None, :, None].expand(500, -1, 1))[..., 0]
    )
    assert float(lead.min()) > 9.0  # hand check: winner ~10 Hz, loser < 0.5 Hz


def test_hold_needs_the_choice_in_every_post_stimulus_window(hold_trial):
    """A choice lost for 100 ms in the middle of the hold fails the 500 ms hold but not the
    default one (the last 100 ms only); a lead below the margin in one window fails too."""
    task, trial = hold_trial
    lapse = trial.target.clone()
    lapse[1300:1400] = lapse[1300:1400].flip(-1)  # 200-300 ms after the stimulus
    metrics = task.evaluate(lapse, trial)
    assert metrics["accuracy"] == 1.0 and metrics["hold_accuracy"] == 0.0
    assert metrics["hold_solved"] == 0.0
    end_only = Decision(pre_stimulus_ms=100, stimulus_ms=1000, post_stimulus_ms=500)
    assert end_only.evaluate(lapse, trial)["hold_accuracy"] == 1.0
    weak = trial.target.clone()
    weak[1100:1200] = 2.0  # both columns at 2 Hz for the first 100 ms of the hold
    weak[1100:1200, :, 0] += 4.0 * (trial.conditions["coherence_pct"] > 0).float()
    weak[1100:1200, :, 1] += 4.0 * (trial.conditions["coherence_pct"] < 0).float()
    assert task.evaluate(weak, trial)["hold_accuracy"] == 0.0  # a 4 Hz lead < 5 Hz margin


def test_stimulus_rmse_is_over_the_stimulus_and_the_trials_with_a_winner(hold_trial):
    """Hand-computed: a 2 Hz error on one output during the stimulus of every trial with
    c' != 0 gives sqrt(2^2 / 2) = sqrt(2) Hz; errors before or after the stimulus, or at
    c' = 0, do not count. With a 4 Hz error (2 sqrt 2 = 2.83 Hz) it is still solved at the 3 Hz
    limit; at 5 Hz (3.54 Hz) it is not, though the choice and the hold are unchanged."""
    task, trial = hold_trial
    zero = trial.conditions["coherence_pct"] == 0
    for error, rmse, solved in ((2.0, 2.0**0.5, 1.0), (4.0, 8.0**0.5, 1.0), (5.0, 12.5**0.5, 0.0)):
        out = trial.target.clone()
        out[100:1100, :, 1] += error
        out[:100] += 50.0  # pre-stimulus: not scored
        out[1100:, :, 1] += 0.5  # post-stimulus: in rmse_hz only
        out[:, zero] += 30.0  # c' = 0: in rmse_hz only
        metrics = task.evaluate(out, trial)
        assert metrics["stimulus_rmse_hz"] == pytest.approx(rmse, rel=1e-5)
        assert metrics["accuracy"] == 1.0 and metrics["hold_accuracy"] == 1.0
        assert metrics["hold_solved"] == solved
        assert metrics["rmse_hz"] > metrics["stimulus_rmse_hz"]
    limit = Decision(stimulus_rmse_limit_hz=1.0, post_stimulus_ms=500, hold_window_ms=500)
    assert limit.stimulus_rmse_limit_hz == 1.0


def test_stimulus_rmse_counts_the_trials_accuracy_scores(hold_trial):
    """With accuracy_min_coherence_pct = 12.8 a lapse at 3.2 and 6.4 % (the other pool wins,
    as a noisy subject's does) is outside stimulus_rmse_hz, which is then the hand value of
    the strong trials (a 2 Hz error on one output: sqrt 2); with the default it counts."""
    _, trial = hold_trial
    weak = trial.conditions["coherence_pct"].abs() < 12.8
    out = trial.target.clone()
    out[100:1100, :, 1] += 2.0
    out[100:1100, weak] = out[100:1100, weak].flip(-1)  # the wrong pool wins in the stimulus
    strong_only = Decision(
        pre_stimulus_ms=100,
        post_stimulus_ms=500,
        hold_window_ms=500,
        accuracy_min_coherence_pct=12.8,
    )
    assert strong_only.evaluate(out, trial)["stimulus_rmse_hz"] == pytest.approx(2.0**0.5, rel=1e-5)
    everyone = Decision(pre_stimulus_ms=100, post_stimulus_ms=500, hold_window_ms=500)
    assert everyone.evaluate(out, trial)["stimulus_rmse_hz"] > 4.0


def test_hold_kwargs_validation():
    for bad in (0, 50.0, 150.0, 300.0, float("nan"), True):
        with pytest.raises(ValueError, match="hold_window_ms must be a multiple of 100 ms"):
            Decision(hold_window_ms=bad)  # post_stimulus_ms = 200
    assert Decision(hold_window_ms=200.0).hold_windows() == [slice(1300, 1400), slice(1400, 1500)]
    for bad in (0.0, -1.0, "3"):
        with pytest.raises(ValueError, match="stimulus_rmse_limit_hz"):
            Decision(stimulus_rmse_limit_hz=bad)


def test_accuracy_min_coherence_scores_only_strong_trials(grid_trial):
    """Wrong on the 4 trials with |c'| < 12.8 % (3.2, 6.4): accuracy 6/6 from 12.8 % on,
    accuracy_all 6/10; hold_accuracy restricted alike; default 0 scores all 10."""
    _, trial = grid_trial
    c = trial.conditions["coherence_pct"]
    out = trial.target.clone()
    weak = (c != 0) & (c.abs() < 12.8)
    out[:, weak] = out[:, weak].flip(-1)
    strong_only = Decision(accuracy_min_coherence_pct=12.8).evaluate(out, trial)
    assert strong_only["accuracy"] == 1.0 and strong_only["n_trials"] == 6
    assert strong_only["hold_accuracy"] == 1.0 and strong_only["n_correct"] == 6
    assert strong_only["accuracy_all"] == pytest.approx(0.6)
    default = Decision().evaluate(out, trial)
    assert default["accuracy"] == pytest.approx(0.6) and default["n_trials"] == 10
    assert default["accuracy_all"] == default["accuracy"]
    for bad in (-1.0, float("nan"), "12.8"):
        with pytest.raises(ValueError, match="accuracy_min_coherence_pct"):
            Decision(accuracy_min_coherence_pct=bad)
