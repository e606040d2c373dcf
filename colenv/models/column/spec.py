"""Layout of a column network: areas, connection kinds, readout and initial-weight options.

A :class:`NetworkSpec` says which columns exist, which connections exist between which
populations, which of them train and how the initial weights are drawn; it holds no tensors.
:class:`colenv.models.ColumnNetwork` builds the weights from it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from colenv.models.column.params import N_POP, ConfigError, population_index

Pair = tuple[str, str]


@dataclass(frozen=True)
class AreaSpec:
    """One area: ``n_columns`` identical columns with the population sizes of ``sizes``."""

    name: str
    n_columns: int
    sizes: str = "mt"


@dataclass(frozen=True)
class ConnectionSpec:
    """One kind of connection.

    Attributes:
        enabled: whether the kind exists at all.
        pairs: allowed (source population, target population) pairs; None = the kind's default.
        trainable: False, True (every allowed entry), or a tuple of (source, target) pairs that
            train while the other allowed entries stay fixed.
        init_k: in-degree used for the initial weight (W = init_k * J) where the kind has no
            anatomical default; None = the kind's default.
        edges: explicit wiring instead of ``pairs`` (lateral, feedforward and input only): a
            tuple of (source, target, initial weight in nA) with populations named as in
            ``ColumnNetwork.population_names`` ("area[column].Pop", e.g. "a1[0].L5e") and input
            channels as "input[k]". Exactly these entries exist (the mask), each starting at its
            given magnitude with the source's Dale sign. Lateral edges stay inside one area
            (between different columns), feedforward edges go from area n to area n + 1, input
            edges end in the first area. None = the kind's pairs-based default wiring.
    """

    enabled: bool = True
    pairs: tuple[Pair, ...] | None = None
    trainable: bool | tuple[Pair, ...] = False
    init_k: float | None = None
    edges: tuple[tuple[str, str, float], ...] | None = None

    def __post_init__(self) -> None:
        if self.edges is not None and (self.pairs is not None or self.init_k is not None):
            raise ConfigError(
                "a connection takes either edges or pairs/init_k, not both (edges fix both the "
                "wiring and the initial weights)"
            )


@dataclass(frozen=True)
class NetworkSpec:
    """Layout of a column network. Build from a dict with :meth:`from_dict`.

    Attributes:
        areas: feedforward chain of areas; the first receives the input, the last is read out.
        n_inputs: number of input channels (Hz).
        input_mode: "dense" (every channel -> every first-area column) or "one_to_one"
            (channel k -> column k; needs n_inputs == columns of the first area).
        input: input connection (pairs are ("input", target population)).
        recurrent, lateral, feedforward: the other connection kinds.
        readout: population read out from every column of the last area.
        readout_variable: "r" (the filtered rate, the model's observable) or "phi" (f(v - a)).
        noise_std: stationary std of the membrane potential of an isolated population under
            the SDE (model units, "mV"); the diffusion is noise_std * sqrt(2 / tau_m) on v.
        parametrization: "linear" (weights in units of their initial value, Dale by
            projection) or "log" (log magnitudes: multiplicative learning, Dale built in).
        init_jitter: std of a log-normal factor exp(jitter * N(0, 1)) on every trainable initial
            weight (0 = none). Identical columns fed the same input get identical gradients and
            stay identical forever; the jitter breaks that symmetry (e.g. Parity's 8 first-area
            columns must come to respond to different numbers of active bits).
        init_seed: seed of that jitter (same seed, same initial network).
    """

    areas: tuple[AreaSpec, ...] = (AreaSpec("mt", 1),)
    n_inputs: int = 1
    input_mode: str = "dense"
    input: ConnectionSpec = ConnectionSpec(pairs=(("input", "L4e"), ("input", "L4i")))
    recurrent: ConnectionSpec = ConnectionSpec()
    lateral: ConnectionSpec = ConnectionSpec(enabled=False)
    feedforward: ConnectionSpec = ConnectionSpec()
    readout: str = "L23e"
    readout_variable: str = "r"
    noise_std: float = 1.0
    parametrization: str = "linear"
    init_jitter: float = 0.0
    init_seed: int = 0

    def __post_init__(self) -> None:
        if not self.areas:
            raise ConfigError("network.areas must list at least one area")
        for area in self.areas:
            if not isinstance(area.n_columns, int) or area.n_columns < 1:
                raise ConfigError(
                    f"network.areas: area {area.name!r} needs n_columns >= 1, got {area.n_columns!r}"
                )
        if not isinstance(self.n_inputs, int) or self.n_inputs < 0:
            raise ConfigError(f"network.n_inputs must be an integer >= 0, got {self.n_inputs!r}")
        if self.input_mode not in ("dense", "one_to_one"):
            raise ConfigError(
                f"network.input_mode must be 'dense' or 'one_to_one', got {self.input_mode!r}"
            )
        if self.input_mode == "one_to_one" and self.n_inputs != self.areas[0].n_columns:
            raise ConfigError(
                f"network.input_mode='one_to_one' needs n_inputs ({self.n_inputs}) == columns of "
                f"the first area ({self.areas[0].n_columns})"
            )
        population_index(self.readout)
        if self.readout_variable not in ("r", "phi"):
            raise ConfigError(
                f"network.readout_variable must be 'r' or 'phi', got {self.readout_variable!r}"
            )
        if self.parametrization not in ("linear", "log"):
            raise ConfigError(
                f"network.parametrization must be 'linear' or 'log', got {self.parametrization!r}"
            )
        if self.noise_std < 0:
            raise ConfigError(f"network.noise_std must be >= 0, got {self.noise_std!r}")
        if not isinstance(self.init_jitter, int | float) or not 0 <= self.init_jitter <= 1:
            raise ConfigError(f"network.init_jitter must be in [0, 1], got {self.init_jitter!r}")
        if not isinstance(self.init_seed, int) or isinstance(self.init_seed, bool):
            raise ConfigError(f"network.init_seed must be an integer, got {self.init_seed!r}")

    @property
    def n_columns(self) -> int:
        return sum(a.n_columns for a in self.areas)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> NetworkSpec:
        """Build from a TOML-like dict; unknown keys are errors naming the key."""
        allowed = {f.name for f in fields(cls)}
        for key in raw:
            if key not in allowed:
                raise ConfigError(
                    f"unknown network key {key!r}; allowed: {', '.join(sorted(allowed))}"
                )
        kw: dict[str, Any] = dict(raw)
        if "areas" in kw:
            areas = []
            for i, a in enumerate(kw["areas"]):
                if isinstance(a, AreaSpec):
                    areas.append(a)
                    continue
                if not isinstance(a, dict) or set(a) - {"name", "n_columns", "sizes"}:
                    raise ConfigError(
                        f"network.areas[{i}] must be a table with keys name, n_columns, "
                        f"sizes; got {a!r}"
                    )
                areas.append(AreaSpec(**a))
            kw["areas"] = tuple(areas)
        for kind in ("input", "recurrent", "lateral", "feedforward"):
            if kind in kw and isinstance(kw[kind], dict):
                kw[kind] = _connection_from_dict(kind, kw[kind], getattr(cls(), kind))
        return cls(**kw)


def _connection_from_dict(kind: str, raw: dict, default: ConnectionSpec) -> ConnectionSpec:
    allowed = {f.name for f in fields(ConnectionSpec)}
    for key in raw:
        if key not in allowed:
            raise ConfigError(
                f"unknown key network.{kind}.{key}; allowed: {', '.join(sorted(allowed))}"
            )
    kw = dict(raw)
    for key in ("pairs",):
        if key in kw and kw[key] is not None:
            kw[key] = tuple(tuple(p) for p in kw[key])
    if isinstance(kw.get("trainable"), list):
        kw["trainable"] = tuple(tuple(p) for p in kw["trainable"])
    if kw.get("edges") is not None:
        if kind == "recurrent":
            raise ConfigError(
                "network.recurrent.edges: explicit edges are for lateral, "
                "feedforward and input connections (recurrent wiring is P&D's)"
            )
        edges = []
        for e in kw["edges"]:
            if not isinstance(e, list | tuple) or len(e) != 3:
                raise ConfigError(
                    f"network.{kind}.edges: each edge must be [source, target, weight_nA], "
                    f"got {e!r}"
                )
            edges.append((str(e[0]), str(e[1]), e[2]))
        kw["edges"] = tuple(edges)
        for key in ("pairs", "init_k"):
            if kw.get(key) is not None:
                raise ConfigError(
                    f"network.{kind}: give either edges or {key}, not both (edges fix both "
                    "the wiring and the initial weights)"
                )
            kw[key] = None  # not the kind's default pairs either
    return replace(default, **kw)


def _pair_matrix(pairs: tuple[Pair, ...], kind: str) -> torch.Tensor:
    """[8 target, 8 source] 0/1 matrix of allowed (source, target) population pairs."""
    m = torch.zeros(N_POP, N_POP, dtype=torch.float64)
    for pair in pairs:
        if len(pair) != 2:
            raise ConfigError(f"network.{kind}: pairs must be (source, target), got {pair!r}")
        src, tgt = pair
        m[population_index(tgt), population_index(src)] = 1.0
    return m
