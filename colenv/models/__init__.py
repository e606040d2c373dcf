"""Column-network models: parameters, transfer function, ColumnNetwork, Hopf MLP field."""

from colenv.models.mlp import HopfField
from colenv.models.network import AreaSpec, ColumnNetwork, ConnectionSpec, Dynamics, NetworkSpec
from colenv.models.params import (
    POPULATIONS,
    ColumnParams,
    ConfigError,
    load_params,
    population_index,
)
from colenv.models.transfer import transfer

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
