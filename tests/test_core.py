"""Trial and the TrialTask base: batching, seeding, conditions, validation."""

import pytest
import torch

from colenv import XOR, Parity, Trial


def make_trial(batch=3, steps=4):
    return Trial(
        stimulus=torch.arange(steps * batch * 2, dtype=torch.float64).reshape(steps, batch, 2),
        target=torch.ones(steps, batch, 1, dtype=torch.float64),
        mask=torch.zeros(steps, batch, 1, dtype=torch.bool),
        t_ms=torch.arange(steps, dtype=torch.float64),
        dt_ms=1.0,
        conditions={"bits": torch.zeros(batch, 2, dtype=torch.long), "c": torch.zeros(batch)},
    )


def test_trial_shape_properties_and_to():
    trial = make_trial()
    assert trial.batch_size == 3 and trial.n_steps == 4
    moved = trial.to(dtype=torch.float32)
    assert moved.stimulus.dtype == moved.target.dtype == moved.t_ms.dtype == torch.float32
    assert moved.conditions["c"].dtype == torch.float32
    assert moved.mask.dtype == torch.bool
    assert moved.conditions["bits"].dtype == torch.long


def test_trial_getitem_selects_along_batch():
    trial = make_trial()
    one = trial[1]
    assert one.batch_size == 1
    assert torch.equal(one.stimulus[:, 0], trial.stimulus[:, 1])
    pair = trial[torch.tensor([2, 0])]
    assert pair.batch_size == 2 and torch.equal(pair.stimulus[:, 0], trial.stimulus[:, 2])
    assert trial[0:2].conditions["bits"].shape == (2, 2)
    with pytest.raises(IndexError):
        trial[3]


def test_trial_rejects_inconsistent_shapes():
    trial = make_trial()
    with pytest.raises(ValueError, match="mask"):
        Trial(trial.stimulus, trial.target, trial.mask.float(), trial.t_ms, 1.0, {})
    with pytest.raises(ValueError, match="conditions"):
        Trial(trial.stimulus, trial.target, trial.mask, trial.t_ms, 1.0, {"x": torch.zeros(5)})


def test_same_seed_same_batch_and_generator_equivalent():
    task = XOR()
    a = task.sample_batch(8, seed=3)
    b = task.sample_batch(8, seed=3)
    c = task.sample_batch(8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.stimulus, b.stimulus) and torch.equal(a.stimulus, c.stimulus)
    assert not torch.equal(a.stimulus, task.sample_batch(8, seed=4).stimulus)
    d = task.sample_batch(8, seed=3, dtype=torch.float64)
    assert d.stimulus.dtype == torch.float64 and torch.equal(d.stimulus.float(), a.stimulus)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_seed_same_batch_on_cuda():
    task = XOR()
    cpu = task.sample_batch(8, seed=3)
    gpu = task.sample_batch(8, seed=3, device="cuda")
    assert gpu.stimulus.is_cuda and torch.equal(gpu.stimulus.cpu(), cpu.stimulus)


def test_conditions_all_and_tiling_and_dict():
    task = Parity(n_bits=3)
    grid = task.sample_batch(conditions="all")
    assert grid.batch_size == 8
    tiled = task.sample_batch(16, conditions="all")
    assert torch.equal(tiled.conditions["bits"][8:], grid.conditions["bits"])
    chosen = task.sample_batch(conditions={"bits": [[1, 1, 0]]})
    assert chosen.batch_size == 1 and chosen.target[-1, 0, 0] == task.target_hz
    with pytest.raises(ValueError, match="multiple"):
        task.sample_batch(5, conditions="all")
    with pytest.raises(ValueError, match="'everything'.*allowed"):
        task.sample_batch(4, conditions="everything")
    with pytest.raises(ValueError, match="keys"):
        task.sample_batch(conditions={"bit": [[1, 0, 1]]})
    with pytest.raises(ValueError, match="0 or 1"):
        task.sample_batch(conditions={"bits": [[2, 0, 1]]})


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_batch_size(bad):
    with pytest.raises(ValueError, match="batch_size"):
        XOR().sample_batch(bad)


def test_seed_and_generator_exclusive():
    with pytest.raises(ValueError, match="not both"):
        XOR().sample_batch(2, seed=1, generator=torch.Generator())


def test_timing_validation():
    with pytest.raises(ValueError, match="dt_ms=0.3 does not divide"):
        XOR(dt_ms=0.3)
    with pytest.raises(ValueError, match="stimulus_ms"):
        XOR(stimulus_ms=0)
    with pytest.raises(ValueError, match="pre_stimulus_ms"):
        XOR(pre_stimulus_ms=-10)
    with pytest.raises(ValueError, match="dt_ms"):
        XOR(dt_ms=0)
    with pytest.raises(TypeError, match=r"\['stimulus_s'\].*allowed: dt_ms"):
        XOR(stimulus_s=1.0)


def test_periods_and_time_grid():
    task = XOR(dt_ms=2.0, pre_stimulus_ms=100, stimulus_ms=50, response_ms=20)
    assert task.periods_ms == {"pre_stimulus": 100.0, "stimulus": 50.0}
    assert task.n_steps == 75 and task.period("stimulus") == slice(50, 75)
    trial = task.sample_batch(2, seed=0)
    assert trial.t_ms[0] == 0 and torch.allclose(torch.diff(trial.t_ms), torch.tensor(2.0))
    assert trial.mask[:, :, 0].sum(0).tolist() == [10, 10]
