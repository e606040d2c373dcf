"""Layout of a column network: areas, connection kinds, readout and initial-weight options.

A :class:`NetworkSpec` says which columns exist, which connections exist between which
populations, which of them train and how the initial weights are drawn; it holds no tensors.
:class:`colenv.models.ColumnNetwork` builds the weights from it. In a training config it is the
``[model.network]`` table, and ``parse(NetworkSpec, table, where="network")``
(:func:`colenv.config.parse`) builds it from that table.

A connection table is read on top of its kind's default (:data:`CONNECTION_DEFAULTS`): e.g.
``lateral = {trainable = true}`` keeps lateral connections disabled, as the kind's default
says, and ``input = {trainable = true}`` keeps the default input pairs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator, model_validator

from colenv.config import StrictModel
from colenv.errors import ConfigError
from colenv.models.column.params import N_POP, population_index

__all__ = [
    "CONNECTION_DEFAULTS",
    "GATING_KINDS",
    "AreaSpec",
    "ConnectionSpec",
    "GatingSpec",
    "NetworkSpec",
]

Pair = tuple[str, str]
"""(source population, target population); the source of an input pair is ``"input"``."""
Edge = tuple[str, str, float]
"""(source, target, initial weight in nA), populations named as ``"area[column].Pop"``."""


class AreaSpec(StrictModel):
    """One area: ``n_columns`` identical columns with the population sizes of ``sizes``.

    Positional arguments are allowed: ``AreaSpec("mt", 2)``, ``AreaSpec("v1", 1, "v1")``.
    """

    name: str = Field(min_length=1, description="area name; populations are named area[column].Pop")
    n_columns: int = Field(ge=1, description="number of identical columns in the area")
    sizes: str = Field("mt", description="key of [population_sizes] in config/model.toml")

    positional = ("name", "n_columns", "sizes")


def _check_pairs(pairs: tuple[Pair, ...]) -> tuple[Pair, ...]:
    for pair in pairs:
        for name in pair:
            if name != "input":
                try:
                    population_index(name)
                except ConfigError as err:
                    raise ValueError(f"{err} (or 'input' as an input source)") from None
    return pairs


class ConnectionSpec(StrictModel):
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

    enabled: bool = Field(True, description="whether this kind of connection exists")
    pairs: tuple[Pair, ...] | None = Field(
        None, description="allowed [source, target] population pairs; None = the kind's default"
    )
    trainable: bool | tuple[Pair, ...] = Field(
        False, description="true, false, or the [source, target] pairs that train"
    )
    init_k: float | None = Field(
        None, ge=0, description="in-degree of the initial weight (W = init_k J); None = default"
    )
    edges: tuple[Edge, ...] | None = Field(
        None,
        description="explicit [source, target, weight_nA] edges instead of pairs/init_k",
    )

    @field_validator("pairs")
    @classmethod
    def _pairs(cls, value: tuple[Pair, ...] | None) -> tuple[Pair, ...] | None:
        return None if value is None else _check_pairs(value)

    @field_validator("trainable")
    @classmethod
    def _trainable(cls, value: bool | tuple[Pair, ...]) -> bool | tuple[Pair, ...]:
        return value if isinstance(value, bool) else _check_pairs(value)

    @field_validator("edges", mode="before")
    @classmethod
    def _edge_shape(cls, value: Any) -> Any:
        for i, edge in enumerate(value if isinstance(value, list | tuple) else ()):
            if not isinstance(edge, list | tuple) or len(edge) != 3:
                raise ValueError(f"edge {i} must be [source, target, weight_nA], got {edge!r}")
        return value

    @field_validator("edges")
    @classmethod
    def _edges(cls, value: tuple[Edge, ...] | None) -> tuple[Edge, ...] | None:
        for i, (src, tgt, weight) in enumerate(value or ()):
            if not weight > 0:
                raise ValueError(
                    f"edge {i} ({src} -> {tgt}): the weight is a magnitude in nA (> 0, the sign "
                    f"follows Dale's law from the source), got {weight:g}"
                )
        return value

    @model_validator(mode="after")
    def _edges_or_pairs(self) -> ConnectionSpec:
        if self.edges is not None and (self.pairs is not None or self.init_k is not None):
            raise ValueError(
                "a connection takes either edges or pairs/init_k, not both (edges fix both the "
                "wiring and the initial weights)"
            )
        return self


GATING_KINDS = ("recurrent", "lateral", "feedforward")
"""Connection kinds whose entries can be gated by the slow synapse (:class:`GatingSpec`)."""


class GatingSpec(StrictModel):
    """The optional slow gating synapse (Wong & Wang 2006's NMDA gating; docs/science.md).

    Connections of the kinds ``kinds`` between the population types of ``pairs`` act through
    a saturating gating variable S of their source, dS/dt = -S / tau_S + gamma (1 - S) phi,
    instead of its rate phi: a gated entry W contributes tau_s W S / (gamma tau_S) to the
    current (S read as a rate: phi for phi << 1 / (gamma tau_S), saturating there).

    Attributes:
        pairs: (source, target) population types, e.g. ``[["L23e", "L23e"]]``.
        kinds: connection kinds gated between those types (subset of :data:`GATING_KINDS`).
        tau_ms: decay time constant tau_S of S (ms); Wong & Wang's NMDA: 100.
        gamma: saturation factor gamma (per Hz, with t in s); Wong & Wang's NMDA: 0.641.
    """

    pairs: tuple[Pair, ...] = Field(
        description="[source, target] population types whose connections are gated"
    )
    kinds: tuple[Literal["recurrent", "lateral", "feedforward"], ...] = Field(
        ("recurrent",), description="connection kinds gated: recurrent, lateral, feedforward"
    )
    tau_ms: float = Field(100.0, gt=0, description="decay time constant of S (ms)")
    gamma: float = Field(0.641, gt=0, description="saturation factor of S (with phi in Hz, t in s)")

    @field_validator("pairs")
    @classmethod
    def _pairs(cls, value: tuple[Pair, ...]) -> tuple[Pair, ...]:
        if not value:
            raise ValueError("must list at least one [source, target] pair")
        for pair in value:
            for name in pair:
                try:
                    population_index(name)
                except ConfigError as err:
                    raise ValueError(f"pair {list(pair)!r}: {err}") from None
        twice = sorted({p for p in value if value.count(p) > 1})
        if twice:
            raise ValueError(f"pair {list(twice[0])!r} is listed twice")
        return value

    @field_validator("kinds")
    @classmethod
    def _kinds(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError(f"must list at least one of {', '.join(GATING_KINDS)}")
        if len(set(value)) != len(value):
            raise ValueError(f"a kind is listed twice in {list(value)!r}")
        return value


CONNECTION_DEFAULTS: dict[str, dict[str, Any]] = {
    "input": {"pairs": (("input", "L4e"), ("input", "L4i"))},
    "recurrent": {},
    "lateral": {"enabled": False},
    "feedforward": {},
}
"""What each connection kind is when its table leaves a key out."""


def _default(kind: str) -> Any:
    return Field(default_factory=lambda: ConnectionSpec(**CONNECTION_DEFAULTS[kind]))


class NetworkSpec(StrictModel):
    """Layout of a column network. Build from a dict with :func:`colenv.config.parse`.

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
        init_jitter: std of a seeded log-normal factor exp(jitter * N(0, 1)) on every
            trainable initial weight, tilted per target population so that the anatomical rest
            state stays a fixed point (:func:`colenv.models.column.config.jitter_weights_`);
            0 = the anatomical weights. The default 0.05 keeps the rest state of a P&D column
            with every recurrent weight trainable in 50 of 50 seeds; at 0.1 the rest state
            stays a fixed point but loses its stability in 2 of 20
            (``python analysis/jitter_rest.py``). Identical columns fed the same input get identical
            gradients and stay identical forever; the jitter breaks that symmetry, and it is
            what makes two seeds of a column run differ (fixed weights are never jittered).
        init_seed: an explicit seed of that jitter; None (the default) = the model's seed,
            which in a training run is ``train.seed``. Set it only to hold the initial network
            fixed while ``train.seed`` varies the rest of a run.
        gating: the optional slow gating synapse on chosen projections (:class:`GatingSpec`);
            None (the default) = off, the state is [v, a, r]; on, it is [v, a, r, S].
    """

    areas: tuple[AreaSpec, ...] = Field(
        default_factory=lambda: (AreaSpec("mt", 1),),
        description="feedforward chain of areas [{name, n_columns, sizes}]; the last is read out",
    )
    n_inputs: int = Field(1, ge=0, description="number of input channels (Hz)")
    input_mode: Literal["dense", "one_to_one"] = Field(
        "dense", description="dense: every channel -> every first-area column; one_to_one: k -> k"
    )
    input: ConnectionSpec = _default("input")
    recurrent: ConnectionSpec = _default("recurrent")
    lateral: ConnectionSpec = _default("lateral")
    feedforward: ConnectionSpec = _default("feedforward")
    readout: str = Field("L23e", description="population read out from each last-area column")
    readout_variable: Literal["r", "phi"] = Field(
        "r", description="r: the filtered rate; phi: f(v - a)"
    )
    noise_std: float = Field(
        1.0, ge=0, description="stationary std of v of an isolated population under the SDE"
    )
    parametrization: Literal["linear", "log"] = Field(
        "linear", description="trainable weights: linear (Dale by projection) or log magnitudes"
    )
    init_jitter: float = Field(
        0.05,
        ge=0,
        le=1,
        description="std of a seeded log-normal factor on trainable initial weights (rest kept)",
    )
    init_seed: int | None = Field(
        None, description="seed of the jitter; None = the model's seed (train.seed)"
    )
    gating: GatingSpec | None = Field(
        None, description="slow gating synapse {pairs, kinds, tau_ms, gamma}; None = off"
    )

    @model_validator(mode="before")
    @classmethod
    def _on_kind_defaults(cls, raw: Any) -> Any:
        """Read each connection table on top of its kind's default."""
        if not isinstance(raw, Mapping):
            return raw
        out = dict(raw)
        for kind, default in CONNECTION_DEFAULTS.items():
            table = out.get(kind)
            if not isinstance(table, Mapping):
                continue
            merged = {**default, **table}
            if table.get("edges") is not None:
                for key in ("pairs", "init_k"):  # edges replace the default wiring
                    if key not in table:
                        merged.pop(key, None)
            out[kind] = merged
        return out

    @field_validator("areas")
    @classmethod
    def _areas(cls, value: tuple[AreaSpec, ...]) -> tuple[AreaSpec, ...]:
        if not value:
            raise ValueError("must list at least one area")
        names = [a.name for a in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"area names must differ; {', '.join(twice)} repeats")
        return value

    @field_validator("input_mode")
    @classmethod
    def _input_mode(cls, value: str, info: ValidationInfo) -> str:
        areas, n_inputs = info.data.get("areas"), info.data.get("n_inputs")
        if value == "one_to_one" and areas and n_inputs is not None:
            if n_inputs != areas[0].n_columns:
                raise ValueError(
                    f"one_to_one needs n_inputs ({n_inputs}) == columns of the first area "
                    f"({areas[0].n_columns})"
                )
        return value

    @field_validator("input", "recurrent", "lateral", "feedforward")
    @classmethod
    def _connection(cls, conn: ConnectionSpec, info: ValidationInfo) -> ConnectionSpec:
        kind = info.field_name
        if kind == "recurrent" and conn.edges is not None:
            raise ValueError(
                "explicit edges are for lateral, feedforward and input connections, not "
                "recurrent ones (recurrent wiring is P&D's)"
            )
        trained = () if isinstance(conn.trainable, bool) else conn.trainable
        for src, tgt in (*(conn.pairs or ()), *trained):
            if tgt == "input" or (src == "input") != (kind == "input"):
                rule = (
                    "input pairs are ['input', population]"
                    if kind == "input"
                    else "'input' is the source of input pairs only"
                )
                raise ValueError(f"pair [{src!r}, {tgt!r}]: {rule}")
        return conn

    @field_validator("readout")
    @classmethod
    def _readout(cls, value: str) -> str:
        try:
            population_index(value)
        except ConfigError as err:
            raise ValueError(str(err)) from None
        return value

    @property
    def n_columns(self) -> int:
        """Columns in all areas."""
        return sum(a.n_columns for a in self.areas)


def _pair_matrix(pairs: tuple[Pair, ...], kind: str) -> torch.Tensor:
    """[8 target, 8 source] 0/1 matrix of allowed (source, target) population pairs."""
    m = torch.zeros(N_POP, N_POP, dtype=torch.float64)
    for pair in pairs:
        if len(pair) != 2:
            raise ConfigError(f"network.{kind}: pairs must be (source, target), got {pair!r}")
        src, tgt = pair
        m[population_index(tgt), population_index(src)] = 1.0
    return m
