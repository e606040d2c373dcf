"""Models: the laminar column network, the Hopf MLP vector field, a Dale rate RNN, and the
registry that builds any of them (or a user's own) by kind."""

from colenv.errors import ConfigError
from colenv.models.column import (
    POPULATIONS,
    AreaSpec,
    ColumnNetwork,
    ColumnParams,
    ConnectionSpec,
    Dynamics,
    GatingSpec,
    NetworkSpec,
    load_params,
    population_index,
    transfer,
)
from colenv.models.ctrnn import CTRNN, CTRNNConfig
from colenv.models.mlp import HopfField, HopfFieldConfig
from colenv.models.registry import build_model, get_model_class, list_models, register_model

__all__ = [
    "POPULATIONS",
    "CTRNN",
    "AreaSpec",
    "CTRNNConfig",
    "ColumnNetwork",
    "ColumnParams",
    "ConfigError",
    "ConnectionSpec",
    "Dynamics",
    "GatingSpec",
    "HopfField",
    "HopfFieldConfig",
    "NetworkSpec",
    "build_model",
    "get_model_class",
    "list_models",
    "load_params",
    "population_index",
    "register_model",
    "transfer",
]
