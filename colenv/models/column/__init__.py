"""The laminar cortical-column model: parameters, transfer function, network, and the fast
integrators (torch and a native C kernel) that the generic rollout asks it for."""

from colenv.models.column.network import ColumnNetwork, Dynamics
from colenv.models.column.params import POPULATIONS, ColumnParams, load_params, population_index
from colenv.models.column.spec import AreaSpec, ConnectionSpec, GatingSpec, NetworkSpec
from colenv.models.column.transfer import transfer

__all__ = [
    "POPULATIONS",
    "AreaSpec",
    "ColumnNetwork",
    "ColumnParams",
    "ConnectionSpec",
    "Dynamics",
    "GatingSpec",
    "NetworkSpec",
    "load_params",
    "population_index",
    "transfer",
]
