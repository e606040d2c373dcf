"""One strict parser for every config object in colenv and its trainers.

Every config section is a :class:`StrictModel` (a frozen pydantic model that forbids unknown
keys and converts no types: ``"10"`` is not a number, ``1`` is not ``true``), and every field
carries a one-line description. :func:`parse` turns a raw mapping (from a TOML file, overrides
or Python) into the typed object, and turns any failure into one
:class:`~colenv.errors.ConfigError` that names the dotted key, the bad value and what is allowed
(for an unknown key: the allowed keys). :func:`describe` lists every key of a config object with
its value, type and description (``python -m trainers config <task>`` prints it).

    class Noise(StrictModel):
        std: float = Field(0.0, ge=0, description="noise amplitude")

    parse(Noise, {"std": -1}, where="solver.noise")
    # ConfigError: solver.noise.std = -1: Input should be greater than or equal to 0

TOML has arrays, not tuples: a list is accepted wherever a field is a tuple. A validator that
raises :class:`~colenv.errors.ConfigError` whose message already names its dotted key (as a
nested :func:`parse` does) has its message passed on as it is; any other validator error is
prefixed with the key it belongs to.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from colenv.errors import ConfigError

__all__ = ["ConfigError", "StrictModel", "describe", "parse", "plain", "type_name"]

M = TypeVar("M", bound=BaseModel)

FLATTEN = "flatten"
"""``Field(json_schema_extra={FLATTEN: True})`` on a nested section: :func:`describe` lists
its keys under the parent's prefix (its keys live in the parent's TOML table)."""


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, objects are immutable, numbers
    are not converted from strings or booleans, and lists are accepted for tuple fields."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        validate_default=True,
        allow_inf_nan=False,
        arbitrary_types_allowed=True,
    )

    positional: ClassVar[tuple[str, ...]] = ()
    """Fields that may also be passed positionally, in this order (e.g. ``("method",)``)."""

    def __init__(self, /, *args: Any, **data: Any) -> None:
        """Keyword (and :attr:`positional`) construction; a bad key or value is a
        :class:`ConfigError`, as from :func:`parse`."""
        if len(args) > len(self.positional):
            raise TypeError(
                f"{type(self).__name__} takes {len(self.positional)} positional argument(s) "
                f"({', '.join(self.positional) or 'none'}), got {len(args)}"
            )
        for name, value in zip(self.positional, args, strict=False):
            if name in data:
                raise TypeError(f"{type(self).__name__} got {name!r} twice")
            data[name] = value
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise ConfigError(_message(type(self), data, "", err)) from None

    # nested sections are validated by pydantic directly (errors keep their dotted keys);
    # this __init__ is only for construction in Python
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @model_validator(mode="before")
    @classmethod
    def _lists_to_tuples(cls, raw: Any) -> Any:
        if not isinstance(raw, Mapping):
            return raw
        out = None
        for name, value in raw.items():
            info = cls.model_fields.get(name) if isinstance(name, str) else None
            if info is None or not _wants_tuple(info.annotation):
                continue
            if isinstance(value, list):
                new = _tuples(value)
            elif isinstance(value, Mapping) and _is_mapping_type(info.annotation):
                new = {k: _tuples(v) for k, v in value.items()}  # dict[str, tuple[...]]
            else:
                continue
            out = dict(raw) if out is None else out
            out[name] = new
        return raw if out is None else out


def _wants_tuple(tp: Any) -> bool:
    """Whether a tuple appears in the annotation (outside nested sections)."""
    if tp is tuple or typing.get_origin(tp) is tuple:
        return True
    return any(_wants_tuple(arg) for arg in typing.get_args(tp))


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _model_of(tp: Any) -> type[BaseModel] | None:
    """The model class inside an annotation (``X``, ``X | None``, ``tuple[X, ...]``), if any."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in typing.get_args(tp):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _is_mapping_type(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _is_mapping_type(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_is_mapping_type(a) for a in typing.get_args(tp))
    return tp is dict or (isinstance(origin, type) and issubclass(origin, Mapping))


class _Where(typing.NamedTuple):
    loc: tuple  # the error's location without pydantic's union and validator tags
    model: type[BaseModel] | None  # the section whose keys sit at loc, if loc is one
    annotation: Any  # the annotation of the last field in loc (None: unknown or top level)


def _resolve(cls: type[BaseModel], loc: tuple) -> _Where:
    """Walk ``loc`` through the fields of ``cls``: keep field names, indices and the keys of
    free-form tables; drop the tags pydantic adds for union members and validators."""
    clean: list = []
    model: type[BaseModel] | None = cls
    ann: Any = None
    for part in loc:
        if model is not None and isinstance(part, str) and part in model.model_fields:
            ann = model.model_fields[part].annotation
            clean.append(part)
            model = _model_of(ann)
        elif isinstance(part, int):
            clean.append(part)
        elif ann is not None and _is_mapping_type(ann):
            clean.append(part)  # a key of a free-form table
            ann, model = None, None
        # else: a union member or validator tag
    return _Where(tuple(clean), model, ann)


def _dotted(where: str, loc: tuple) -> str:
    text = where
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<config>"


def _lookup(raw: Any, loc: tuple) -> Any:
    value = raw
    for part in loc:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            return "<missing>"
    return value


def parse(cls: type[M], raw: Mapping[str, Any] | M | None, where: str = "") -> M:
    """Build ``cls`` from ``raw`` (a mapping, or an instance that is returned as is).

    Args:
        cls: a :class:`StrictModel` subclass.
        raw: its keys and values; None means all defaults.
        where: the dotted key of ``raw`` in the whole config (``"solver"``), prefixed to every
            key an error names.

    Raises:
        ConfigError: naming the bad key (dotted, prefixed with ``where``), its value and what is
            allowed (an unknown key lists the allowed keys); every problem when there are
            several.
    """
    if isinstance(raw, cls):
        return raw
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{where or 'config'} must be a table of keys ({', '.join(cls.model_fields)}), "
            f"got {_show(raw)}"
        )
    try:
        return cls.model_validate(dict(raw))
    except ValidationError as err:
        raise ConfigError(_message(cls, raw, where, err)) from None


def _message(cls: type[BaseModel], raw: Mapping, where: str, err: ValidationError) -> str:
    found: dict[str, list[tuple[dict, _Where]]] = {}
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        if e["type"] == "extra_forbidden":
            parent = _resolve(cls, loc[:-1])
            key = _dotted(where, (*parent.loc, loc[-1]))
            allowed = ", ".join(parent.model.model_fields) if parent.model is not None else "?"
            found.setdefault(key, []).append((e, parent._replace(annotation=allowed)))
            continue
        w = _resolve(cls, loc)
        found.setdefault(_dotted(where, w.loc), []).append((e, w))
    lines = []
    for key, errors in found.items():
        e, w = errors[0]
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown key {key!r}; allowed: {w.annotation}")
        elif len(errors) > 1 and w.annotation is not None:
            # several members of a union failed: say what the field takes
            value = _lookup(raw, w.loc)
            lines.append(f"{key} = {_show(value)}: must be {type_name(w.annotation)}")
        else:
            lines.append(_one(key, e, w, raw))
    unique = list(dict.fromkeys(lines))
    return unique[0] if len(unique) == 1 else "; ".join(unique)


def _one(key: str, e: dict, w: _Where, raw: Mapping) -> str:
    if e["type"] == "missing":
        return f"missing key {key!r}"
    error = (e.get("ctx") or {}).get("error")
    if isinstance(error, ConfigError):
        text = str(error)
        return text if key == "<config>" or key in text else f"{key}: {text}"
    msg = e["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    value = _lookup(raw, w.loc) if w.loc else raw
    if e["type"] in ("value_error", "assertion_error") and isinstance(value, Mapping | BaseModel):
        # a check of a whole section: no value to show
        return msg if key == "<config>" else f"{key}: {msg}"
    if e["type"].endswith("_type") and w.annotation is not None:
        msg = f"{msg}; expected {_expected(w.annotation)}"
    return f"{key} = {_show(e.get('input', value))}: {msg}"


def _expected(tp: Any) -> str:
    """What a field takes, in TOML words: "a list of tables with keys name, n_columns"."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (tuple, list) and args:
        inner = args[0]
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return f"a list of tables with keys {', '.join(inner.model_fields)}"
        return f"a list of {_expected(inner)}".replace("a list of a list of", "a list of lists of")
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return f"a table with keys {', '.join(tp.model_fields)}"
    return type_name(tp)


def _show(value: Any) -> str:
    value = plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def type_name(tp: Any) -> str:
    """A short readable name of a type annotation (``float``, ``int | None``, ``list[str]``)."""
    if typing.get_origin(tp) is typing.Annotated:
        return type_name(typing.get_args(tp)[0])
    if typing.get_origin(tp) is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if isinstance(tp, type) and not typing.get_args(tp):
        return "None" if tp is type(None) else tp.__name__
    origin = typing.get_origin(tp)
    if origin is not None:
        args = typing.get_args(tp)
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    text = str(tp).replace("typing.", "")
    return text.replace("<class '", "").replace("'>", "")


def plain(value: Any) -> Any:
    """``value`` as plain TOML/JSON-like data: config objects as dicts, tuples as lists."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    return value


def describe(obj: BaseModel, prefix: str = "") -> Iterator[tuple[str, Any, str, str]]:
    """Every leaf key of a config object: ``(dotted key, value, type, description)``.

    Nested config sections are walked (a section marked :data:`FLATTEN` lists its keys under
    the parent's prefix); a free-form table (a ``dict`` field) or a list of sections is one
    entry, its value as plain data.
    """
    cls = type(obj)
    for name, info in cls.model_fields.items():
        value = getattr(obj, name)
        extra = info.json_schema_extra
        flatten = isinstance(extra, dict) and bool(extra.get(FLATTEN))
        key = prefix if flatten else (f"{prefix}.{name}" if prefix else name)
        if isinstance(value, BaseModel):
            yield from describe(value, key)
            continue
        yield key, plain(value), type_name(info.annotation), (info.description or "").strip()
