"""trainers.config: task lookup, key=value overrides, validation messages."""

from __future__ import annotations

import pytest

from trainers.config import ConfigError, TrainConfig, load_config, parse_override

TASKS = ["colenv/Parity-v0", "colenv/XOR-v0", "colenv/Decision-v0", "colenv/Bifurcation-v0"]


@pytest.mark.parametrize("task", TASKS)
def test_every_task_config_loads(task):
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
            "solver.compile=false",
            "model.network.lateral.trainable=true",
            "task_kwargs.stimulus_ms=400.0",
            "success.threshold=0.5",
            "model.params.neuron.tau_m_ms=20.0",
        ],
    )
    assert config.train.lr == 0.02 and config.train.steps == 7
    assert config.solver["method"] == "rk4"
    assert config.model.network["lateral"]["trainable"] is True
    assert config.task_kwargs == {"stimulus_ms": 400.0}
    assert config.success.threshold == 0.5
    assert config.model.params == {"neuron": {"tau_m_ms": 20.0}}
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a=hello world") == ("a", "hello world")


def test_config_from_a_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('task = "colenv/XOR-v0"\n[train]\nsteps = 3\n')
    assert load_config(str(path)).train.steps == 3


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=0.1", "'train.lrr'"),
        ("bogus=1", "'bogus'"),
        ("train.lr=abc", "train.lr must be float"),
        ("train.optimizer=lbfgs", "allowed: adam, adamw, sgd"),
        ("train.steps=-1", "train.steps"),
        ("train.threads=-2", "train.threads"),
        ("train.device=tpu", "train.device"),
        ("solver.method=nope", "unknown ODE method 'nope'"),
        ("model.network.lateral.colour=1", "network.lateral.colour"),
        ("model.params.neuron.tau_x=1.0", "neuron.tau_x"),
        ("model.initial_state=somewhere", "model.initial_state"),
        ("train=3", "train must be a table"),
        ("train.lr", "key=value"),
    ],
)
def test_bad_keys_and_values_are_errors_naming_them(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config("colenv/XOR-v0", [override])


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ConfigError, match="known: .*xor"):
        load_config("colenv/Nope-v0")


def test_runs_started_in_the_same_second_get_their_own_run_dirs(tmp_path, monkeypatch):
    from trainers.run import claim_run_name

    monkeypatch.setattr("time.strftime", lambda fmt: "20260101-000000")
    config = load_config("colenv/XOR-v0", [f"logging.run_dir={str(tmp_path)!r}"])
    names = [claim_run_name(config) for _ in range(3)]
    assert names == [
        "xor-v0-20260101-000000",
        "xor-v0-20260101-000000-2",
        "xor-v0-20260101-000000-3",
    ]
    assert all((tmp_path / n).is_dir() for n in names)
