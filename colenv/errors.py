"""Errors shared across colenv's layers (and its trainers)."""


class ConfigError(ValueError):
    """A config file, override or argument has a bad key or value; the message names it and
    what is allowed."""


class DivergenceError(RuntimeError):
    """A rollout or a rest state became NaN/inf or ran away; the message says where."""
