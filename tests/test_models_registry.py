"""The model registry: built-in kinds, user kinds (code, entry point, module:Class), options
validated by each kind's Config, and models that keep their config."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch
from pydantic import Field

import colenv.models.registry as registry
from colenv.config import StrictModel
from colenv.errors import ConfigError
from colenv.models import (
    CTRNN,
    ColumnNetwork,
    HopfField,
    build_model,
    get_model_class,
    list_models,
    register_model,
)


def test_builtins():
    assert {"columns", "hopf_mlp", "ctrnn"} <= set(list_models())
    assert get_model_class("columns") is ColumnNetwork
    assert get_model_class("hopf_mlp") is HopfField
    assert get_model_class("ctrnn") is CTRNN
    for kind in ("columns", "hopf_mlp", "ctrnn"):
        cls = get_model_class(kind)
        assert issubclass(cls.Config, StrictModel) and callable(cls.from_config)


def test_unknown_kind_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown model.kind 'nope'; known: columns, ctrnn"):
        get_model_class("nope")
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module'"):
        get_model_class("no_such_module:Model")
    with pytest.raises(ConfigError, match="has no 'Nope'"):
        get_model_class("colenv.models.ctrnn:Nope")


@pytest.mark.parametrize(
    ("kind", "options", "n_inputs", "n_outputs"),
    [
        ("hopf_mlp", {"hidden": 8, "layers": 1}, 1, 2),
        ("ctrnn", {"n_hidden": 10}, 3, 2),
        (
            "columns",
            {"network": {"n_inputs": 2, "areas": [{"name": "a", "n_columns": 1}]}},
            2,
            1,
        ),
    ],
)
def test_each_kind_builds_keeps_its_config_and_rebuilds_from_it(kind, options, n_inputs, n_outputs):
    model = build_model(kind, options, n_inputs=n_inputs, n_outputs=n_outputs, seed=3)
    assert isinstance(model.config, get_model_class(kind).Config)
    dumped = model.config.model_dump(mode="json")
    again = build_model(kind, dumped, n_inputs=n_inputs, n_outputs=n_outputs, seed=3)
    assert again.config == model.config
    for name, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name
    assert next(model.parameters()).dtype == torch.float32
    double = build_model(
        kind, options, n_inputs=n_inputs, n_outputs=n_outputs, seed=3, dtype=torch.float64
    )
    assert next(double.parameters()).dtype == torch.float64


def test_options_are_checked_by_the_kinds_config():
    with pytest.raises(ConfigError, match="model.hidden = 0"):
        build_model("hopf_mlp", {"hidden": 0}, n_inputs=1, n_outputs=2, seed=0)
    with pytest.raises(ConfigError, match="unknown key 'model.width'; allowed: hidden, layers"):
        build_model("hopf_mlp", {"width": 3}, n_inputs=1, n_outputs=2, seed=0)
    with pytest.raises(ConfigError, match="outputs its state"):
        build_model("hopf_mlp", {}, n_inputs=1, n_outputs=1, seed=0)
    with pytest.raises(ConfigError, match="model.network.n_inputs = 1 but the task has 2"):
        build_model("columns", {}, n_inputs=2, n_outputs=1, seed=0)


class TinyConfig(StrictModel):
    width: int = Field(3, ge=1, description="units")


class Tiny(torch.nn.Module):
    """A user's model (only what the registry needs)."""

    Config = TinyConfig

    def __init__(self, config, n_inputs, n_outputs):
        super().__init__()
        self.config = config
        self.w = torch.nn.Parameter(torch.zeros(config.width, n_inputs + n_outputs))

    @classmethod
    def from_config(cls, config, *, n_inputs, n_outputs, seed, device=None, dtype=None):
        return cls(config, n_inputs, n_outputs)


def test_register_a_users_model():
    register_model("tiny", Tiny)
    assert "tiny" in list_models()
    model = build_model("tiny", {"width": 5}, n_inputs=2, n_outputs=1, seed=0)
    assert model.w.shape == (5, 3) and model.config.width == 5
    model = build_model("tests.test_models_registry:Tiny", None, n_inputs=1, n_outputs=1, seed=0)
    assert model.w.shape == (3, 2)
    with pytest.raises(ConfigError, match="needs a class attribute Config"):
        register_model("bad", torch.nn.Linear)
    with pytest.raises(ConfigError, match="without ':'"):
        register_model("a:b", Tiny)


def test_entry_point_kind_is_loaded_lazily(monkeypatch):
    ep = importlib.metadata.EntryPoint(
        name="tiny-ep", value="tests.test_models_registry:Tiny", group="colenv.models"
    )
    monkeypatch.setattr(
        registry.importlib.metadata,
        "entry_points",
        lambda group: [ep] if group == "colenv.models" else [],
    )
    assert "tiny-ep" in list_models()
    assert get_model_class("tiny-ep") is Tiny
