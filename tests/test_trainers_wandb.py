"""W&B: a short offline run, its logged values read back by wandb's own reader; the mode
taken from WANDB_MODE; group, tags and notes from the config."""

from __future__ import annotations

import json

import pytest

from colenv.errors import ConfigError
from trainers import load_config, train
from trainers.wandb_logger import (
    WANDB_MODES,
    MetricsLog,
    WandbLogger,
    read_metrics,
    read_offline_run,
    resolve_mode,
)

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


class _RecordingRun:
    """Stands in for a wandb run: records each ``log`` call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bool, dict]] = []

    def log(self, data, step, commit):
        self.calls.append((step, commit, dict(data)))


def test_wandb_steps_only_increase_when_a_step_is_trained_again():
    """A rejected update redoes a step (1, 2, 3, 3, 4): W&B refuses a step it has committed,
    so the redone step moves on, and train/step keeps the training step."""
    from types import SimpleNamespace

    logger = WandbLogger()
    logger.run = _RecordingRun()
    for step in (1, 2, 3, 3, 4):
        state = SimpleNamespace(step=step, loss=1.0, lr=0.1, nfe=10, trials_per_s=5.0, solved=False)
        logger.on_eval_end(state, {"accuracy": 0.5})
        logger.on_step_end(state)
    committed = [(step, data["train/step"]) for step, commit, data in logger.run.calls if commit]
    assert committed == [(1, 1), (2, 2), (3, 3), (4, 3), (5, 4)]
    # each evaluation goes into the row of its step, before that row is committed
    evals = [step for step, commit, data in logger.run.calls if "eval/accuracy" in data]
    assert evals == [1, 2, 3, 4, 5]
    assert all(not commit for _, commit, data in logger.run.calls if "eval/accuracy" in data)


def test_metrics_file_that_cannot_be_written_is_one_warning(tmp_path, capsys):
    from types import SimpleNamespace

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    log = MetricsLog()
    log.on_fit_start(SimpleNamespace(run_dir=blocker / "run"))  # under a file: never writable
    state = SimpleNamespace(step=1, loss=1.0, solved=False)
    log.on_eval_end(state, {"accuracy": 0.5})
    log.on_eval_end(state, {"accuracy": 0.5})
    err = capsys.readouterr().err
    assert err.count("warning: metrics.jsonl:") == 1
    assert "cannot append to" in err and "metrics.jsonl" in err and "To fix:" in err


def test_metrics_file_rows_and_a_line_cut_by_a_kill(tmp_path):
    from types import SimpleNamespace

    log = MetricsLog()
    log.on_fit_start(SimpleNamespace(run_dir=tmp_path))
    for step in (1, 2):
        log.on_eval_end(
            SimpleNamespace(step=step, loss=float(step), solved=step == 2),
            {"accuracy": step / 2, "loss": float("nan")},
        )
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "eval/acc')  # a write cut short
    rows = read_metrics(tmp_path)
    assert [(r["step"], r["train/loss"], r["eval/accuracy"], r["eval/solved"]) for r in rows] == [
        (1, 1.0, 0.5, False),
        (2, 2.0, 1.0, True),
    ]
    assert all(r["eval/loss"] != r["eval/loss"] for r in rows)  # NaN kept as NaN
