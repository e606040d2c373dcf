"""Column parameters: ``config/model.toml`` as a validated, immutable :class:`ColumnParams`.

The file is the one source of truth for the science defaults (Potjans & Diesmann 2014, and
the transfer function of the Maastricht dynamic-mean-field column); every section of it is a
:class:`colenv.config.StrictModel` here, so a typo or an out-of-range value is an error that
names the key and what is allowed instead of silently changing the model.

    load_params()                                          # config/model.toml
    load_params(overrides={"neuron.tau_m_ms": 20.0})       # the predecessor's membrane tau
"""

from __future__ import annotations

import copy
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import AfterValidator, Field, field_validator, model_validator

from colenv.config import StrictModel, parse
from colenv.errors import ConfigError
from colenv.resources import model_config_path

__all__ = [
    "EXCITATORY",
    "N_POP",
    "POPULATIONS",
    "POPULATION_ALIASES",
    "BackgroundParams",
    "ColumnParams",
    "ConnectivityParams",
    "InputParams",
    "NeuronParams",
    "SynapseParams",
    "TransferParams",
    "load_params",
    "population_index",
]

POPULATIONS = ("L23e", "L23i", "L4e", "L4i", "L5e", "L5i", "L6e", "L6i")
"""Population order inside every column (e = excitatory, i = inhibitory)."""
N_POP = len(POPULATIONS)
EXCITATORY = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
POPULATION_ALIASES = {"L2/3e": "L23e", "L2/3i": "L23i"}


def population_index(name: str) -> int:
    """Index of a population name (``"L23e"`` or ``"L2/3e"``) in :data:`POPULATIONS`."""
    key = POPULATION_ALIASES.get(name, name) if isinstance(name, str) else name
    if key not in POPULATIONS:
        raise ConfigError(f"unknown population {name!r}; allowed: {', '.join(POPULATIONS)}")
    return POPULATIONS.index(key)


# ----------------------------------------------------------------------------- value checks
def _per_population(low: float, strict: bool):
    """A check of a list of one finite number per population, each >= low (> low: strict)."""

    def check(values: tuple[float, ...]) -> tuple[float, ...]:
        if len(values) != N_POP:
            raise ValueError(
                f"must be a list of {N_POP} numbers, one per population "
                f"({', '.join(POPULATIONS)}); got {len(values)}"
            )
        for i, x in enumerate(values):
            if x < low or (strict and x == low):
                raise ValueError(
                    f"entry {i} ({POPULATIONS[i]}) must be {'>' if strict else '>='} {low:g}, "
                    f"got {x:g}"
                )
        return tuple(float(x) for x in values)

    return check


def _probability_matrix(rows: tuple[tuple[float, ...], ...]) -> tuple[tuple[float, ...], ...]:
    if len(rows) != N_POP or any(len(row) != N_POP for row in rows):
        shape = [len(row) for row in rows]
        raise ValueError(
            f"must be an {N_POP}x{N_POP} matrix p[target][source] ({N_POP} rows of {N_POP}); "
            f"got row lengths {shape}"
        )
    for i, row in enumerate(rows):
        for j, x in enumerate(row):
            if not 0.0 <= x <= 1.0:
                raise ValueError(
                    f"entry [{i}][{j}] ({POPULATIONS[j]} -> {POPULATIONS[i]}) must be a "
                    f"probability in [0, 1], got {x:g}"
                )
    return tuple(tuple(float(x) for x in row) for row in rows)


NonNegativeVector = Annotated[tuple[float, ...], AfterValidator(_per_population(0.0, False))]
"""One number >= 0 per population, in :data:`POPULATIONS` order."""
PositiveVector = Annotated[tuple[float, ...], AfterValidator(_per_population(0.0, True))]
"""One number > 0 per population, in :data:`POPULATIONS` order."""
ProbabilityMatrix = Annotated[tuple[tuple[float, ...], ...], AfterValidator(_probability_matrix)]
"""8 x 8 connection probabilities p[target][source]."""


# ----------------------------------------------------------------------------- sections
class NeuronParams(StrictModel):
    """``[neuron]``: time constants, capacitance and adaptation."""

    tau_s_ms: float = Field(gt=0, description="synaptic time constant (ms)")
    tau_m_ms: float = Field(gt=0, description="membrane time constant (ms)")
    tau_a_ms: float = Field(gt=0, description="adaptation time constant (ms)")
    capacitance: float = Field(
        gt=0, description="membrane capacitance in the rate model's units (R = tau_m / C)"
    )
    kappa: NonNegativeVector = Field(description="adaptation strength per population")


class TransferParams(StrictModel):
    """``[transfer]``: f(x) = (a x - b) / (1 - exp(-d (a x - b))), optional soft ceiling."""

    a: float = Field(gt=0, description="gain of the transfer function (Hz per nA)")
    b: float = Field(description="threshold offset of the transfer function (Hz)")
    d: float = Field(gt=0, description="curvature of the transfer function (s)")
    max_rate_hz: float = Field(
        ge=0, description="soft rate ceiling max * tanh(f / max), Hz; 0 = no ceiling"
    )


class SynapseParams(StrictModel):
    """``[synapses]``: weights of the within-column connections."""

    j_na: float = Field(gt=0, description="baseline excitatory weight (nA)")
    inhibitory_scale: Literal["layer_ratio"] | float = Field(
        description='inhibitory source weight -g J: g (> 0), or "layer_ratio" (-J N_e/N_i)'
    )
    l4e_to_l23e_factor: float = Field(gt=0, description="factor on the L4e -> L2/3e connection")
    l4e_to_l23e_doubles: Literal["probability", "weight"] = Field(
        description="what the L4e -> L2/3e factor multiplies"
    )

    @field_validator("inhibitory_scale", mode="plain")
    @classmethod
    def _scale(cls, value: Any) -> str | float:
        if value == "layer_ratio":
            return value
        if (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and value > 0
        ):
            return float(value)
        raise ValueError("must be 'layer_ratio' or a number > 0")


class BackgroundParams(StrictModel):
    """``[background]``: Poisson background drive."""

    nu_bg_hz: float = Field(ge=0, description="background rate per synapse (Hz)")
    k_bg: NonNegativeVector = Field(description="background in-degree per population")


class InputParams(StrictModel):
    """``[input]``: the feedforward (thalamic-like) input."""

    k_ff: NonNegativeVector = Field(description="in-degree of the feedforward input per population")


class ConnectivityParams(StrictModel):
    """``[connectivity]``: within-column connection probabilities."""

    p: ProbabilityMatrix = Field(description="connection probability p[target][source]")


class ColumnParams(StrictModel):
    """Validated column parameters (times in ms, rates in Hz), one field per section of
    ``config/model.toml``. Build with :func:`load_params`."""

    neuron: NeuronParams = Field(description="time constants, capacitance, adaptation")
    transfer: TransferParams = Field(description="the rate transfer function")
    synapses: SynapseParams = Field(description="within-column weights")
    background: BackgroundParams = Field(description="background drive")
    input: InputParams = Field(description="feedforward input in-degrees")
    connectivity: ConnectivityParams = Field(description="within-column connection probabilities")
    population_sizes: dict[str, PositiveVector] = Field(
        min_length=1, description="neurons per population of each area (the keys name areas)"
    )

    @model_validator(mode="after")
    def _doubled_probability(self) -> ColumnParams:
        s = self.synapses
        if (
            s.l4e_to_l23e_doubles == "probability"
            and self.connectivity.p[0][2] * (s.l4e_to_l23e_factor) >= 1
        ):
            raise ValueError(
                "synapses.l4e_to_l23e_factor makes the L4e -> L2/3e probability "
                f"({self.connectivity.p[0][2]:g} x {s.l4e_to_l23e_factor:g}) >= 1"
            )
        return self

    @property
    def resistance(self) -> float:
        """R = tau_m / C with tau_m in seconds (the rate model's unit system)."""
        return self.neuron.tau_m_ms * 1e-3 / self.neuron.capacitance

    def sizes(self, area: str) -> torch.Tensor:
        """Population sizes of ``area`` (a key of ``[population_sizes]``), float64 [8]."""
        if area not in self.population_sizes:
            allowed = ", ".join(sorted(self.population_sizes))
            raise ConfigError(f"unknown area {area!r} for population_sizes; allowed: {allowed}")
        return torch.tensor(self.population_sizes[area], dtype=torch.float64)

    def recurrent_weights(self, area: str) -> torch.Tensor:
        """Effective within-column weights W[i, j] = K[i, j] * J[i, j] (target i, source j), [8, 8].

        In-degree K[i, j] = ln(1 - p) / ln(1 - 1/(N_i N_j)) / N_i (P&D 2014, eq. for the
        total synapse count divided by the target size). J = +j_na for an excitatory source;
        an inhibitory source gets -J * N_e/N_i of its layer ("layer_ratio") or -g J.
        The L4e -> L2/3e connection is multiplied, in probability or in weight.
        """
        n = self.sizes(area)
        p = torch.tensor(self.connectivity.p, dtype=torch.float64)
        s = self.synapses
        if s.l4e_to_l23e_doubles == "probability":
            p[0, 2] = p[0, 2] * s.l4e_to_l23e_factor
        nn_ = n[:, None] * n[None, :]
        k = torch.log1p(-p) / torch.log1p(-1.0 / nn_) / n[:, None]
        j = torch.full((N_POP, N_POP), s.j_na, dtype=torch.float64)
        for src in range(1, N_POP, 2):  # inhibitory sources
            if s.inhibitory_scale == "layer_ratio":
                g = float(n[src - 1] / n[src])
            else:
                g = float(s.inhibitory_scale)
            j[:, src] = -g * s.j_na
        if s.l4e_to_l23e_doubles == "weight":
            j[0, 2] = j[0, 2] * s.l4e_to_l23e_factor
        return k * j

    def background_drive(self) -> torch.Tensor:
        """Background input w_bg * nu_bg per population (nA * Hz), float64 [8]."""
        bg = self.background
        return torch.tensor(bg.k_bg, dtype=torch.float64) * self.synapses.j_na * bg.nu_bg_hz


# ----------------------------------------------------------------------------- loading
def _set_override(raw: dict, key: str, value: Any) -> None:
    """Set ``section.key`` (or a nested ``{section: {key: value}}``) in ``raw``."""
    if isinstance(value, Mapping):
        for sub, v in value.items():
            _set_override(raw, f"{key}.{sub}", v)
        return
    parts = key.split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(
            f"model parameter override {key!r} must look like 'section.key' "
            f"(e.g. 'neuron.tau_m_ms'); sections: {', '.join(ColumnParams.model_fields)}"
        )
    section, name = parts
    table = raw.setdefault(section, {})
    if not isinstance(table, dict):  # an unknown section: parse names it
        raw[section] = table = {}
    table[name] = value


def load_params(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> ColumnParams:
    """Load and validate column parameters.

    Args:
        path: a TOML file laid out like ``config/model.toml`` (the default, found by
            :func:`colenv.resources.model_config_path`).
        overrides: applied before validation: ``{"section.key": value}`` (e.g.
            ``{"neuron.tau_m_ms": 20.0}``, the predecessor's membrane time constant) or nested
            tables (``{"neuron": {"tau_m_ms": 20.0}}``).

    Raises:
        ConfigError: a missing or invalid file, an unknown section or key, or a bad value;
            the message names the key and what is allowed.
    """
    path = Path(path) if path is not None else model_config_path()
    if not path.is_file():
        raise ConfigError(f"model config {str(path)!r} not found")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err
    raw = copy.deepcopy(raw)
    for key, value in (overrides or {}).items():
        _set_override(raw, key, value)
    try:
        return parse(ColumnParams, raw)
    except ConfigError as err:
        source = f"{path}" + (" with overrides" if overrides else "")
        raise ConfigError(f"{err} (model parameters: {source})") from None
