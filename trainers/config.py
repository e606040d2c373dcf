"""Training configuration: a TOML file plus ``key=value`` overrides -> a validated TrainConfig.

    load_config("colenv/Parity-v0", ["train.lr=0.01", "solver.method=rk4"]) -> TrainConfig

A task id is looked up as ``config/tasks/<name>.toml`` (``colenv/Parity-v0`` ->
``parity.toml``); anything else is a path to a TOML file. An override's key is dotted
(``model.network.lateral.trainable``) and its value is read as a TOML value
(``true``, ``0.01``, ``[1, 2]``, ``{name = "a", n_columns = 2}``); what does not parse as TOML
stays a string (``solver.method=rk4``). Unknown keys and bad values are :class:`ConfigError`
naming the key and what is allowed. The free-form tables (``task_kwargs``, ``model.params``,
``model.network``, ``solver``) are checked by the code that owns them: ``gym.make``,
:func:`colenv.models.load_params`, :meth:`colenv.models.NetworkSpec.from_dict`,
:meth:`colenv.SolverConfig.from_dict`.
"""

from __future__ import annotations

import copy
import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from colenv.models.column.params import ConfigError

__all__ = [
    "CONFIG_DIR",
    "CheckpointConfig",
    "ConfigError",
    "LoggingConfig",
    "MlpConfig",
    "ModelConfig",
    "SuccessConfig",
    "TrainConfig",
    "TrainLoopConfig",
    "config_path",
    "load_config",
]

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


@dataclass
class MlpConfig:
    hidden: int = 64
    """width of each hidden layer of the HopfField MLP"""
    layers: int = 2
    """number of hidden layers"""


@dataclass
class ModelConfig:
    kind: str = "columns"
    """"columns" (ColumnNetwork) or "hopf_mlp" (HopfField)"""
    params: dict = field(default_factory=dict)
    """overrides of config/model.toml, {"section.key": value} (columns only)"""
    initial_state: str = "rest"
    """"rest" (model.initial_state) or "condition:<key>" (y0 = trial.conditions[<key>])"""
    network: dict = field(default_factory=dict)
    """the layout, read by NetworkSpec.from_dict (columns only)"""
    mlp: MlpConfig = field(default_factory=MlpConfig)
    """the vector-field MLP (hopf_mlp only)"""


@dataclass
class TrainLoopConfig:
    steps: int = 300
    """number of optimizer steps"""
    batch_size: int = 16
    """trials per step when conditions = "random" """
    conditions: str = "all"
    """"all": every step trains on the evaluation grid; "random": fresh trials, seeded by (seed, step)"""
    task_kwargs: dict = field(default_factory=dict)
    """overrides of the top-level task_kwargs for the training trials only (e.g. a shorter
    trial_ms); evaluation always uses the task built from task_kwargs alone"""
    optimizer: str = "adam"
    """adam | adamw | sgd"""
    lr: float = 0.01
    """learning rate"""
    weight_decay: float = 0.0
    """weight decay of the optimizer"""
    schedule: str = "cosine"
    """learning-rate schedule: constant | cosine (to 0 at `steps`) | step (x0.1 every steps/3)"""
    grad_clip: float = 1.0
    """max gradient norm, 0 = off"""
    rate_limit_hz: float = 0.0
    """column models: rates above this (any population, any time) are penalised; 0 = off.
    The rate function has no saturation, so a weight step can tip a column into runaway"""
    rate_penalty: float = 1.0
    """weight of the mean squared excess rate over rate_limit_hz (Hz^2, like the task loss)"""
    runaway_hz: float = 0.0
    """column models: a rollout with any rate above this counts as diverged; 0 = off"""
    max_rejections: int = 0
    """on a diverged step, roll weights and optimizer back to before the previous update and
    halve the learning rate, up to this many times in a row; 0 = stop at once"""
    seed: int = 0
    """seeds python, numpy, torch, the model init and every trial batch"""
    device: str = "auto"
    """auto (cuda if available) | cpu | cuda | cuda:N"""
    dtype: str = "float32"
    """float32 | float64"""
    threads: int = 1
    """torch.set_num_threads for the run; 0 keeps torch's default. These models are small and
    dispatch-bound: one thread is as fast, and two threads slow down badly on a loaded machine"""
    eval_every: int = 10
    """evaluate on the task's grid every this many steps (and at the end)"""


@dataclass
class SuccessConfig:
    metric: str = "accuracy"
    """key of task.evaluate(); solved when >= threshold (<= for metrics named *rmse* / *error*)"""
    threshold: float | None = None
    """the criterion; unset = task.success_threshold"""
    patience: int = 1
    """consecutive successful evaluations before stopping"""
    stop_on_success: bool = True
    """stop training once the criterion held `patience` times"""


@dataclass
class LoggingConfig:
    wandb: bool = True
    """log to Weights & Biases (offline by default: no network, no API key)"""
    wandb_mode: str = "offline"
    """offline | online | disabled; the WANDB_MODE environment variable overrides"""
    project: str = "colenv"
    """W&B project"""
    run_dir: str = "runs"
    """parent folder; each run gets <run_dir>/<run_name>/ (checkpoints, plots, wandb/)"""
    plots: bool = True
    """write PNG plots into <run>/plots at the end (and log them to W&B)"""


@dataclass
class CheckpointConfig:
    every: int = 50
    """save last.pt every this many steps (also at the end and at success); 0 = only then"""


@dataclass
class TrainConfig:
    task: str = "colenv/Parity-v0"
    """Gymnasium id of the task"""
    trainer: str = "supervised"
    """registered trainer name, or "module.path:ClassName" """
    run_name: str = ""
    """folder name of the run under logging.run_dir; empty = <task>-<timestamp>"""
    resume: str = ""
    """a run dir or checkpoint to continue from ("" = fresh run)"""
    task_kwargs: dict = field(default_factory=dict)
    """keyword arguments of gym.make(task, **task_kwargs)"""
    model: ModelConfig = field(default_factory=ModelConfig)
    """what is trained"""
    solver: dict = field(default_factory=dict)
    """read by colenv.SolverConfig.from_dict"""
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    """the optimization loop"""
    success: SuccessConfig = field(default_factory=SuccessConfig)
    """when the task counts as solved"""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """W&B, plots, where runs go"""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """checkpoint cadence"""

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (what W&B and checkpoints store); from_dict(to_dict()) round-trips."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "<dict>") -> TrainConfig:
        """Build and validate from a nested dict; errors name the key and what is allowed."""
        config = _build(cls, raw, "", source)
        _validate(config, source)
        return config

    def solver_config(self):
        """The validated :class:`colenv.SolverConfig` of ``solver``."""
        from colenv.solve import SolverConfig

        return SolverConfig.from_dict(self.solver)

    @property
    def higher_is_better(self) -> bool:
        """Direction of the success metric: False for metrics named *rmse* / *error*."""
        name = self.success.metric.lower()
        return not ("rmse" in name or "error" in name)


CHOICES: dict[str, tuple[str, ...]] = {
    "model.kind": ("columns", "hopf_mlp"),
    "train.conditions": ("all", "random"),
    "train.optimizer": ("adam", "adamw", "sgd"),
    "train.schedule": ("constant", "cosine", "step"),
    "train.dtype": ("float32", "float64"),
    "logging.wandb_mode": ("offline", "online", "disabled"),
}
"""Allowed values of the string fields that are enumerations."""


def config_path(task_or_path: str | Path) -> Path:
    """The TOML file of a task id (config/tasks/<name>.toml) or a path."""
    text = str(task_or_path)
    if text.endswith(".toml") or Path(text).is_file():
        path = Path(text)
        if not path.is_file():
            raise ConfigError(f"config file {text!r} not found")
        return path
    name = text.split("/")[-1].split("-v")[0].lower()
    path = CONFIG_DIR / "tasks" / f"{name}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONFIG_DIR / "tasks").glob("*.toml"))
        raise ConfigError(
            f"no config for task {text!r} (looked for {path}); known: {', '.join(known)} "
            "(or pass a path to a .toml file)"
        )
    return path


def load_config(task_or_path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a task's TOML (or a TOML path), apply ``key=value`` overrides, validate.

    Args:
        task_or_path: a gym id ("colenv/XOR-v0") or a path to a TOML file.
        overrides: e.g. ``["train.lr=0.01", "model.network.lateral.trainable=true"]``.

    Raises:
        ConfigError: unknown key, bad value, or a file that is not valid TOML.
    """
    path = config_path(task_or_path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err
    raw = apply_overrides(raw, overrides or [])
    return TrainConfig.from_dict(raw, source=str(path))


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


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of ``raw`` with each ``key=value`` set at its dotted path (tables created)."""
    raw = copy.deepcopy(raw)
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


# ------------------------------------------------------------------------- validation
def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where} must be a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            raise ConfigError(
                f"{source}: unknown key {prefix + key!r}; allowed in {where}: {', '.join(names)}"
            )
    kwargs = {}
    for key, value in raw.items():
        kwargs[key] = _coerce(hints[key], value, prefix + key, source)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str, source: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".", source)
    allowed = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, _UnionType) else (tp,)
    if value is None and type(None) in allowed:
        return None
    for t in allowed:
        if t is bool and isinstance(value, bool):
            return value
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if t is str and isinstance(value, str):
            return value
        if t is dict and isinstance(value, dict):
            return copy.deepcopy(value)
    names = " or ".join("table" if t is dict else getattr(t, "__name__", str(t)) for t in allowed)
    raise ConfigError(f"{source}: {key} must be {names}, got {value!r}")


_UnionType = type(int | None)


def _validate(c: TrainConfig, source: str) -> None:
    def bad(key: str, value: Any, what: str) -> ConfigError:
        return ConfigError(f"{source}: {key} = {value!r} is not allowed; {what}")

    for key, choices in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(c, section), name)
        if value not in choices:
            raise bad(key, value, f"allowed: {', '.join(choices)}")
    for key, value, low in (
        ("train.steps", c.train.steps, 0),
        ("train.batch_size", c.train.batch_size, 1),
        ("train.eval_every", c.train.eval_every, 1),
        ("train.seed", c.train.seed, 0),
        ("success.patience", c.success.patience, 1),
        ("checkpoint.every", c.checkpoint.every, 0),
        ("train.max_rejections", c.train.max_rejections, 0),
        ("train.threads", c.train.threads, 0),
        ("model.mlp.hidden", c.model.mlp.hidden, 1),
        ("model.mlp.layers", c.model.mlp.layers, 1),
    ):
        if value < low:
            raise bad(key, value, f"must be >= {low}")
    for key, value in (
        ("train.lr", c.train.lr),
        ("train.weight_decay", c.train.weight_decay),
        ("train.grad_clip", c.train.grad_clip),
        ("train.rate_limit_hz", c.train.rate_limit_hz),
        ("train.rate_penalty", c.train.rate_penalty),
        ("train.runaway_hz", c.train.runaway_hz),
    ):
        if not value >= 0 or value == float("inf"):
            raise bad(key, value, "must be a finite number >= 0")
    if c.train.lr == 0:
        raise bad("train.lr", 0.0, "must be > 0")
    dev = c.train.device
    if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise bad("train.device", dev, "allowed: auto, cpu, cuda, cuda:N")
    init = c.model.initial_state
    if not (init == "rest" or (init.startswith("condition:") and len(init) > len("condition:"))):
        raise bad("model.initial_state", init, 'allowed: "rest" or "condition:<key>"')
    if c.model.kind == "hopf_mlp" and (c.model.network or c.model.params):
        raise bad(
            "model.network/model.params",
            "set",
            'they describe a ColumnNetwork; model.kind = "hopf_mlp" uses [model.mlp]',
        )
    # the free-form tables are checked by their owners, so errors surface at load time
    try:
        c.solver_config()
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{source}: solver: {err}") from err
    if c.model.kind == "columns":
        from colenv.models import NetworkSpec, load_params

        try:
            NetworkSpec.from_dict(c.model.network)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{source}: model.network: {err}") from err
        try:
            load_params(overrides=flat_params(c.model.params))
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{source}: model.params: {err}") from err


def flat_params(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"neuron": {"tau_m_ms": 20}}`` or ``{"neuron.tau_m_ms": 20}`` -> ``{"neuron.tau_m_ms": 20}``."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
