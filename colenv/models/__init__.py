"""Models: the laminar column network, the Hopf MLP vector field, and the model registry."""

from colenv.errors import ConfigError
from colenv.models.column import (
    POPULATIONS,
    AreaSpec,
    ColumnNetwork,
    ColumnParams,
    ConnectionSpec,
    Dynamics,
    NetworkSpec,
    load_params,
    population_index,
    transfer,
)
from colenv.models.mlp import HopfField

__all__ = [
    "POPULATIONS",
    "AreaSpec",
    "ColumnNetwork",
    "ColumnParams",
    "ConfigError",
    "ConnectionSpec",
    "Dynamics",
    "HopfField",
    "NetworkSpec",
    "load_params",
    "population_index",
    "transfer",
]
