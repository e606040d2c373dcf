"""W&B: a short offline run, its logged values read back by wandb's own reader; the mode
taken from WANDB_MODE; group, tags and notes from the config."""

from __future__ import annotations

import json

import pytest

from colenv.errors import ConfigError
from trainers import load_config, train
from trainers.wandb_logger import WANDB_MODES, read_metrics, read_offline_run, resolve_mode

TASK = "colenv/XOR-v0"


def test_offline_run_logs_loss_metrics_nfe_plots_and_checkpoint(tmp_path, tiny, offline_wandb):
    overrides = tiny(
        TASK,
        "logging.wandb=true",
        "logging.plots=true",
        "run_name=wb",
        "logging.group='sweep-1'",
        "logging.tags=['xor', 'smoke']",
        "logging.notes='a two-step run'",
    )
    result = train(load_config(TASK, overrides))
    assert not result.diverged

    (run,) = (tmp_path / "wb" / "wandb").glob("offline-run-*")
    logged = read_offline_run(run)
    summary = logged["summary"]
    for key in ("train/loss", "eval/accuracy", "eval/loss", "solver/nfe", "perf/trials_per_s"):
        assert key in summary, key
    assert summary["solver/nfe"] > 0
    assert summary["train/loss"] > 0
    assert summary["eval/accuracy"] == result.metrics["accuracy"]
    assert summary["result/steps"] == 2
    assert any("plots/outputs" in k for k in summary)
    rows = [row for row in logged["history"] if "train/loss" in row]
    assert [row["_step"] for row in rows] == [1, 2]
    assert [row["train/step"] for row in rows] == [1, 2]
    # each step's evaluation is in the same row as its training loss
    assert all("eval/accuracy" in row for row in rows)
    assert logged["run"] == {
        "project": "colenv",
        "name": "wb",
        "group": "sweep-1",
        "tags": ["xor", "smoke"],
        "notes": "a two-step run",
        "id": logged["run"]["id"],
    }
    assert logged["config"]["train"]["steps"] == 2
    assert logged["artifacts"] == [{"name": "wb-checkpoint", "type": "model"}]
    # the plots went in as images
    assert any(p.suffix == ".png" for p in (run / "files" / "media" / "images").rglob("*"))

    # metrics.jsonl: one line per evaluation, the same values
    rows = read_metrics(tmp_path / "wb")
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[-1]["eval/accuracy"] == result.metrics["accuracy"]
    assert rows[-1]["train/loss"] == summary["train/loss"]
    lines = (tmp_path / "wb" / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)


def test_wandb_mode_comes_from_the_environment_when_valid():
    assert resolve_mode("offline", {}) == ("offline", "")
    assert resolve_mode("offline", {"WANDB_MODE": ""}) == ("offline", "")  # empty = unset
    assert resolve_mode("offline", {"WANDB_MODE": "online"}) == ("online", "")
    assert resolve_mode("online", {"WANDB_MODE": "disabled"}) == ("disabled", "")
    for mode in WANDB_MODES:
        assert resolve_mode("offline", {"WANDB_MODE": mode}) == (mode, "")
    mode, problem = resolve_mode("offline", {"WANDB_MODE": "ofline"})
    assert mode == "offline"
    assert "WANDB_MODE" in problem and "'ofline'" in problem and "offline, online" in problem
    mode, problem = resolve_mode("online", {"WANDB_MODE": " offline"})  # not silently fixed
    assert mode == "online" and "' offline'" in problem


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("logging.tags='xor'", "logging.tags = 'xor': Input should be a valid list"),
        ("logging.tags=[1]", "logging.tags[0] = 1: Input should be a valid string"),
        ("logging.tags=['']", "logging.tags[0] = '': String should have at least 1 character"),
        (f"logging.tags=['{'x' * 65}']", "String should have at most 64 characters"),
        ("logging.group=3", "logging.group = 3: Input should be a valid string"),
        ("logging.notes=[]", "logging.notes = []: Input should be a valid string"),
    ],
)
def test_bad_group_tags_notes_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(TASK, [override])
