"""Full trainings to criterion with each task's default config (run on demand: -m slow)."""

from __future__ import annotations

import pytest

from trainers import load_config, train

NOT_YET = pytest.mark.xfail(
    reason="issue 4: the Parity and Decision configs do not reach the criterion yet (README Results)",
    strict=False,
)
TASKS = [
    "colenv/XOR-v0",  # P&D-sized columns with cross-inhibition: solved at step 20
    pytest.param("colenv/Parity-v0", marks=NOT_YET),
    pytest.param("colenv/Decision-v0", marks=NOT_YET),
    "colenv/Bifurcation-v0",  # 5 s training windows: solved in ~500-650 steps, about a minute
]


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_task_trains_to_criterion(task, tmp_path):
    config = load_config(task, [f"logging.run_dir='{tmp_path}'", "logging.wandb=false"])
    result = train(config)
    assert not result.diverged, result.message
    assert result.solved, f"{task}: {result.message}; final metrics {result.metrics}"
    if task == "colenv/Bifurcation-v0":  # the attractors, not only the trajectories
        assert result.metrics["limit_cycle_max_rel_error"] <= 0.10
        assert result.metrics["spiral_in_max_radius"] <= 0.10
