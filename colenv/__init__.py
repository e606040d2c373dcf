"""colenv: cognitive tasks and differentiable laminar cortical-column networks."""

from colenv import registration as _registration  # noqa: F401  (registers the gym ids)
from colenv.core import Trial, TrialTask
from colenv.registration import list_tasks
from colenv.tasks import XOR, Bifurcation, Decision, Parity

__all__ = ["XOR", "Bifurcation", "Decision", "Parity", "Trial", "TrialTask", "list_tasks"]
