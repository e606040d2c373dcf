"""Full trainings to criterion with each task's default config (run on demand: -m slow)."""

from __future__ import annotations

import pytest

from trainers import load_config, train

TASKS = [
    "colenv/XOR-v0",  # P&D-sized columns with cross-inhibition: solved at step 20
    "colenv/Parity-v0",  # curriculum: XOR module, composed tree, end to end (~25 s)
    "colenv/Decision-v0",  # the choice at the end of the stimulus, 0.1 ms steps: solved at step 75
    "colenv/Bifurcation-v0",  # 5 s training windows: solved in ~500-650 steps, about a minute
    "config/tasks/xor_ctrnn.toml",  # the rate RNN on XOR: solved at step 20 (a few seconds)
]


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_task_trains_to_criterion(task, tmp_path):
    config = load_config(task, [f"logging.run_dir='{tmp_path}'", "logging.wandb=false"])
    result = train(config)
    task = config.task
    assert not result.diverged, result.message
    assert result.solved, f"{task}: {result.message}; final metrics {result.metrics}"
    if task == "colenv/Bifurcation-v0":  # the attractors, not only the trajectories
        assert result.metrics["limit_cycle_max_rel_error"] <= 0.10
        assert result.metrics["spiral_in_max_radius"] <= 0.10
    if task == "colenv/Decision-v0":  # a rollout that ran away would show in the error
        assert result.metrics["rmse_hz"] < 6.0
