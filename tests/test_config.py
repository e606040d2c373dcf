"""One parser for every config: colenv.config (StrictModel, parse, describe) and the training
config built on it (TrainConfig parsed once, solver families, TOML paths, format_config)."""

from __future__ import annotations

import json
import textwrap
from typing import Literal

import pytest
import torch
from pydantic import Field, ValidationError

import colenv
from colenv.config import StrictModel, describe, parse
from colenv.errors import ConfigError
from colenv.models import NetworkSpec
from colenv.models.registry import get_model_class, register_model
from colenv.registration import TASKS
from colenv.resources import config_dir
from trainers.config import TrainConfig, format_config, load_config


# ----------------------------------------------------------------------------- colenv.config
class Inner(StrictModel):
    size: int = Field(1, ge=1, description="a size")
    pairs: tuple[tuple[str, str], ...] = Field((), description="pairs")


class Outer(StrictModel):
    positional = ("name",)
    name: str = Field("a", description="a name")
    rate: float = Field(1.0, gt=0, description="a rate")
    mode: Literal["x", "y"] = Field("x", description="a mode")
    flag: bool | tuple[str, ...] = Field(False, description="a flag or names")
    inner: Inner = Field(default_factory=Inner, description="a section")
    many: tuple[Inner, ...] = Field((), description="sections")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"colour": 1}, "unknown key 'top.colour'; allowed: name, rate, mode, flag, inner, many"),
        ({"inner": {"colour": 1}}, "unknown key 'top.inner.colour'; allowed: size, pairs"),
        ({"many": [{}, {"colour": 1}]}, "unknown key 'top.many[1].colour'; allowed: size, pairs"),
        ({"rate": 0}, "top.rate = 0: Input should be greater than 0"),
        ({"rate": "1.0"}, "top.rate = '1.0': Input should be a valid number"),
        ({"rate": True}, "top.rate = True: Input should be a valid number"),
        ({"rate": float("inf")}, "top.rate = inf: Input should be a finite number"),
        ({"mode": "z"}, "top.mode = 'z': Input should be 'x' or 'y'"),
        ({"flag": 3}, "top.flag = 3: must be bool | tuple[str, ...]"),
        ({"inner": {"size": 1.5}}, "top.inner.size = 1.5: Input should be a valid integer"),
        (
            {"many": [{"size": 0}]},
            r"top.many[0].size = 0: Input should be greater than or equal to 1",
        ),
        ({"inner": 3}, "top.inner = 3: Input should be a valid dictionary"),
    ],
)
def test_parse_names_the_dotted_key_and_what_is_allowed(raw, message):
    with pytest.raises(ConfigError) as err:
        parse(Outer, raw, where="top")
    assert str(err.value).startswith(message)


def test_parse_takes_toml_lists_for_tuples_and_returns_instances_as_they_are():
    obj = parse(Outer, {"flag": ["a"], "inner": {"pairs": [["L4e", "L5i"]]}, "many": [{}]})
    assert obj.flag == ("a",) and obj.inner.pairs == (("L4e", "L5i"),)
    assert obj.many == (Inner(),)
    assert parse(Outer, obj) is obj
    with pytest.raises(ConfigError, match="top must be a table of keys"):
        parse(Outer, [1], where="top")


def test_python_construction_is_checked_like_parse():
    assert Outer("b", rate=2.0).name == "b"
    with pytest.raises(ConfigError, match="rate = -1.0: Input should be greater than 0"):
        Outer(rate=-1.0)
    with pytest.raises(ConfigError, match="unknown key 'colour'"):
        Outer(colour=1)
    with pytest.raises(TypeError, match="positional"):
        Outer("a", "b")
    with pytest.raises(ValidationError, match="frozen"):
        Outer().rate = 2.0


def test_describe_walks_sections_and_keeps_descriptions():
    rows = {key: (value, type_, text) for key, value, type_, text in describe(Outer())}
    assert list(rows) == ["name", "rate", "mode", "flag", "inner.size", "inner.pairs", "many"]
    assert rows["inner.size"] == (1, "int", "a size")
    assert rows["mode"][1] == "'x' | 'y'"


# ----------------------------------------------------------------------------- TrainConfig
XOR = "colenv/XOR-v0"


def _key(override: str) -> str:
    return override.split("=", 1)[0]


@pytest.mark.parametrize(
    ("override", "allowed"),
    [
        ("colour=1", "task, trainer, imports, run_name"),
        ("train.colour=1", "steps, batch_size, conditions"),
        ("success.colour=1", "metric, threshold, patience, stop_on_success"),
        ("logging.colour=1", "wandb, wandb_mode, project, run_dir, plots"),
        ("checkpoint.colour=1", "every"),
        ("model.colour=1", "kind, initial_state, params, network"),
        ("model.network.colour=1", "areas, n_inputs, input_mode, input, recurrent"),
        ("model.network.lateral.colour=1", "enabled, pairs, trainable, init_k, edges"),
        ("solver.colour=1", "method, step_ms"),
        ("solver.fast.colour=1", "compile"),
    ],
)
def test_unknown_key_at_every_level_names_it_and_the_allowed_keys(override, allowed):
    with pytest.raises(ConfigError) as err:
        load_config(XOR, [override])
    text = str(err.value)
    assert f"unknown key '{_key(override)}'" in text and "allowed: " in text
    assert allowed in text


def test_unknown_key_in_a_list_of_tables_and_in_model_params():
    areas = '[{name = "a", n_columns = 2, colour = 1}, {name = "b", n_columns = 1}]'
    with pytest.raises(ConfigError, match=r"'model.network.areas\[0\].colour'; allowed: name"):
        load_config(XOR, [f"model.network.areas={areas}"])
    with pytest.raises(ConfigError, match=r"unknown key 'neuron.tau_x'; allowed: tau_s_ms"):
        load_config(XOR, ["model.params.neuron.tau_x=1.0"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.steps=0", "train.steps = 0: Input should be greater than or equal to 1"),
        ("train.eval_every=0", "train.eval_every = 0: Input should be greater than or equal to 1"),
        ("train.lr=0", "train.lr = 0: Input should be greater than 0"),
        ("train.lr=inf", "train.lr = inf: Input should be a finite number"),
        ("train.lr=abc", "train.lr = 'abc': Input should be a valid number"),
        ("train.lr=true", "train.lr = True: Input should be a valid number"),
        ("train.steps=2.5", "train.steps = 2.5: Input should be a valid integer"),
        ("train.dtype=float16", "train.dtype = 'float16': Input should be 'float32' or 'float64'"),
        ("train.device=tpu", "train.device = 'tpu': allowed: auto, cpu, cuda, cuda:N"),
        ("train.device=cuda:x", "train.device = 'cuda:x': allowed: auto, cpu, cuda, cuda:N"),
        ("train.optimizer=lbfgs", "Input should be 'adam', 'adamw' or 'sgd'"),
        ("train.conditions=some", "Input should be 'all' or 'random'"),
        ("success.threshold=nan", "success.threshold = nan: Input should be a finite number"),
        ("success.patience=0", "success.patience = 0: Input should be greater than or equal to 1"),
        ("logging.wandb_mode=x", "Input should be 'offline', 'online' or 'disabled'"),
        ("checkpoint.every=-1", "checkpoint.every = -1: Input should be greater than or equal"),
        ("model.initial_state=somewhere", 'allowed: "rest" or "condition:<key>"'),
        ("model.kind=nope", "unknown model.kind 'nope'; known: columns"),
        ("model.network.readout=L7e", "model.network.readout = 'L7e': unknown population"),
        ("model.network.lateral.trainable=3", "model.network.lateral.trainable = 3: must be"),
        ("model.network.n_inputs=3", "one_to_one needs n_inputs (3) == columns of the first area"),
        ("model.params.neuron.tau_m_ms=-1.0", "neuron.tau_m_ms = -1.0: Input should be greater"),
        ("solver.step_ms=0", "solver.step_ms = 0"),
        ("solver.method=nope", "'nope'"),
        ("train=3", "train = 3: Input should be a valid dictionary"),
        ("train.lr", "must look like key=value"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(XOR, [override])
    assert message in str(err.value)


def test_devices_accepted_by_syntax():
    for device in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert load_config(XOR, [f"train.device={device}"]).train.device == device


# ----------------------------------------------------------------------------- parsed once
SHIPPED = sorted((config_dir() / "tasks").glob("*.toml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_config_is_parsed_once_into_typed_objects(path):
    config = load_config(path)
    task = config.task
    assert isinstance(config.solver, colenv.SolverConfig)
    assert isinstance(config.model.options, get_model_class(config.model.kind).Config)
    if config.model.kind == "columns":
        assert isinstance(config.model.options.network, NetworkSpec)
    # to_dict is plain JSON in the TOML layout, and parses back to the same config
    raw = json.loads(json.dumps(config.to_dict()))
    assert raw["task"] == task and raw["model"]["kind"] == config.model.kind
    assert "options" not in raw["model"]
    assert TrainConfig.from_dict(raw) == config


# ----------------------------------------------------------------------------- solver families
RK4EXP_TOML = """
task = "colenv/XOR-v0"
[model.network]
n_inputs = 2
input_mode = "one_to_one"
areas = [{ name = "a", n_columns = 2 }, { name = "b", n_columns = 1 }]
[solver]
method = "rk4exp"
[solver.fast]
compile = true
unroll = 2
"""


@pytest.fixture
def rk4exp_toml(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(RK4EXP_TOML)
    return str(path)


def test_switching_method_drops_the_file_options_that_do_not_apply(rk4exp_toml):
    assert load_config(rk4exp_toml).solver.fast.compile is True
    config = load_config(rk4exp_toml, ["solver.method=dopri5"])
    assert config.solver.method == "dopri5"
    assert config.solver.fast == type(config.solver.fast)()  # the file's fast table dropped
    config = load_config(rk4exp_toml, ["solver.method=dopri5", "solver.adaptive.rtol=1e-4"])
    assert config.solver.adaptive.rtol == 1e-4


def test_options_set_on_the_command_line_for_another_method_are_errors(rk4exp_toml):
    with pytest.raises(ConfigError) as err:
        load_config(rk4exp_toml, ["solver.method=dopri5", "solver.fast.compile=true"])
    assert "solver.fast" in str(err.value) and "dopri5" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(rk4exp_toml, ["solver.adaptive.rtol=1e-4"])  # the file's method: rk4exp
    assert "solver.adaptive" in str(err.value) and "rk4exp" in str(err.value)
    # the default value of an option that does not apply changes nothing: accepted
    assert load_config(rk4exp_toml, ["solver.method=rk4", "solver.fast.compile=false"])


def test_shipped_xor_config_switches_to_an_adaptive_method():
    assert load_config(XOR).solver.fast.compile is True
    assert load_config(XOR, ["solver.method=dopri5"]).solver.method == "dopri5"
    with pytest.raises(ConfigError, match="solver.fast.*dopri5"):
        load_config(XOR, ["solver.method=dopri5", "solver.fast.compile=true"])


def test_resumed_config_switches_method_too():
    from trainers.config import apply_overrides

    saved = load_config(XOR).to_dict()  # as a checkpoint stores it
    raw = apply_overrides(saved, ["solver.method=dopri5"])
    assert TrainConfig.from_dict(raw).solver.method == "dopri5"


# ----------------------------------------------------------------------------- files
def test_config_from_a_user_toml_path(tmp_path):
    path = tmp_path / "my.toml"
    path.write_text(RK4EXP_TOML + "\n[train]\nsteps = 3\n")
    config = load_config(path, ["train.lr=0.5"])
    assert config.task == XOR and config.train.steps == 3 and config.train.lr == 0.5
    assert config.model.options.network.areas[0].name == "a"


def test_a_toml_without_task_is_an_error(tmp_path):
    path = tmp_path / "no_task.toml"
    path.write_text("[train]\nsteps = 3\n")
    with pytest.raises(ConfigError, match='no task; .*task = "colenv/XOR-v0"'):
        load_config(path)
    assert load_config(path, [f"task={XOR}"]).task == XOR  # named on the command line


def test_unknown_task_lists_the_known_ids_and_missing_files_are_named(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config("colenv/Nope-v0")
    assert "unknown task 'colenv/Nope-v0'" in str(err.value)
    assert all(task in str(err.value) for task in TASKS)
    assert "override" not in str(err.value)
    with pytest.raises(ConfigError, match="looks like a key=value override: give overrides "):
        load_config("train.threads=1")  # what `reproduce --tasks a.toml train.threads=1` passes
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


# ----------------------------------------------------------------------------- format_config
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_format_config_lists_every_key_with_a_description(path):
    config = load_config(path)
    text = format_config(config)
    rows = list(describe(config))
    empty = [key for key, _, _, description in rows if not description]
    assert not empty, f"keys without a description: {empty}"
    for key, _, type_, description in rows:
        assert f"\n{key} " in text or text.startswith(f"{key} ") or f"\n{key}\n" in text, key
        assert description in text and type_ in text
    for key in ("train.lr", "solver.method", "model.kind", "success.threshold"):
        assert key in {row[0] for row in rows}
    assert "[train]" in text and "[solver]" in text


def test_format_config_shows_values():
    config = load_config(XOR, ["train.lr=0.125", "success.threshold=0.75"])
    lines = format_config(config).splitlines()
    assert any(line.startswith("train.lr ") and line.endswith("= 0.125") for line in lines)
    assert any(line.startswith("success.threshold ") and "0.75" in line for line in lines)


# ----------------------------------------------------------------------------- model kinds
class _ToyConfig(StrictModel):
    width: int = Field(4, ge=1, description="hidden width")


class _Toy(torch.nn.Module):
    Config = _ToyConfig

    @classmethod
    def from_config(cls, config, *, n_inputs, n_outputs, seed, device=None, dtype=None):
        raise NotImplementedError  # never built here: only its options are parsed


def test_a_registered_kind_has_its_options_parsed_with_its_config(tmp_path):
    register_model("test_config_toy", _Toy)
    path = tmp_path / "toy.toml"
    path.write_text(
        textwrap.dedent(
            """
            task = "colenv/XOR-v0"
            [model]
            kind = "test_config_toy"
            initial_state = "rest"
            width = 8
            """
        )
    )
    config = load_config(path)
    assert isinstance(config.model.options, _ToyConfig) and config.model.options.width == 8
    assert config.to_dict()["model"] == {
        "kind": "test_config_toy",
        "initial_state": "rest",
        "width": 8,
    }
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="model.width = 0: Input should be greater"):
        load_config(path, ["model.width=0"])
    with pytest.raises(ConfigError, match="allowed: kind, initial_state, width"):
        load_config(path, ["model.network.n_inputs=2"])
    assert "model.width" in format_config(config)


def test_imports_are_imported_before_the_model_kind_is_looked_up(tmp_path, monkeypatch):
    (tmp_path / "toy_kind_module.py").write_text(
        textwrap.dedent(
            """
            import torch
            from pydantic import Field
            from colenv.config import StrictModel
            from colenv.models.registry import register_model

            class Config(StrictModel):
                depth: int = Field(1, description="depth")

            class Toy(torch.nn.Module):
                Config = Config

                @classmethod
                def from_config(cls, config, **kwargs):
                    raise NotImplementedError

            register_model("toy_from_imports", Toy)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "c.toml"
    path.write_text(
        'task = "colenv/XOR-v0"\nimports = ["toy_kind_module"]\n'
        '[model]\nkind = "toy_from_imports"\ndepth = 3\n'
    )
    assert load_config(path).model.options.depth == 3
    with pytest.raises(ConfigError, match="imports: cannot import module 'no_such_module_x'"):
        load_config(path, ['imports=["no_such_module_x"]'])
