"""Tiny training budgets shared by the trainer tests: short trials, two steps, no W&B."""

from __future__ import annotations

from pathlib import Path

# per task: trials a few tens of steps long, the cheapest solver settings
SHORT_TRIALS: dict[str, list[str]] = {
    "colenv/XOR-v0": [
        "task_kwargs.pre_stimulus_ms=30.0",
        "task_kwargs.stimulus_ms=30.0",
        "task_kwargs.response_ms=10.0",
    ],
    "colenv/Parity-v0": [
        "task_kwargs.pre_stimulus_ms=20.0",
        "task_kwargs.stimulus_ms=20.0",
        "task_kwargs.response_ms=10.0",
    ],
    "colenv/Decision-v0": [
        "task_kwargs.pre_stimulus_ms=20.0",
        "task_kwargs.stimulus_ms=40.0",
        "task_kwargs.post_stimulus_ms=20.0",
    ],
    "colenv/Bifurcation-v0": ["task_kwargs.trial_ms=500.0", "train.batch_size=4"],
}


def tiny(task: str, run_dir: Path, *extra: str, steps: int = 2) -> list[str]:
    """Overrides for a run of ``steps`` steps in ``run_dir`` without W&B or plots (``extra`` wins)."""
    return [
        *SHORT_TRIALS[task],
        f"train.steps={steps}",
        "train.eval_every=1",
        "train.device='cpu'",
        "solver.compile=false",  # compiling costs ~30 s; the unit run stays eager
        "success.stop_on_success=false",  # run the whole tiny budget even if the grid is met
        "train.max_rejections=0",  # a divergence stops at once unless a test asks otherwise
        "checkpoint.every=1",
        "logging.wandb=false",
        "logging.plots=false",
        f"logging.run_dir='{run_dir}'",
        *extra,
    ]
