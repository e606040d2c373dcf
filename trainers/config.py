"""Training configuration: a TOML file plus ``key=value`` overrides -> a validated TrainConfig.

    load_config("colenv/Parity-v0", ["train.lr=0.01", "solver.method=rk4"]) -> TrainConfig
    load_config("path/to/my.toml", ["train.steps=50"])
    print(format_config(config))          # every key: value, type, description

A task id is looked up among the shipped configs (:func:`colenv.resources.task_config_path`);
anything else is a path to a TOML file, which must name its ``task``. An override's key is
dotted (``model.network.lateral.trainable``) and its value is read as a TOML value (``true``,
``0.01``, ``[1, 2]``, ``{name = "a", n_columns = 2}``); what does not parse as TOML stays a
string (``solver.method=rk4``).

The whole tree is parsed once, by :func:`colenv.config.parse`: ``config.solver`` is a
:class:`colenv.SolverConfig`, ``config.model.options`` the model kind's ``Config`` (for
``kind = "columns"``: the column parameter overrides and the :class:`NetworkSpec`). Unknown
keys and bad values are :class:`ConfigError` naming the dotted key and what is allowed.

Solver option tables (``[solver.fast]``, ``[solver.adaptive]``, ``[solver.torchsde]``) apply
to some methods only. When ``solver.method`` (or ``solver.sde``) changes, the tables of the
file (or checkpoint) that do not apply to the new method are dropped, so
``solver.method=dopri5`` works on a config written for ``rk4exp``; an option that does not
apply but is set in the overrides themselves is an error (unless it is its default value).
"""

from __future__ import annotations

import copy
import importlib
import math
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SerializeAsAny, field_validator, model_serializer, model_validator

from colenv.config import FLATTEN, StrictModel, describe, parse
from colenv.errors import ConfigError
from colenv.registration import TASKS
from colenv.resources import task_config_path
from colenv.solve import SolverConfig

__all__ = [
    "CheckpointConfig",
    "ConfigError",
    "EvalConfig",
    "LoggingConfig",
    "ModelConfig",
    "SuccessConfig",
    "TrainConfig",
    "TrainLoopConfig",
    "apply_overrides",
    "config_path",
    "format_config",
    "load_config",
    "parse_override",
]


# ----------------------------------------------------------------------------- sections
class ModelConfig(StrictModel):
    """``[model]``: what is trained. Besides ``kind`` and ``initial_state`` the table holds the
    kind's own options (its class's ``Config``; for ``columns``: ``params`` and ``network``)."""

    kind: str = Field(
        "columns",
        description='model kind: "columns", "hopf_mlp", "ctrnn", a registered name or '
        '"module.path:ClassName"',
    )
    initial_state: str = Field(
        "rest",
        description='"rest" (the model\'s initial_state) or "condition:<key>" '
        "(y0 = trial.conditions[<key>])",
    )
    options: SerializeAsAny[StrictModel] = Field(
        json_schema_extra={FLATTEN: True},
        description="the kind's options (keys of [model] besides kind and initial_state)",
    )

    @model_validator(mode="before")
    @classmethod
    def _options_of_kind(cls, raw: Any) -> Any:
        """``{kind, initial_state, **options}`` (the TOML shape) or ``{..., options}``: the
        options are parsed with ``get_model_class(kind).Config``."""
        if not isinstance(raw, Mapping):
            return raw
        from colenv.models.registry import get_model_class

        kind = raw.get("kind", cls.model_fields["kind"].default)
        config_cls = get_model_class(kind).Config
        head = {k: raw[k] for k in ("kind", "initial_state") if k in raw}
        rest = {k: v for k, v in raw.items() if k not in ("kind", "initial_state")}
        if "options" in rest and "options" not in config_cls.model_fields:
            if len(rest) > 1:
                raise ConfigError(
                    "model: give the kind's options either as keys of [model] or as "
                    f"model.options, not both ({', '.join(k for k in rest if k != 'options')})"
                )
            rest = rest["options"]
        elif unknown := [k for k in rest if k not in config_cls.model_fields]:
            allowed = ", ".join(["kind", "initial_state", *config_cls.model_fields])
            raise ConfigError(
                f"unknown key 'model.{unknown[0]}' (model.kind = {kind!r}); allowed: {allowed}"
            )
        return {**head, "options": parse(config_cls, rest, where="model")}

    @field_validator("initial_state")
    @classmethod
    def _initial_state(cls, value: str) -> str:
        if value == "rest" or (value.startswith("condition:") and len(value) > len("condition:")):
            return value
        raise ValueError('allowed: "rest" or "condition:<key>"')

    @model_serializer(mode="wrap")
    def _toml_shape(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        return {**{k: v for k, v in data.items() if k != "options"}, **data["options"]}


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


class TrainLoopConfig(StrictModel):
    """``[train]``: the optimization loop."""

    steps: int = Field(300, ge=1, description="number of optimizer steps")
    batch_size: int = Field(16, ge=1, description='trials per step when conditions = "random"')
    conditions: Literal["all", "random"] = Field(
        "all",
        description='"all": every step trains on the evaluation grid; "random": fresh trials, '
        "seeded by (seed, step)",
    )
    task_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="overrides of task_kwargs for the training trials only (evaluation uses "
        "task_kwargs alone)",
    )
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam", description="the optimizer")
    lr: float = Field(0.01, gt=0, description="learning rate")
    weight_decay: float = Field(0.0, ge=0, description="weight decay of the optimizer")
    schedule: Literal["constant", "cosine", "step"] = Field(
        "cosine",
        description="learning-rate schedule: constant, cosine (to 0 at steps), step (x0.1 "
        "every steps/3)",
    )
    grad_clip: float = Field(
        1.0,
        ge=0,
        description="max gradient norm (a norm beyond float32 is taken in float64 and "
        "clipped too; only NaN/inf gradients fail a step); 0 = off",
    )
    rate_limit_hz: float = Field(
        0.0,
        ge=0,
        description="column models: rates above this (any population, any time) are "
        "penalised; 0 = off",
    )
    rate_penalty: float = Field(
        1.0, ge=0, description="weight of the mean squared excess rate over rate_limit_hz"
    )
    runaway_hz: float = Field(
        0.0, ge=0, description="column models: a rollout with a rate above this diverged; 0 = off"
    )
    max_rejections: int = Field(
        0,
        ge=0,
        description="on a diverged step, roll back and halve the learning rate up to this "
        "many times in a row; 0 = stop at once",
    )
    seed: int = Field(
        0, ge=0, description="seeds python, numpy, torch, the model init and every trial batch"
    )
    device: str = Field("auto", description="auto (cuda if available), cpu, cuda, cuda:N or mps")
    dtype: Literal["float32", "float64"] = Field("float32", description="float32 or float64")
    threads: int = Field(
        1, ge=0, description="torch.set_num_threads for the run; 0 keeps torch's default"
    )
    eval_every: int = Field(
        10, ge=1, description="evaluate on the task's grid every this many steps (and at the end)"
    )
    step_check: float = Field(
        0.5,
        ge=0,
        allow_inf_nan=False,
        description="at the first evaluation, warn when the rollout differs from one at half "
        "solver.step_ms by more than this (output units: Hz for rate tasks); 0 = off",
    )
    step_check_every: int = Field(
        0,
        ge=0,
        description="repeat the half-step check (train.step_check) every this many evaluations "
        "after the first, since training can make a network stiffer; 0 = the first only",
    )

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not _DEVICE.fullmatch(value):
            raise ValueError("allowed: auto, cpu, cuda, cuda:N (N = 0, 1, ...), mps")
        return value


class SuccessConfig(StrictModel):
    """``[success]``: when the task counts as solved."""

    metric: str = Field(
        "accuracy",
        min_length=1,
        description="key of task.evaluate(); solved when >= threshold (<= for metrics named "
        "*rmse* or *error*)",
    )
    threshold: float | None = Field(
        None, description="the criterion; unset = the task's success_threshold"
    )
    patience: int = Field(
        1, ge=1, description="consecutive successful evaluations before it counts as solved"
    )
    stop_on_success: bool = Field(True, description="stop training once solved")


class LoggingConfig(StrictModel):
    """``[logging]``: W&B, plots, where runs go."""

    wandb: bool = Field(True, description="log to Weights & Biases (offline by default)")
    wandb_mode: Literal["offline", "online", "disabled"] = Field(
        "offline",
        description="W&B mode; a valid WANDB_MODE environment variable overrides it (empty "
        "counts as unset; an invalid one is ignored with a warning); an online run that cannot "
        "start logs offline instead",
    )
    project: str = Field("colenv", min_length=1, description="W&B project")
    run_dir: str = Field(
        "runs", min_length=1, description="parent folder of the runs: <run_dir>/<run_name>/"
    )
    plots: bool = Field(True, description="write the task's plots into <run>/plots at the end")
    group: str = Field(
        "", max_length=128, description="W&B group of the run (e.g. a sweep's name); empty = none"
    )
    tags: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, description="W&B tags of the run: a list of strings, 1-64 chars each"
    )
    notes: str = Field("", description="W&B notes (a free-text description of the run)")


class EvalConfig(StrictModel):
    """``[eval]``: how the evaluation grid is scored."""

    noise_draws: int = Field(
        1,
        ge=1,
        description="with solver.sde = true: noisy trials per condition of the evaluation grid "
        "(independent noise, seeded by train.seed and the step); accuracy is the fraction of "
        "all of them that are correct. Ignored (1) without sde: a noise-free rollout is "
        "deterministic",
    )


class CheckpointConfig(StrictModel):
    """``[checkpoint]``: checkpoint cadence."""

    every: int = Field(
        50,
        ge=0,
        description="save last.pt every this many steps (also at the end and at success); "
        "0 = only then",
    )


class TrainConfig(StrictModel):
    """One training run: task, model, solver, loop, success criterion, logging, checkpoints."""

    task: str = Field(min_length=1, description="Gymnasium id of the task")
    trainer: str = Field(
        "supervised", description='registered trainer name, or "module.path:ClassName"'
    )
    imports: list[str] = Field(
        default_factory=list,
        description="modules imported before the config is read (where a user's trainer, "
        "model or task registers itself)",
    )
    run_name: str = Field(
        "",
        description="the run's folder under logging.run_dir: one plain folder name, never an "
        "existing run's; empty = <task>-<timestamp>",
    )
    resume: str = Field("", description='a run folder or checkpoint to continue ("" = fresh)')
    task_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of gym.make(task, **task_kwargs)"
    )
    model: ModelConfig = Field(default_factory=ModelConfig, description="what is trained")
    solver: SolverConfig = Field(
        default_factory=SolverConfig, description="how rollouts are integrated"
    )
    train: TrainLoopConfig = Field(
        default_factory=TrainLoopConfig, description="the optimization loop"
    )
    success: SuccessConfig = Field(
        default_factory=SuccessConfig, description="when the task counts as solved"
    )
    logging: LoggingConfig = Field(
        default_factory=LoggingConfig, description="W&B, plots, where runs go"
    )
    checkpoint: CheckpointConfig = Field(
        default_factory=CheckpointConfig, description="checkpoint cadence"
    )
    eval: EvalConfig = Field(
        default_factory=EvalConfig, description="how the evaluation grid is scored"
    )
    trainer_options: dict[str, Any] = Field(
        default_factory=dict,
        description="the trainer's own options ([trainer_options]); a trainer class with an "
        "Options model (e.g. curriculum) has them checked when the config is read",
    )

    @model_validator(mode="after")
    def _trainer_options(self) -> TrainConfig:
        """Check ``trainer_options`` against the trainer's ``Options`` model (if it has one)."""
        if not self.trainer_options:
            return self
        from trainers.registry import get_trainer

        options_cls = getattr(get_trainer(self.trainer), "Options", None)
        if options_cls is None:
            raise ConfigError(
                f"trainer_options: trainer {self.trainer!r} takes no options (it has no Options "
                "model); remove the [trainer_options] table"
            )
        parse(options_cls, self.trainer_options, where="trainer_options")
        return self

    @model_validator(mode="before")
    @classmethod
    def _import_first(cls, raw: Any) -> Any:
        """Import ``imports`` before the rest is read: they may register the model kind."""
        imports = raw.get("imports") if isinstance(raw, Mapping) else None
        if isinstance(imports, list | tuple):  # anything else: the field's own check names it
            for name in imports:
                if not isinstance(name, str):
                    continue
                try:
                    importlib.import_module(name)
                except ImportError as err:
                    raise ConfigError(f"imports: cannot import module {name!r}: {err}") from err
        return raw

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict in the TOML layout (what W&B and checkpoints store);
        ``from_dict(to_dict())`` gives an equal config."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "") -> TrainConfig:
        """Parse a nested dict; errors name the key (prefixed with ``source``, e.g. a file)."""
        try:
            return parse(cls, raw)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}" if source else str(err)) from None

    @field_validator("run_name")
    @classmethod
    def _plain_folder_name(cls, value: str) -> str:
        if value == "":
            return value
        from trainers.rundir import check_run_name

        return check_run_name(value)

    @property
    def higher_is_better(self) -> bool:
        """Direction of the success metric: False for metrics named *rmse* / *error*."""
        name = self.success.metric.lower()
        return not ("rmse" in name or "error" in name)


# ----------------------------------------------------------------------------- loading
def config_path(task_or_path: str | Path) -> Path:
    """The TOML file of a task id (its shipped config) or a path to a TOML file.

    Raises:
        ConfigError: a path that does not exist, or an id that is not a colenv task (the
            message lists the known ids).
    """
    text = str(task_or_path)
    path = Path(text)
    if text in TASKS:
        shipped = task_config_path(text)
        if not shipped.is_file():
            raise ConfigError(f"task {text!r} has no shipped config ({shipped} is missing)")
        return shipped
    if path.is_file():
        return path
    if text.endswith(".toml"):
        raise ConfigError(f"config file {text!r} not found")
    hint = ""
    if "=" in text:  # e.g. `reproduce --tasks a.toml train.lr=0.1`: --tasks took the override
        hint = (
            f"; {text!r} looks like a key=value override: give overrides before --tasks "
            "(which takes every word after it)"
        )
    raise ConfigError(
        f"unknown task {text!r} (and no such file); known: {', '.join(TASKS)}, or the path of "
        f"a .toml file{hint}"
    )


def load_config(task_or_path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a task's shipped TOML (or any TOML path), apply ``key=value`` overrides, parse.

    Args:
        task_or_path: a colenv task id ("colenv/XOR-v0") or a path to a TOML file; the file
            must name its ``task``.
        overrides: e.g. ``["train.lr=0.01", "model.network.lateral.trainable=true"]``.

    Raises:
        ConfigError: an unknown task or missing file, a file that is not valid TOML or names no
            task, or an unknown key or bad value anywhere (the message names it).
    """
    path = config_path(task_or_path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err
    raw = apply_overrides(raw, overrides or [])
    if "task" not in raw:
        raise ConfigError(
            f"{path}: no task; a training config names its task at the top, e.g. "
            f'task = "colenv/XOR-v0" (colenv tasks: {", ".join(TASKS)})'
        )
    if not overrides:
        return TrainConfig.from_dict(raw, source=str(path))
    try:
        return TrainConfig.from_dict(raw)
    except ConfigError as err:
        # name where the bad value came from: the file itself, or what the overrides made of it
        source = str(path)
        if _parses(apply_overrides(tomllib.loads(path.read_text()), [])):
            source = f"{path} with overrides {' '.join(overrides)}"
        raise ConfigError(f"{source}: {err}") from None


def _parses(raw: dict[str, Any]) -> bool:
    try:
        TrainConfig.from_dict(raw)
    except ConfigError:
        return False
    return True


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=1"`` -> ``("a.b", 1)``; the value is a TOML value, else the raw string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. train.lr=0.01)")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        return key, tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return key, value


def _set(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        key, value = parse_override(text)
        parts = key.split(".")
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"override {text!r}: {'.'.join(parts[: i + 1])} is a value, not a table"
                )
            node = child
        node[parts[-1]] = value
    return raw


def apply_overrides(raw: Mapping[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of ``raw`` with each ``key=value`` set at its dotted path (tables created).

    Solver option tables of ``raw`` that do not apply to the resulting solver method are
    dropped; one set by the overrides themselves to a value other than its default is a
    :class:`ConfigError` naming the table and the method.
    """
    out = _set(copy.deepcopy(dict(raw)), overrides)
    explicit = _set({}, overrides).get("solver")
    _drop_inapplicable_solver_options(out, explicit if isinstance(explicit, dict) else {})
    return out


def _option_tables() -> dict[str, type[StrictModel]]:
    """``{"fast": FastOptions, ...}``: the option tables of :class:`colenv.SolverConfig`."""
    tables = {}
    for name, info in SolverConfig.model_fields.items():
        tp = info.annotation
        if isinstance(tp, type) and issubclass(tp, StrictModel):
            tables[name] = tp
    return tables


def _drop_inapplicable_solver_options(raw: dict[str, Any], explicit: dict[str, Any]) -> None:
    solver = raw.get("solver")
    if not isinstance(solver, dict):
        return
    method = solver.get("method", SolverConfig.model_fields["method"].default)
    sde = solver.get("sde", SolverConfig.model_fields["sde"].default)
    if not isinstance(method, str) or not isinstance(sde, bool):
        return  # parsing names the bad value
    try:
        applies = SolverConfig.families(method, sde)
    except ConfigError:
        return  # parsing names the unknown method
    for name, table_cls in _option_tables().items():
        if name in applies or name not in solver:
            continue
        given = explicit.get(name)
        if given is not None:
            where = f"solver.{name}"
            if parse(table_cls, given, where=where) != table_cls():
                keys = ", ".join(f"{where}.{k}" for k in given) if isinstance(given, dict) else ""
                what = f"{method!r} with sde = true" if sde else repr(method)
                uses = (
                    f"its options are in {', '.join(f'solver.{a}' for a in applies)}"
                    if applies
                    else "it takes no option table"
                )
                raise ConfigError(
                    f"{where} ({keys}) does not apply to solver.method = {what}; {uses}"
                )
        del solver[name]


# ----------------------------------------------------------------------------- printing
def format_config(config: TrainConfig) -> str:
    """Every key of ``config`` with its value, type and description, grouped by section.

    A free-form table (``task_kwargs``, ``model.params``) or a list of tables
    (``model.network.areas``) is one key, its value printed inline.
    """
    rows = list(describe(config))
    width = max(len(key) for key, *_ in rows)
    blocks: dict[str, list[str]] = {}
    for key, value, type_, description in rows:
        section = f"[{key.split('.')[0]}]" if "." in key else "top level"
        blocks.setdefault(section, []).append(
            f"{key:<{width}} = {_toml_block(value)}\n{'':<{width}}   ({type_}) {description}"
        )
    return "\n\n".join(f"{name}\n" + "\n".join(lines) for name, lines in blocks.items()) + "\n"


def _toml_block(value: Any, width: int = 80) -> str:
    """:func:`_toml`, with a long list written one item per line."""
    text = _toml(value)
    if len(text) <= width or not isinstance(value, list | tuple) or not value:
        return text
    return "[\n" + "".join(f"    {_toml(v)},\n" for v in value) + "]"


def _toml(value: Any) -> str:
    """A value as it would be written in a TOML file (``None``: unset)."""
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return str(value)
