"""Third-party trainers plug in by name, by entry point, or as module.path:ClassName."""

from __future__ import annotations

import importlib.metadata

import pytest

import trainers.registry as registry
from tests.trainer_utils import tiny
from trainers import Result, Trainer, get_trainer, list_trainers, register_trainer
from trainers.__main__ import main

TASK = "colenv/XOR-v0"


class MyTrainer:
    """A trainer that does no training: it evaluates once and reports."""

    calls: list[dict] = []

    def fit(self, model, task, config, callbacks) -> Result:
        trial = task.sample_batch(conditions="all", seed=0)
        type(self).calls.append({"task": config.task, "n_trials": trial.batch_size})
        return Result(steps=0, wall_s=0.0, solved=False, message="evaluated only")


def test_module_path_trainer_runs_through_the_cli(tmp_path, capsys):
    MyTrainer.calls.clear()
    code = main(
        ["train", TASK, *tiny(TASK, tmp_path), "trainer=tests.test_trainers_plugin:MyTrainer"]
    )
    assert code == 0
    assert MyTrainer.calls == [{"task": TASK, "n_trials": 4}]
    assert "evaluated only" in capsys.readouterr().out


def test_register_and_lookup():
    register_trainer("mine", MyTrainer)
    assert get_trainer("mine") is MyTrainer
    assert "mine" in list_trainers() and "supervised" in list_trainers()
    assert isinstance(MyTrainer(), Trainer)
    with pytest.raises(ValueError, match="unknown trainer 'nope'; registered: .*supervised"):
        get_trainer("nope")
    with pytest.raises(ValueError, match="has no 'Missing'"):
        get_trainer("tests.test_trainers_plugin:Missing")


def test_entry_point_is_loaded_lazily(monkeypatch):
    ep = importlib.metadata.EntryPoint(
        name="from-entry-point",
        value="tests.test_trainers_plugin:MyTrainer",
        group="colenv.trainers",
    )
    monkeypatch.setattr(
        registry.importlib.metadata,
        "entry_points",
        lambda group: [ep] if group == "colenv.trainers" else [],
    )
    assert "from-entry-point" in list_trainers()
    assert get_trainer("from-entry-point") is MyTrainer
