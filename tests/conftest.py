"""Shared fixtures: tiny training budgets for the trainer tests (short trials, two steps,
no W&B, no plots unless a test asks)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

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
"""Per task: trials a few tens of steps long."""


def tiny_overrides(task: str, run_dir: Path, *extra: str, steps: int = 2) -> list[str]:
    """Overrides for a run of ``steps`` steps in ``run_dir`` without W&B or plots (``extra``
    wins)."""
    return [
        *SHORT_TRIALS.get(task, []),
        f"train.steps={steps}",
        "train.eval_every=1",
        "train.device='cpu'",
        "success.stop_on_success=false",  # run the whole tiny budget even if the grid is met
        "train.max_rejections=0",  # a divergence stops at once unless a test asks otherwise
        "checkpoint.every=1",
        "logging.wandb=false",
        "logging.plots=false",
        f"logging.run_dir='{run_dir}'",
        *extra,
    ]


@pytest.fixture
def tiny(tmp_path) -> Callable[..., list[str]]:
    """``tiny(task, *extra, steps=2)``: overrides for a tiny run whose runs go to tmp_path."""

    def make(task: str, *extra: str, steps: int = 2) -> list[str]:
        return tiny_overrides(task, tmp_path, *extra, steps=steps)

    return make


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch) -> Path:
    """W&B offline, no API key, its files under tmp_path."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path


@pytest.fixture
def one_thread():
    """torch on one thread for the test, restored after: rollouts of many small ops run many
    times slower with more threads on a shared machine (and benchmarks publish one-thread
    figures). A module takes it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
