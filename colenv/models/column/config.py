"""Options of the column model under ``[model]`` (``kind = "columns"``) and its builder."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, field_validator

from colenv.config import StrictModel
from colenv.errors import ConfigError
from colenv.models.column.params import load_params
from colenv.models.column.spec import NetworkSpec

__all__ = ["ColumnsConfig", "columns_from_config"]


class ColumnsConfig(StrictModel):
    """``[model]`` of a column network: parameter overrides and the network layout."""

    params: dict[str, Any] = Field(
        default_factory=dict,
        description='overrides of config/model.toml, {"section.key": value} or nested tables',
    )
    network: NetworkSpec = Field(
        default_factory=NetworkSpec,
        description="the layout (areas, connections, readout, initial weights): a NetworkSpec",
    )

    @field_validator("params")
    @classmethod
    def _params(cls, value: dict[str, Any]) -> dict[str, Any]:
        load_params(overrides=value)  # unknown keys and bad values fail here
        return value


def columns_from_config(
    cls: type,
    config: ColumnsConfig,
    *,
    n_inputs: int,
    n_outputs: int,
    seed: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
):
    """A ``cls`` (ColumnNetwork) from ``config``, checked against the task's inputs and outputs.

    The column model draws no random numbers from ``seed``: its initial weights are the
    anatomical ones, and the optional jitter has its own ``network.init_seed``.
    """
    spec = config.network
    if spec.n_inputs != n_inputs:
        raise ConfigError(
            f"model.network.n_inputs = {spec.n_inputs} but the task has {n_inputs} inputs; "
            "set model.network.n_inputs to match"
        )
    model = cls(load_params(overrides=config.params), spec)
    if model.n_outputs != n_outputs:
        raise ConfigError(
            f"the network reads out {model.n_outputs} column(s) (last area "
            f"{spec.areas[-1].name!r} has {spec.areas[-1].n_columns}) but the task has "
            f"{n_outputs} output(s); make the last area's n_columns match"
        )
    model.config = config
    return model.to(device=device, dtype=dtype or torch.float32)
