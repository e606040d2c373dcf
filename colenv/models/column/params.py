"""Column parameters: load ``config/model.toml`` into a validated, immutable object.

The file is the one source of truth for the science defaults (SCIENCE.md §1,
Potjans & Diesmann 2014). Every check names the offending key and what is allowed,
so a typo in a config file fails loudly instead of silently changing the model.
"""

from __future__ import annotations

import copy
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from colenv.errors import ConfigError
from colenv.resources import model_config_path

POPULATIONS = ("L23e", "L23i", "L4e", "L4i", "L5e", "L5i", "L6e", "L6i")
"""Population order inside every column (e = excitatory, i = inhibitory)."""
N_POP = len(POPULATIONS)
EXCITATORY = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
POPULATION_ALIASES = {"L2/3e": "L23e", "L2/3i": "L23i"}

DEFAULT_MODEL_TOML = model_config_path()  # config/ in a clone, colenv._config in a wheel

# section -> key -> kind ("pos" positive float, "nonneg", "vec8", "vec8pos", "mat8prob", ...)
_SCHEMA: dict[str, dict[str, str]] = {
    "neuron": {
        "tau_s_ms": "pos",
        "tau_m_ms": "pos",
        "tau_a_ms": "pos",
        "capacitance": "pos",
        "kappa": "vec8nonneg",
    },
    "transfer": {"a": "pos", "b": "float", "d": "pos", "max_rate_hz": "nonneg"},
    "synapses": {
        "j_na": "pos",
        "inhibitory_scale": "inh",
        "l4e_to_l23e_factor": "pos",
        "l4e_to_l23e_doubles": "doubles",
    },
    "background": {"nu_bg_hz": "nonneg", "k_bg": "vec8nonneg"},
    "input": {"k_ff": "vec8nonneg"},
    "connectivity": {"p": "mat8prob"},
    "population_sizes": {"*": "vec8pos"},
}


def population_index(name: str) -> int:
    """Index of a population name (``"L23e"`` or ``"L2/3e"``) in :data:`POPULATIONS`."""
    key = POPULATION_ALIASES.get(name, name)
    if key not in POPULATIONS:
        raise ConfigError(f"unknown population {name!r}; allowed: {', '.join(POPULATIONS)}")
    return POPULATIONS.index(key)


@dataclass(frozen=True)
class ColumnParams:
    """Validated column parameters (times in ms, rates in Hz). Build with :func:`load_params`."""

    tau_s_ms: float
    tau_m_ms: float
    tau_a_ms: float
    capacitance: float
    kappa: tuple[float, ...]
    a: float
    b: float
    d: float
    max_rate_hz: float
    j_na: float
    inhibitory_scale: str | float
    l4e_to_l23e_factor: float
    l4e_to_l23e_doubles: str
    nu_bg_hz: float
    k_bg: tuple[float, ...]
    k_ff: tuple[float, ...]
    p: tuple[tuple[float, ...], ...]
    population_sizes: dict[str, tuple[float, ...]]

    @property
    def resistance(self) -> float:
        """R = tau_m / C with tau_m in seconds (the rate model's unit system)."""
        return self.tau_m_ms * 1e-3 / self.capacitance

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
        The L4e -> L2/3e connection is doubled, in probability or in weight.
        """
        n = self.sizes(area)
        p = torch.tensor(self.p, dtype=torch.float64)
        factor = self.l4e_to_l23e_factor
        if self.l4e_to_l23e_doubles == "probability":
            p = p.clone()
            p[0, 2] = p[0, 2] * factor
            if p[0, 2] >= 1:
                raise ConfigError(
                    "synapses.l4e_to_l23e_factor makes the L4e -> L2/3e probability >= 1"
                )
        nn_ = n[:, None] * n[None, :]
        k = torch.log1p(-p) / torch.log1p(-1.0 / nn_) / n[:, None]
        j = torch.full((N_POP, N_POP), self.j_na, dtype=torch.float64)
        for src in range(1, N_POP, 2):  # inhibitory sources
            if self.inhibitory_scale == "layer_ratio":
                g = float(n[src - 1] / n[src])
            else:
                g = float(self.inhibitory_scale)
            j[:, src] = -g * self.j_na
        if self.l4e_to_l23e_doubles == "weight":
            j[0, 2] = j[0, 2] * factor
        return k * j

    def background_drive(self) -> torch.Tensor:
        """Background input w_bg * nu_bg per population (nA * Hz), float64 [8]."""
        return torch.tensor(self.k_bg, dtype=torch.float64) * self.j_na * self.nu_bg_hz

    def input_weights(self) -> torch.Tensor:
        """Feedforward (thalamic-like) weight per population, K_ff * J, float64 [8]."""
        return torch.tensor(self.k_ff, dtype=torch.float64) * self.j_na


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _check(kind: str, key: str, value: Any) -> Any:
    """Validate one value; return it normalised (tuples for lists)."""
    if kind in ("pos", "nonneg", "float"):
        if not _is_number(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        if kind == "pos" and value <= 0:
            raise ConfigError(f"{key} must be > 0, got {value!r}")
        if kind == "nonneg" and value < 0:
            raise ConfigError(f"{key} must be >= 0, got {value!r}")
        return float(value)
    if kind.startswith("vec8"):
        if not isinstance(value, list | tuple) or len(value) != N_POP:
            raise ConfigError(
                f"{key} must be a list of {N_POP} numbers (one per population "
                f"{', '.join(POPULATIONS)}), got {value!r}"
            )
        for i, x in enumerate(value):
            if not _is_number(x):
                raise ConfigError(f"{key}[{i}] must be a finite number, got {x!r}")
            if kind == "vec8pos" and x <= 0:
                raise ConfigError(f"{key}[{i}] ({POPULATIONS[i]}) must be > 0, got {x!r}")
            if kind == "vec8nonneg" and x < 0:
                raise ConfigError(f"{key}[{i}] ({POPULATIONS[i]}) must be >= 0, got {x!r}")
        return tuple(float(x) for x in value)
    if kind == "mat8prob":
        if not isinstance(value, list | tuple) or len(value) != N_POP:
            raise ConfigError(f"{key} must be an 8x8 matrix (8 rows of 8), got {len(value)} rows")
        rows = []
        for i, row in enumerate(value):
            if not isinstance(row, list | tuple) or len(row) != N_POP:
                raise ConfigError(f"{key} must be an 8x8 matrix; row {i} is {row!r}")
            for j, x in enumerate(row):
                if not _is_number(x) or not 0.0 <= x <= 1.0:
                    raise ConfigError(
                        f"{key}[{i}][{j}] ({POPULATIONS[j]} -> {POPULATIONS[i]}) must be a "
                        f"probability in [0, 1], got {x!r}"
                    )
            rows.append(tuple(float(x) for x in row))
        return tuple(rows)
    if kind == "inh":
        if value == "layer_ratio":
            return value
        if _is_number(value) and value > 0:
            return float(value)
        raise ConfigError(f"{key} must be 'layer_ratio' or a number > 0, got {value!r}")
    if kind == "doubles":
        if value not in ("probability", "weight"):
            raise ConfigError(f"{key} must be 'probability' or 'weight', got {value!r}")
        return value
    raise AssertionError(kind)


def _apply_override(raw: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if len(parts) != 2:
        raise ConfigError(f"override key {dotted!r} must look like 'section.key'")
    section, key = parts
    if section not in _SCHEMA:
        raise ConfigError(f"unknown section {section!r}; allowed: {', '.join(_SCHEMA)}")
    if key not in _SCHEMA[section] and "*" not in _SCHEMA[section]:
        allowed = ", ".join(_SCHEMA[section])
        raise ConfigError(f"unknown key {dotted!r}; allowed in [{section}]: {allowed}")
    raw.setdefault(section, {})[key] = value


def params_from_dict(raw: dict, source: str = "<dict>") -> ColumnParams:
    """Validate a parsed model config (as from TOML) and build :class:`ColumnParams`."""
    for section in raw:
        if section not in _SCHEMA:
            raise ConfigError(
                f"{source}: unknown section [{section}]; allowed: {', '.join(_SCHEMA)}"
            )
    values: dict[str, Any] = {}
    for section, keys in _SCHEMA.items():
        table = raw.get(section)
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: missing section [{section}]")
        if "*" in keys:
            if not table:
                raise ConfigError(f"{source}: [{section}] must define at least one area")
            values[section] = {
                name: _check(keys["*"], f"{section}.{name}", v) for name, v in table.items()
            }
            continue
        for key in table:
            if key not in keys:
                raise ConfigError(
                    f"{source}: unknown key {section}.{key}; allowed: {', '.join(keys)}"
                )
        for key, kind in keys.items():
            if key not in table:
                raise ConfigError(f"{source}: missing key {section}.{key}")
            values[key] = _check(kind, f"{section}.{key}", table[key])
    return ColumnParams(**values)


def load_params(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> ColumnParams:
    """Load and validate column parameters.

    Args:
        path: a TOML file laid out like ``config/model.toml`` (the default).
        overrides: ``{"section.key": value}`` applied before validation, e.g.
            ``{"neuron.tau_m_ms": 20.0}`` for the predecessor's membrane time constant.
    """
    path = Path(path) if path is not None else DEFAULT_MODEL_TOML
    if not path.is_file():
        raise ConfigError(f"model config {str(path)!r} not found")
    with path.open("rb") as fh:
        try:
            raw = tomllib.load(fh)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not valid TOML: {err}") from err
    raw = copy.deepcopy(raw)
    for key, value in (overrides or {}).items():
        _apply_override(raw, key, value)
    return params_from_dict(raw, source=str(path))
