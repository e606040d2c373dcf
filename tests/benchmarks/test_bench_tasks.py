"""sample_batch(256) speed per task. Enabled with `pytest tests/benchmarks --benchmark-enable`."""

import gymnasium as gym
import pytest

import colenv  # noqa: F401  (registers the ids)

IDS = ["colenv/Bifurcation-v0", "colenv/Decision-v0", "colenv/XOR-v0", "colenv/Parity-v0"]


@pytest.mark.parametrize("env_id", IDS)
def test_bench_sample_batch_256(benchmark, env_id):
    task = gym.make(env_id).unwrapped
    trial = benchmark(task.sample_batch, 256, seed=0)
    assert trial.batch_size == 256
