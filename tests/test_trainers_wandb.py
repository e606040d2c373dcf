"""W&B: a short offline run, its logged values read back from the run's own files."""

from __future__ import annotations

import json
import time

import pytest

from trainers import load_config, train
from trainers.wandb_logger import WandbLogger, read_offline_run

TASK = "colenv/XOR-v0"


def test_offline_run_logs_loss_metrics_nfe_plots_and_checkpoint(tmp_path, tiny, offline_wandb):
    config = load_config(
        TASK, tiny(TASK, "logging.wandb=true", "logging.plots=true", "run_name=wb")
    )
    result = train(config)
    assert not result.diverged

    (run,) = (tmp_path / "wb" / "wandb").glob("offline-run-*")
    logged = read_finished(run)
    summary = logged["summary"]
    for key in ("train/loss", "eval/accuracy", "eval/loss", "solver/nfe", "perf/trials_per_s"):
        assert key in summary, key
    assert summary["solver/nfe"] > 0
    assert summary["train/loss"] > 0
    assert summary["eval/accuracy"] == result.metrics["accuracy"]
    assert summary["result/steps"] == 2
    assert any("plots/outputs" in k for k in summary)
    steps = [row["_step"] for row in logged["history"] if "train/loss" in row]
    assert steps == [1, 2]
    # newer wandb versions may also write the summary JSON; when present it must agree
    summary_json = run / "files" / "wandb-summary.json"
    if summary_json.exists():
        assert json.loads(summary_json.read_text())["eval/accuracy"] == result.metrics["accuracy"]
    # the plots went in as images
    assert any(p.suffix == ".png" for p in (run / "files" / "media" / "images").rglob("*"))


def read_finished(run, timeout_s: float = 20.0) -> dict:
    """The logged run once its summary is on disk: W&B's service process writes the file, and
    under load the last records may land a moment after ``finish`` returned."""
    deadline = time.monotonic() + timeout_s
    while True:
        logged = read_offline_run(run)
        if logged["summary"] or time.monotonic() > deadline:
            return logged
        time.sleep(0.2)


def test_wandb_mode_from_the_environment_is_checked(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "")  # set but empty: the config's mode applies
    assert WandbLogger(mode="disabled").mode == "disabled"
    monkeypatch.setenv("WANDB_MODE", "ofline")
    with pytest.raises(ValueError, match="'ofline' \\(from the WANDB_MODE environment variable\\)"):
        WandbLogger()
    monkeypatch.setenv("WANDB_MODE", "online")
    assert WandbLogger(mode="offline").mode == "online"
