"""The colenv tasks, one per module; each module's docstring is its spec."""

from colenv.tasks.bifurcation import Bifurcation
from colenv.tasks.decision import Decision
from colenv.tasks.parity import Parity
from colenv.tasks.xor import XOR

__all__ = ["XOR", "Bifurcation", "Decision", "Parity"]
