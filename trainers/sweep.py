"""Studies over seeds and sweeps over any config key, run on Ray Tune.

    python -m trainers sweep config/sweeps/xor_lr.toml [--address HOST:6379] [--out DIR] [--resume]

    spec = load_sweep("config/sweeps/xor_lr.toml")
    plan = make_plan(spec)                   # every point validated; no Ray yet
    outcome = run_sweep(plan, out="runs/xor_lr")

A sweep file (TOML, keys in :class:`SweepSpec`) names a ``base`` config (a task id or a task
TOML path) with ``overrides``, a ``[space]`` of dotted config keys (a list of values, or a
range ``{dist = "loguniform", low = 1e-3, high = 0.1}``), the ``algorithm`` (``grid``: every
combination of the lists; ``random``: ``samples`` points drawn with ``search_seed``;
``optuna``: ``samples`` points proposed by Optuna's TPE through
``ray.tune.search.optuna.OptunaSearch``), ``seeds`` per point (``train.seed``), the
``concurrency`` and an optional per-trial ``time_limit_s``. Every point is checked with
:func:`trainers.run.preflight` (the config parses, the task and model build, a rollout of
the first time steps runs) before Ray starts.

Each trial is an ordinary run (:func:`trainers.run.train`) in
``<out>/trials/<trial>/`` with ``train.threads = 1``, ``logging.group = <sweep name>`` and the
sweep's tags. The driver appends each finished trial to ``<out>/trials.jsonl`` (fsync'd) as
it finishes, and writes the tables, the plot and the W&B summary (:mod:`trainers.study`) from
it at the end; a sweep run again on the same output folder (``--resume``, or just the same
command) submits only the ``(point, seed)`` pairs not recorded there.

Ray is imported only when a sweep runs (``pip install "colenv[sweep]"``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import sys
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from colenv.config import StrictModel, parse
from colenv.errors import ConfigError
from trainers.callbacks import Callback

__all__ = [
    "LEDGER_FILE",
    "SPEC_FILE",
    "Plan",
    "Range",
    "SweepOutcome",
    "SweepSpec",
    "load_sweep",
    "make_plan",
    "ray_missing_message",
    "run_sweep",
    "run_trial",
]

LEDGER_FILE = "trials.jsonl"
"""The output folder's record of finished trials (one JSON line each, fsync'd)."""

SPEC_FILE = "sweep.json"
"""The output folder's record of the sweep it belongs to (its spec and hash)."""

RESERVED = ("train.seed", "run_name", "resume", "logging.run_dir", "train.threads")
"""Keys the sweep sets itself (``seeds``; the trial's folder; one thread per trial)."""

INSTALL_HINT = 'pip install "colenv[sweep]"  (Ray Tune and Optuna)'


class Range(StrictModel):
    """A range of ``[space]`` for ``random`` and ``optuna``: ``uniform`` and ``loguniform``
    floats in [low, high], ``randint`` integers low..high (both included)."""

    dist: Literal["uniform", "loguniform", "randint"] = Field(
        description="uniform, loguniform (low > 0) or randint (integers, high included)"
    )
    low: float | int = Field(description="lower bound")
    high: float | int = Field(description="upper bound (> low)")

    @model_validator(mode="after")
    def _bounds(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"low = {self.low!r} must be below high = {self.high!r}")
        if self.dist == "loguniform" and self.low <= 0:
            raise ValueError(f"loguniform needs low > 0 (got {self.low!r})")
        if self.dist == "randint" and not (
            isinstance(self.low, int) and isinstance(self.high, int)
        ):
            raise ValueError("randint needs integer low and high")
        return self

    def domain(self):
        """The Ray Tune domain of this range."""
        from ray import tune

        if self.dist == "uniform":
            return tune.uniform(float(self.low), float(self.high))
        if self.dist == "loguniform":
            return tune.loguniform(float(self.low), float(self.high))
        return tune.randint(int(self.low), int(self.high) + 1)


def _flatten_space(raw: Any, prefix: str = "") -> Any:
    """``[space]`` with dotted keys: a nested table (``train.lr = [...]`` unquoted in TOML)
    is flattened; a table with ``dist`` is a :class:`Range`."""
    if not isinstance(raw, Mapping):
        return raw
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and "dist" not in value and value:
            out.update(_flatten_space(value, name))
        else:
            out[name] = value
    return out


class SweepSpec(StrictModel):
    """A sweep file: what to train, over which values, how many seeds, how in parallel."""

    name: str = Field(
        "",
        description="the sweep's name: its output folder runs/<name> and W&B group; empty = "
        "the file's name",
    )
    base: str = Field(
        min_length=1, description="the base config: a task id (colenv/XOR-v0) or a TOML path"
    )
    overrides: list[str] = Field(
        default_factory=list,
        description='key=value overrides of the base, e.g. ["train.steps=100"]',
    )
    algorithm: Literal["grid", "random", "optuna"] = Field(
        "grid",
        description="grid (every combination of the lists), random (samples points, "
        "search_seed) or optuna (samples points proposed by Optuna's TPE)",
    )
    samples: int = Field(
        0, ge=0, description="random and optuna: how many points; grid: 0 (every combination)"
    )
    search_seed: int = Field(0, ge=0, description="random and optuna: seed of the search")
    space: dict[str, list[Any] | Range] = Field(
        description='dotted config key -> list of values, or {dist = "uniform" | "loguniform" '
        '| "randint", low, high} (random and optuna); the key "base" lists base configs'
    )
    seeds: int | list[int] = Field(
        1, description="train.seed of each point: n (0..n-1) or a list of seeds"
    )
    concurrency: int = Field(1, ge=1, description="trials at once (max_concurrent_trials)")
    time_limit_s: float = Field(
        0.0, ge=0, description="stop a trial after this many seconds (status timeout); 0 = none"
    )
    metric: str = Field(
        "",
        description="the metric to summarise (and optuna's objective); empty = each point's "
        "success.metric. The success criterion stays the config's success.*",
    )
    tags: list[str] = Field(default_factory=list, description="W&B tags of every trial")
    notes: str = Field("", description="W&B notes of every trial and the summary run")
    wandb: bool = Field(True, description="log the summary table to a W&B run (offline default)")

    @model_validator(mode="before")
    @classmethod
    def _flat_space(cls, raw: Any) -> Any:
        if isinstance(raw, Mapping) and isinstance(raw.get("space"), Mapping):
            space = _flatten_space(raw["space"])
            for key, value in space.items():
                if isinstance(value, Mapping):  # a range: its own errors name space.<key>
                    space[key] = parse(Range, value, where=f"space.{key}")
            return {**raw, "space": space}
        return raw

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: int | list[int]) -> int | list[int]:
        if isinstance(value, int):
            if value < 1:
                raise ValueError(f"must be at least 1 (got {value})")
            return value
        if not value:
            raise ValueError("the list of seeds is empty")
        if any(s < 0 for s in value) or len(set(value)) != len(value):
            raise ValueError(f"seeds must be distinct integers >= 0 (got {value})")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if value:
            from trainers.rundir import check_run_name

            check_run_name(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SweepSpec:
        if not self.space:
            raise ValueError(
                'space is empty: give at least one key, e.g. "train.lr" = [0.01, 0.1] (a '
                'study over seeds alone: "train.lr" = [<the base value>])'
            )
        for key, values in self.space.items():
            if key in RESERVED:
                raise ValueError(
                    f"space.{key}: the sweep sets {key} itself (seeds; the trial folder; one "
                    f"thread per trial); sweepable keys are any others"
                )
            if isinstance(values, list) and not values:
                raise ValueError(f"space.{key} is an empty list")
        ranges = [k for k, v in self.space.items() if isinstance(v, Range)]
        if self.algorithm == "grid":
            if ranges:
                raise ValueError(
                    f"space.{ranges[0]} is a range; grid takes lists of values (use "
                    'algorithm = "random" or "optuna" for ranges)'
                )
            if self.samples:
                raise ValueError(
                    f"samples = {self.samples}: grid runs every combination; samples is for "
                    "random and optuna"
                )
        elif self.samples < 1:
            raise ValueError(f"algorithm = {self.algorithm!r} needs samples >= 1")
        if self.algorithm == "optuna" and "base" in self.space:
            raise ValueError('space.base: optuna searches config values; use grid for "base"')
        return self

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    def digest(self) -> str:
        """sha256 of the spec (canonical JSON) without the keys that do not change a trial's
        result (``concurrency``, ``wandb``): which output folder belongs to this sweep."""
        raw = self.model_dump(mode="json", exclude={"concurrency", "wandb"})
        text = json.dumps(raw, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and check a sweep file; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {str(path)!r} not found")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    if "base" in raw and not isinstance(raw["base"], str):
        pass  # parse names it
    elif isinstance(raw.get("base"), str):
        raw["base"] = resolve_base(raw["base"], path.parent)
    space = raw.get("space")
    if isinstance(space, dict) and isinstance(space.get("base"), list):
        raw["space"] = {
            **space,
            "base": [
                resolve_base(b, path.parent) if isinstance(b, str) else b for b in space["base"]
            ],
        }
    raw.setdefault("name", path.stem)
    try:
        return parse(SweepSpec, raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def resolve_base(base: str, here: Path) -> str:
    """A task id stays; a TOML path relative to the sweep file (or to the current folder)
    becomes absolute (trials run in other processes, maybe other folders)."""
    from colenv.registration import TASKS

    if base in TASKS:
        return base
    for candidate in (Path(base), here / base):
        if candidate.is_file():
            return str(candidate.resolve())
    return base  # load_config names it


def _toml_value(value: Any) -> str:
    from trainers.config import _toml

    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{value!r} is not a finite number")
    return _toml(value)


# ----------------------------------------------------------------------------- the plan
@dataclass
class Plan:
    """A checked sweep: its points (grid, random: all of them; optuna: proposed while it
    runs), seeds, and everything a trial needs. Picklable (Ray ships it to the trials)."""

    spec: SweepSpec
    keys: list[str]
    points: list[dict[str, Any]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    mode: str = "max"
    """direction of the summarised metric (optuna's objective)"""
    project: str = "colenv"
    wandb_mode: str = "offline"

    def point_key(self, point: Mapping[str, Any]) -> str:
        return json.dumps({k: point[k] for k in self.keys}, sort_keys=True)

    def label(self, point: Mapping[str, Any]) -> str:
        """The point's name in trial folder names: ``p000``... (grid, random), the task's
        short name when only ``base`` varies, ``p<hash>`` for optuna."""
        if self.keys == ["base"]:
            return _slug(str(point["base"]))
        key = self.point_key(point)
        for i, p in enumerate(self.points):
            if self.point_key(p) == key:
                return f"p{i:03d}"
        return "p" + hashlib.sha1(key.encode()).hexdigest()[:8]

    def trial_name(self, point: Mapping[str, Any], seed: int) -> str:
        return f"{self.label(point)}-s{seed}"

    def config(self, point: Mapping[str, Any], seed: int, out: Path | None = None):
        """The TrainConfig of one trial (its run folder under ``out/trials`` when given)."""
        from trainers.config import load_config

        spec = self.spec
        base = str(point.get("base", spec.base))
        overrides = list(spec.overrides)
        overrides += [f"{k}={_toml_value(v)}" for k, v in point.items() if k != "base"]
        overrides += [
            f"train.seed={seed}",
            "train.threads=1",
            f"logging.group={_toml_value(spec.name)}",
        ]
        if spec.tags:
            overrides.append(f"logging.tags={_toml_value(list(spec.tags))}")
        if spec.notes:
            overrides.append(f"logging.notes={_toml_value(spec.notes)}")
        if out is not None:
            overrides.append(f"logging.run_dir={_toml_value(str(Path(out) / 'trials'))}")
            overrides.append(f"run_name={_toml_value(self.trial_name(point, seed))}")
        return load_config(base, overrides)


def _slug(base: str) -> str:
    name = base.rsplit("/", 1)[-1]
    name = name[: -len(".toml")] if name.endswith(".toml") else name
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name).lower() or "base"


PREFLIGHT_TRAIN_KEYS = ("task_kwargs", "conditions", "batch_size", "device", "dtype", "seed")
"""The ``[train]`` keys :func:`trainers.run.preflight` reads; points that differ only in other
``train`` keys (and in ``success`` other than the metric, ``logging``, ``checkpoint``) share
one preflight."""


def _preflight_key(config) -> str:
    raw = config.to_dict()
    raw["train"] = {k: raw["train"][k] for k in PREFLIGHT_TRAIN_KEYS}
    raw["success"] = {"metric": raw["success"]["metric"]}
    for key in ("logging", "checkpoint", "run_name"):
        raw.pop(key, None)
    return json.dumps(raw, sort_keys=True, default=str)


def _check(plan: Plan, point: dict[str, Any], what: str, cache: dict[str, Any] | None) -> Any:
    """Check one point (seed = the first seed): its config parses and its task builds;
    with ``cache`` (a dict) also :func:`trainers.run.preflight` (model, data, a rollout),
    once per distinct preflight key. A ConfigError names the point."""
    from trainers.build import build_task
    from trainers.run import preflight

    try:
        config = plan.config(point, plan.seeds[0])
        if cache is None:
            build_task(config)
        else:
            key = _preflight_key(config)
            if key not in cache:
                preflight(config)
                cache[key] = True
    except ConfigError as err:
        shown = ", ".join(f"{k} = {_show(v)}" for k, v in point.items())
        raise ConfigError(f"sweep {plan.spec.name!r}, {what} ({shown}): {err}") from None
    return config


def _show(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, str | list | dict) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _sample(spec: SweepSpec) -> list[dict[str, Any]]:
    """``samples`` points drawn with Ray Tune's domains, seeded by ``search_seed``."""
    import numpy as np
    from ray import tune

    rng = np.random.RandomState(spec.search_seed)
    points = []
    for _ in range(spec.samples):
        point = {}
        for key, values in spec.space.items():
            domain = values.domain() if isinstance(values, Range) else tune.choice(values)
            point[key] = _plain(domain.sample(random_state=rng))
        points.append(point)
    return points


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and not isinstance(value, list | dict | str):
        return value.item()
    return value


def make_plan(spec: SweepSpec, *, preflight: bool = True) -> Plan:
    """Check every point of ``spec`` before anything runs.

    grid: every combination; random: every drawn point; optuna: each key's bounds (or each
    listed value) with the other keys at their lower bound / first value. Each point's config
    is parsed (:func:`trainers.config.load_config`) and its task built; with ``preflight``
    (the command's default) :func:`trainers.run.preflight` also runs (the model builds, the
    data is finite, a rollout of the first time steps runs), once per group of points that
    differ only in keys it does not read (``train.lr``, ``train.steps``, ...). The first bad
    point is a ConfigError naming it, the key and what is allowed. Random sampling needs Ray
    (its search domains), imported here; Ray is not started.
    """
    from trainers.types import higher_is_better

    keys = list(spec.space)
    plan = Plan(spec=spec, keys=keys, seeds=spec.seed_list)
    if spec.algorithm == "grid":
        lists = [spec.space[k] for k in keys]
        plan.points = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*lists)]
        checks = [(p, f"point {i}") for i, p in enumerate(plan.points)]
    elif spec.algorithm == "random":
        _require_ray()
        plan.points = _sample(spec)
        checks = [(p, f"sample {i}") for i, p in enumerate(plan.points)]
        checks += _edge_points(spec)
    else:
        checks = _edge_points(spec)
    first = None
    cache: dict[str, Any] | None = {} if preflight else None
    for point, what in checks:
        config = _check(plan, point, what, cache)
        first = first or config
    assert first is not None  # the space is not empty
    if spec.metric:
        _check_summary_metric(spec, first)
    plan.mode = "max" if higher_is_better(spec.metric or first.success.metric) else "min"
    plan.project = first.logging.project
    plan.wandb_mode = first.logging.wandb_mode
    return plan


def _check_summary_metric(spec: SweepSpec, config) -> None:
    """``metric`` must be a metric the task reports (or ``loss``); the success criterion
    (``success.*``) stays the config's."""
    import torch

    from trainers.build import build_task

    task = build_task(config)
    grid = task.sample_batch(conditions="all", seed=config.train.seed, dtype=torch.float64)
    names = [*task.evaluate(grid.target, grid), "loss"]
    if spec.metric not in names:
        raise ConfigError(
            f"sweep {spec.name!r}: metric = {spec.metric!r} is not a metric of {config.task}; "
            f"allowed: {', '.join(names)}"
        )


def _edge_points(spec: SweepSpec) -> list[tuple[dict[str, Any], str]]:
    def first(v: Any) -> Any:
        return v.low if isinstance(v, Range) else v[0]

    anchor = {k: first(v) for k, v in spec.space.items()}
    out = []
    for key, values in spec.space.items():
        edge = [values.low, values.high] if isinstance(values, Range) else list(values)
        for value in edge:
            out.append(({**anchor, key: value}, f"space.{key} = {_show(value)}"))
    return out


# ----------------------------------------------------------------------------- one trial
class TimeLimit(Callback):
    """A callback that stops a run at the first step boundary after ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.hit = False
        self._start = 0.0

    def on_fit_start(self, state) -> None:
        self._start = time.monotonic()

    def on_step_end(self, state) -> bool | None:
        if time.monotonic() - self._start > self.seconds:
            self.hit = True
            state.stop_reason = (
                f"time limit of {self.seconds:g} s (time_limit_s) reached at step {state.step}"
            )
            return False
        return None


def _steps_to_criterion(config, history: Sequence[Mapping[str, Any]], threshold: float):
    """The step of the evaluation at which the success criterion had held ``patience``
    evaluations in a row for the first time (None if never)."""
    from trainers.types import higher_is_better

    metric, patience = config.success.metric, config.success.patience
    better = higher_is_better(metric)
    count = 0
    for row in history:
        value = row.get(metric)
        ok = isinstance(value, int | float) and (
            value >= threshold if better else value <= threshold
        )
        count = count + 1 if ok else 0
        if count >= patience:
            return int(row["step"])
    return None


def _node_id() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:
        pass
    return ""


def run_trial(plan: Plan, point: dict[str, Any], seed: int, out: Path) -> dict[str, Any]:
    """Train one ``(point, seed)`` into ``out/trials/<trial>``; its ledger row (never
    raises for the trial's own failures: status ``error`` with the message). A folder left
    by a trial that was killed before it was recorded is moved to ``out/trials/.stale/``."""
    from trainers.build import build_task
    from trainers.run import default_callbacks, train

    name = plan.trial_name(point, seed)
    folder = Path(out) / "trials" / name
    row: dict[str, Any] = {
        "point": dict(point),
        "point_key": plan.point_key(point),
        "label": plan.label(point),
        "seed": seed,
        "trial": name,
        "status": "error",
        "solved": False,
        "metric": plan.spec.metric,
        "value": None,
        "metrics": {},
        "steps": 0,
        "steps_to_criterion": None,
        "wall_s": 0.0,
        "run_dir": str(folder),
        "node_id": _node_id(),
        "error": "",
    }
    start = time.perf_counter()
    try:
        if folder.exists():
            stale = Path(out) / "trials" / ".stale"
            stale.mkdir(parents=True, exist_ok=True)
            shutil.move(str(folder), str(stale / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"))
        config = plan.config(point, seed, out)
        metric = plan.spec.metric or config.success.metric
        row["metric"] = metric
        limit = TimeLimit(plan.spec.time_limit_s) if plan.spec.time_limit_s else None
        callbacks = default_callbacks(config) + ([limit] if limit else [])
        result = train(config, callbacks)
        threshold = config.success.threshold
        if threshold is None:
            threshold = float(build_task(config).success_threshold)
        row.update(
            status="diverged" if result.diverged else "ok",
            solved=bool(result.solved),
            metrics={k: _plain(v) for k, v in result.metrics.items()},
            value=_plain(result.metrics.get(metric)),
            steps=int(result.steps),
            steps_to_criterion=_steps_to_criterion(config, result.history, threshold),
            error=result.message if result.diverged else "",
        )
        if limit is not None and limit.hit:
            row.update(status="timeout", error=result.message)
    except Exception as err:  # ConfigError, DivergenceError, a trainer's own bug: recorded
        row["error"] = f"{type(err).__name__}: {err}"
    row["wall_s"] = time.perf_counter() - start
    return row


def _trainable(config: dict[str, Any], plan: Plan, out: str, jobs: list, done: dict) -> None:
    """Ray Tune's function trainable: one ``(point, seed)``; reports the ledger row as JSON
    (and ``objective``, the summarised metric, for the searcher). A pair already in ``done``
    (optuna, resumed) is reported from there without training."""
    from ray import tune

    if "job" in config:
        point, seed = jobs[config["job"]]
    else:
        from ray.tune.search.repeater import TRIAL_INDEX

        point = {k: _plain(config[f"p{i}"]) for i, k in enumerate(plan.keys)}
        seed = plan.seeds[int(config.get(TRIAL_INDEX, 0))]
    key = f"{plan.point_key(point)}|{seed}"
    if key in done:
        row, replayed = done[key], True
    else:
        row, replayed = run_trial(plan, point, seed, Path(out)), False
    report: dict[str, Any] = {"sweep_row": json.dumps(row), "replayed": replayed}
    value = row.get("value")
    if row["status"] != "error" and isinstance(value, int | float) and math.isfinite(value):
        report["objective"] = float(value)
    tune.report(report)


# ----------------------------------------------------------------------------- the sweep
def ray_missing_message() -> str | None:
    """None when Ray Tune and Optuna import; else what to install."""
    import importlib.util

    missing = [m for m in ("ray", "optuna") if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return f"the sweep command needs {' and '.join(missing)}: {INSTALL_HINT}"


def _require_ray() -> None:
    message = ray_missing_message()
    if message:
        raise ConfigError(message)


@dataclass
class SweepOutcome:
    """What :func:`run_sweep` did: the output folder, every recorded row, the summary per
    point, the files written, how many trials ran now, how many are still missing."""

    out: Path
    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    files: dict[str, Path]
    ran: int
    missing: int
    wall_s: float
    ray_start_s: float
    wandb_run: Path | None = None
    keys: list[str] = field(default_factory=list)
    """the swept keys (columns of the tables)"""


def claim_output(spec: SweepSpec, out: Path, resume: bool) -> bool:
    """Make or reopen the output folder; True when it continues an earlier run of the same
    sweep. Refuses (ConfigError) a folder of another sweep, a non-empty folder that is not a
    sweep's, and ``resume`` without a folder."""
    record = out / SPEC_FILE
    digest = spec.digest()
    if record.is_file():
        try:
            saved = json.loads(record.read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"{record} is damaged ({err}); choose another --out") from None
        if saved.get("hash") != digest:
            raise ConfigError(
                f"{out} holds the sweep {saved.get('name')!r} made from a different sweep file "
                f"(hash {str(saved.get('hash'))[:12]} != {digest[:12]}); it is never "
                "overwritten: choose another --out (or restore that sweep file to resume it)"
            )
        return True
    if resume:
        raise ConfigError(
            f"--resume: {out} holds no sweep ({record} is missing); nothing to resume"
        )
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not a sweep's output folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{SPEC_FILE}.tmp"
    tmp.write_text(
        json.dumps(
            {
                "name": spec.name,
                "hash": digest,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "spec": spec.model_dump(mode="json"),
            },
            indent=2,
        )
        + "\n"
    )
    os.replace(tmp, record)
    return False


def _start_ray(address: str | None, cpus: int) -> tuple[bool, float]:
    """Connect to ``address`` (or RAY_ADDRESS), else start a local Ray on the loopback
    interface with ``cpus`` CPUs and no dashboard. Returns (started here, seconds)."""
    import ray

    start = time.perf_counter()
    address = address or os.environ.get("RAY_ADDRESS") or None
    common = dict(log_to_driver=False, logging_level="WARNING", configure_logging=True)
    if ray.is_initialized():
        return False, 0.0
    if address:
        ray.init(address=address, **common)
        return True, time.perf_counter() - start
    ray.init(
        address="local",
        num_cpus=cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        **common,
    )
    return True, time.perf_counter() - start


def _ledger_callback(plan: Plan, ledger, total: int, seen: set, printer):
    from ray import tune

    class _Record(tune.Callback):
        """Driver side: append each finished trial's row to the ledger (once) and print it."""

        def on_trial_result(self, iteration, trials, trial, result, **info):
            text = result.get("sweep_row")
            if not text:
                return
            row = json.loads(text)
            key = (row["point_key"], int(row["seed"]))
            if key in seen:
                return
            seen.add(key)
            ledger.append(row)
            printer(row, len(seen), total)

        def on_trial_error(self, iteration, trials, trial, **info):
            print(
                f"trial {trial.trial_id} failed outside its run (worker lost?); it is not "
                "recorded and runs again on --resume",
                file=sys.stderr,
                flush=True,
            )

    return _Record()


def _print_row(row: dict[str, Any], n: int, total: int) -> None:
    value = row.get("value")
    shown = f"{row['metric']}={value:.4g}" if isinstance(value, int | float) else ""
    extra = f"  {row['error'][:160]}" if row.get("error") else ""
    print(
        f"[{n}/{total}] {row['trial']:<16} {row['status']:<8} {shown:<18} steps {row['steps']:<5}"
        f" {row['wall_s']:.1f} s{extra}",
        flush=True,
    )


class _NoRestoreHint(logging.Filter):
    """Drops Tune's "Resume experiment with: Tuner.restore(...)": a sweep continues with
    ``--resume`` (its own message says so), never with Tuner.restore."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore" not in record.getMessage()


def _hide_tune_restore_hint() -> None:
    log = logging.getLogger("ray.tune.tune")
    if not any(isinstance(f, _NoRestoreHint) for f in log.filters):
        log.addFilter(_NoRestoreHint())


def run_sweep(
    plan: Plan,
    out: str | Path | None = None,
    *,
    address: str | None = None,
    resume: bool = False,
    quiet: bool = False,
) -> SweepOutcome:
    """Run the trials of ``plan`` not yet recorded in ``out`` on Ray Tune, then write the
    tables, the plot and the W&B summary run.

    Args:
        out: the output folder (default ``runs/<name>``); an existing folder of the same
            sweep continues (``resume`` only makes a missing folder an error).
        address: a Ray cluster (``host:port``); default RAY_ADDRESS, else a local Ray with
            ``concurrency`` CPUs.

    Raises:
        ConfigError: another sweep's folder, or Ray / Optuna not installed.
    """
    _require_ray()
    from trainers.study import Ledger, log_summary_to_wandb, write_outputs

    spec = plan.spec
    out = Path(out or Path("runs") / spec.name).absolute()
    continued = claim_output(spec, out, resume)
    ledger = Ledger(out / LEDGER_FILE)
    done = ledger.done()
    printer = (lambda row, n, total: None) if quiet else _print_row
    t0 = time.perf_counter()
    n_total = (len(plan.points) if spec.algorithm != "optuna" else spec.samples) * len(plan.seeds)
    if continued and not quiet:
        print(f"continuing {out}: {len(done)} of {n_total} trials recorded", flush=True)

    _hide_tune_restore_hint()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_RESULT_BUFFER_LENGTH", "0")
    from ray import tune

    started, ray_s = (False, 0.0)
    ran = 0
    seen = set(done)
    try:
        jobs: list[tuple[dict[str, Any], int]] = []
        search_alg = None
        replay: dict[str, dict[str, Any]] = {}
        if spec.algorithm == "optuna":
            search_alg, replay, todo_points = _optuna_searcher(plan, done)
            num_samples = todo_points * len(plan.seeds)
            param_space: dict[str, Any] = {}
        else:
            jobs = [(p, s) for p in plan.points for s in plan.seeds]
            jobs = [(p, s) for p, s in jobs if (plan.point_key(p), s) not in done]
            num_samples = 1
            param_space = {"job": tune.grid_search(list(range(len(jobs))))}
        if jobs or (spec.algorithm == "optuna" and num_samples):
            started, ray_s = _start_ray(address, spec.concurrency)
            trainable = tune.with_resources(
                tune.with_parameters(_trainable, plan=plan, out=str(out), jobs=jobs, done=replay),
                {"cpu": 1},
            )
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=tune.TuneConfig(
                    num_samples=num_samples,
                    max_concurrent_trials=spec.concurrency,
                    search_alg=search_alg,
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}",
                    storage_path=str(out / "tune"),
                    verbose=0,
                    failure_config=tune.FailureConfig(max_failures=0),
                    callbacks=[_ledger_callback(plan, ledger, n_total, seen, printer)],
                ),
            )
            before = len(seen)
            tuner.fit()
            ran = len(seen) - before
    finally:
        if started:
            import ray

            ray.shutdown()
    rows = ledger.rows()
    summary, files = write_outputs(out, plan.keys, rows, [plan.point_key(p) for p in plan.points])
    wandb_run = None
    if spec.wandb and rows:
        wandb_run = log_summary_to_wandb(
            out,
            spec.name,
            plan.keys,
            summary,
            project=plan.project,
            mode=plan.wandb_mode,
            tags=spec.tags,
            notes=spec.notes,
            plot=files.get("summary.png"),
        )
    return SweepOutcome(
        out=out,
        rows=rows,
        summary=summary,
        files=files,
        ran=ran,
        missing=max(n_total - len(rows), 0),
        wall_s=time.perf_counter() - t0,
        ray_start_s=ray_s,
        wandb_run=wandb_run,
        keys=list(plan.keys),
    )


def _optuna_searcher(plan: Plan, done: dict[tuple[str, int], dict[str, Any]]):
    """OptunaSearch (TPE, seeded) repeated over the seeds (``Repeater``): points whose every
    seed is recorded are added to the study with their mean objective; points with some
    seeds recorded are proposed first (their recorded seeds are replayed from the ledger,
    not trained). Returns (searcher, replay map, points still to propose)."""
    import numpy as np
    from ray import tune
    from ray.tune.search import Repeater
    from ray.tune.search.optuna import OptunaSearch

    spec = plan.spec
    space = {
        f"p{i}": (v.domain() if isinstance(v, Range) else tune.choice(v))
        for i, v in enumerate(spec.space.values())
    }
    by_point: dict[str, list[dict[str, Any]]] = {}
    for (key, _seed), row in done.items():
        by_point.setdefault(key, []).append(row)
    complete, partial = [], []
    for rows in by_point.values():
        point = {f"p{i}": rows[0]["point"][k] for i, k in enumerate(plan.keys)}
        values = [r.get("value") for r in rows if r["status"] != "error"]
        values = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
        reward = float(np.mean(values)) if values else None
        (complete if len(rows) >= len(plan.seeds) else partial).append((point, reward))
    searcher = OptunaSearch(
        space=space,
        metric="objective",
        mode=plan.mode,
        seed=spec.search_seed,
        points_to_evaluate=[p for p, _ in partial] or None,
    )
    for point, reward in complete:
        searcher.add_evaluated_point(point, reward, error=reward is None)
    replay = {
        f"{plan.point_key(r['point'])}|{int(r['seed'])}": r
        for rows in by_point.values()
        for r in rows
    }
    todo = max(spec.samples - len(complete), 0)
    return Repeater(searcher, repeat=len(plan.seeds), set_index=True), replay, todo
