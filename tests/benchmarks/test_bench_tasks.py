"""sample_batch(256) speed per task (``python -m pytest tests/benchmarks --benchmark-enable``)."""

import gymnasium as gym
import pytest
import torch

import colenv

IDS = [entry["id"] for entry in colenv.list_tasks()]


@pytest.mark.parametrize("env_id", IDS)
def test_bench_sample_batch_256(benchmark, env_id):
    task = gym.make(env_id).unwrapped
    trial = benchmark(task.sample_batch, 256, seed=0)
    assert trial.batch_size == 256
    assert torch.isfinite(trial.stimulus).all() and torch.isfinite(trial.target).all()
