"""Full trainings to criterion with each task's default config (run on demand: -m slow)."""

from __future__ import annotations

import pytest

from trainers import load_config, train

TASKS = ["colenv/XOR-v0", "colenv/Parity-v0", "colenv/Decision-v0", "colenv/Bifurcation-v0"]


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_task_trains_to_criterion(task, tmp_path):
    config = load_config(task, [f"logging.run_dir='{tmp_path}'", "logging.wandb=false"])
    result = train(config)
    assert not result.diverged, result.message
    assert result.solved, f"{task}: {result.message}; final metrics {result.metrics}"
