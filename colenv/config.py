"""One strict parser for every config object in colenv and its trainers.

Every config section is a :class:`StrictModel` (a frozen pydantic model that forbids unknown
keys), and every field carries a one-line description. :func:`parse` turns a raw mapping (from
a TOML file, overrides or Python) into the typed object, and turns any failure into one
:class:`~colenv.errors.ConfigError` that names the dotted key, the bad value and what is allowed
(for an unknown key: the allowed keys). :func:`describe` lists every key of a config object with
its value, type and description (``python -m trainers config <task>`` prints it).

    class Noise(StrictModel):
        std: float = Field(0.0, ge=0, description="noise amplitude")

    parse(Noise, {"std": -1}, where="solver.noise")  # ConfigError: solver.noise.std = -1: ...
"""

from __future__ import annotations

import math
import typing
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from colenv.errors import ConfigError

__all__ = ["ConfigError", "StrictModel", "describe", "parse", "type_name"]

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, objects are immutable, and
    numbers are not silently converted from strings or booleans."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=False,
        validate_default=True,
        allow_inf_nan=False,
        arbitrary_types_allowed=True,
    )


def _dotted(where: str, loc: tuple) -> str:
    parts = [where] if where else []
    parts += [str(p) for p in loc if not (isinstance(p, str) and p.startswith("function-"))]
    return ".".join(parts) if parts else "<config>"


def _lookup(raw: Any, loc: tuple) -> Any:
    value = raw
    for part in loc:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            return "<missing>"
    return value


def _field_help(cls: type[BaseModel], loc: tuple) -> tuple[type[BaseModel] | None, str | None]:
    """(model class owning the last key of ``loc``, allowed keys text) while walking ``loc``."""
    owner: type[BaseModel] | None = cls
    for part in loc[:-1]:
        if owner is None or not isinstance(part, str) or part not in owner.model_fields:
            return None, None
        owner = _model_of(owner.model_fields[part].annotation)
    if owner is None:
        return None, None
    return owner, ", ".join(owner.model_fields)


def _model_of(tp: Any) -> type[BaseModel] | None:
    """The StrictModel inside an annotation (``X``, ``X | None``), if any."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in typing.get_args(tp):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def parse(cls: type[M], raw: Mapping[str, Any] | M | None, where: str = "") -> M:
    """Build ``cls`` from ``raw`` (a mapping, or an instance that is returned as is).

    Raises:
        ConfigError: naming the first bad key (dotted, prefixed with ``where``), its value and
            what is allowed; all problems are listed when there are several.
    """
    if isinstance(raw, cls):
        return raw
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{where or 'config'} must be a table of keys ({', '.join(cls.model_fields)}), "
            f"got {raw!r}"
        )
    try:
        return cls.model_validate(dict(raw))
    except ValidationError as err:
        raise ConfigError(_message(cls, raw, where, err)) from None


def _message(cls: type[BaseModel], raw: Mapping, where: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        key = _dotted(where, loc)
        if e["type"] == "extra_forbidden":
            _, allowed = _field_help(cls, loc)
            lines.append(f"unknown key {key!r}; allowed: {allowed}")
            continue
        value = e.get("input", _lookup(raw, loc))
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if msg.startswith("Assertion failed, "):
            msg = msg[len("Assertion failed, ") :]
        if e["type"] == "missing":
            lines.append(f"missing key {key!r}")
        else:
            lines.append(f"{key} = {_show(value)}: {msg}")
    return lines[0] if len(lines) == 1 else "; ".join(lines)


def _show(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def type_name(tp: Any) -> str:
    """A short readable name of a type annotation (``float``, ``int | None``, ``list[str]``)."""
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    text = str(tp).replace("typing.", "")
    return text.replace("<class '", "").replace("'>", "")


def describe(obj: BaseModel, prefix: str = "") -> Iterator[tuple[str, Any, str, str]]:
    """Every leaf key of a config object: ``(dotted key, value, type, description)``.

    Nested config sections are walked; a free-form table (a ``dict`` field) is one entry.
    """
    cls = type(obj)
    for name, info in cls.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        value = getattr(obj, name)
        if isinstance(value, BaseModel):
            yield from describe(value, key)
            continue
        yield key, value, type_name(info.annotation), (info.description or "").strip()
