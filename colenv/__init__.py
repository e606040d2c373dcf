"""colenv: cognitive tasks and differentiable laminar cortical-column networks.

Importing the package registers the Gymnasium ids colenv/Bifurcation-v0, colenv/Decision-v0,
colenv/XOR-v0 and colenv/Parity-v0.
"""

from colenv import registration as _registration  # noqa: F401  (registers the gym ids)
from colenv.core import Trial, TrialTask
from colenv.registration import list_tasks
from colenv.solve import (
    AdaptiveOptions,
    DivergenceError,
    FastOptions,
    Rollout,
    RolloutStats,
    SolverConfig,
    TorchsdeOptions,
    rollout,
)
from colenv.tasks import XOR, Bifurcation, Decision, Parity

__all__ = [
    "XOR",
    "AdaptiveOptions",
    "Bifurcation",
    "Decision",
    "DivergenceError",
    "FastOptions",
    "Parity",
    "Rollout",
    "RolloutStats",
    "SolverConfig",
    "TorchsdeOptions",
    "Trial",
    "TrialTask",
    "list_tasks",
    "rollout",
]
