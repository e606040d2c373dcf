"""trainers.config: shipped task configs, key=value overrides, run names.

Unknown keys, bad values, solver families and format_config: tests/test_config.py.
"""

from __future__ import annotations

import pytest

from colenv.registration import TASKS
from trainers.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    config_path,
    load_config,
    parse_override,
)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_has_a_shipped_config_that_loads(task):
    assert config_path(task).is_file()
    config = load_config(task)
    assert config.task == task
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_overrides_parse_as_toml_values():
    config = load_config(
        "colenv/XOR-v0",
        [
            "train.lr=0.02",
            "train.steps=7",
            "solver.method=rk4",
            "model.network.lateral.trainable=false",
            "task_kwargs.stimulus_ms=400.0",
            "success.threshold=0.5",
            "model.params.neuron.tau_m_ms=20.0",
            'model.network.areas=[{name = "a", n_columns = 2}, {name = "b", n_columns = 1}]',
        ],
    )
    assert config.train.lr == 0.02 and config.train.steps == 7
    assert config.solver.method == "rk4"
    network = config.model.options.network
    assert network.lateral.trainable is False and network.lateral.enabled is True
    assert [a.name for a in network.areas] == ["a", "b"] and network.areas[0].sizes == "mt"
    assert config.task_kwargs == {"stimulus_ms": 400.0}
    assert config.success.threshold == 0.5
    assert config.model.options.params == {"neuron": {"tau_m_ms": 20.0}}


def test_a_bad_override_is_named_as_an_override_and_a_bad_file_as_the_file(tmp_path):
    with pytest.raises(
        ConfigError, match=r"xor\.toml with overrides train\.steps=5 train\.lr=-1: train\.lr"
    ):
        load_config("colenv/XOR-v0", ["train.steps=5", "train.lr=-1"])
    bad = tmp_path / "bad.toml"
    bad.write_text('task = "colenv/XOR-v0"\n[train]\nlr = -1\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: train\.lr") as err:
        load_config(bad, ["train.steps=5"])  # the file's own value: no blame on the override
    assert "with overrides" not in str(err.value)


def test_parse_override():
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a=hello world") == ("a", "hello world")
    assert parse_override("a=rk4") == ("a", "rk4")
    assert parse_override("a.b={x = 1}") == ("a.b", {"x": 1})
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.lr")
    with pytest.raises(ConfigError, match="empty key"):
        parse_override("train..lr=1")


def test_apply_overrides_copies_and_creates_tables():
    raw = {"train": {"lr": 0.1}, "task": "x"}
    out = apply_overrides(raw, ["train.steps=3", "logging.plots=false"])
    assert out == {"train": {"lr": 0.1, "steps": 3}, "task": "x", "logging": {"plots": False}}
    assert raw == {"train": {"lr": 0.1}, "task": "x"}
    with pytest.raises(ConfigError, match="task is a value, not a table"):
        apply_overrides(raw, ["task.name=y"])


def test_runs_started_in_the_same_second_get_their_own_run_dirs(tmp_path, monkeypatch):
    from trainers.callbacks import claim_run_name

    monkeypatch.setattr("time.strftime", lambda fmt: "20260101-000000")
    config = load_config("colenv/XOR-v0", [f"logging.run_dir={str(tmp_path)!r}"])
    names = [claim_run_name(config) for _ in range(3)]
    assert names == [
        "xor-v0-20260101-000000",
        "xor-v0-20260101-000000-2",
        "xor-v0-20260101-000000-3",
    ]
    assert all((tmp_path / n).is_dir() for n in names)
