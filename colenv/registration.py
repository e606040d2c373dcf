"""Explicit registration of the colenv task ids with Gymnasium.

Gymnasium 1.x has no plugin auto-loading, so ids exist once this module has
run. ``import colenv`` runs it (as does ``gym.register_envs(colenv)``), and
``gym.make("colenv:colenv/Parity-v0")`` imports ``colenv`` on demand.
Entry points are strings, so a task module is imported only when made.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

__all__ = ["TASKS", "list_tasks", "register_tasks"]

TASKS: dict[str, str] = {
    "colenv/Bifurcation-v0": "colenv.tasks.bifurcation:Bifurcation",
    "colenv/Decision-v0": "colenv.tasks.decision:Decision",
    "colenv/XOR-v0": "colenv.tasks.xor:XOR",
    "colenv/Parity-v0": "colenv.tasks.parity:Parity",
}
"""Task id -> entry point."""


def register_tasks() -> None:
    """Register every colenv id; safe to call more than once."""
    for env_id, entry_point in TASKS.items():
        if env_id not in gym.registry:
            # No max_episode_steps: a trial has a fixed length and the task
            # itself terminates at its end, so no TimeLimit wrapper is needed.
            gym.register(id=env_id, entry_point=entry_point)


def list_tasks() -> list[dict[str, Any]]:
    """Every colenv id with its metadata: ``[{"id", "entry_point", "paper", "tags"}, ...]``."""
    tasks = []
    for env_id, entry_point in TASKS.items():
        cls = gym.envs.registration.load_env_creator(entry_point)
        tasks.append(
            {
                "id": env_id,
                "entry_point": entry_point,
                "paper": cls.metadata["paper"],
                "tags": list(cls.metadata["tags"]),
            }
        )
    return tasks


register_tasks()
