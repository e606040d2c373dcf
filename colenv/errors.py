"""Errors shared across colenv's layers."""


class DivergenceError(RuntimeError):
    """A rollout or a rest state became NaN/inf or ran away; the message says where."""
