"""What a sweep leaves in its output folder: the trials ledger, the tables, the plot and the
W&B summary run. Pure Python (no Ray): :mod:`trainers.sweep` runs the trials and calls these.

    ledger = Ledger(out / "trials.jsonl")      # append-only, fsync'd, one JSON row per trial
    rows = ledger.rows()
    summary = summarize(rows, metric_of_point)  # one dict per point
    write_outputs(out, rows, summary, keys)     # trials.{csv,md}, summary.{csv,md}, summary.png

A trial row holds ``point`` (``{key: value}``), ``point_key`` (its canonical JSON), ``label``,
``seed``, ``trial`` (the run folder's name), ``status`` (``ok``, ``diverged``, ``timeout``,
``error``), ``solved``, ``metric`` (the summarised metric's name) and ``value``, ``metrics``
(the run's final metrics), ``steps``, ``steps_to_criterion`` (None when the criterion never
held), ``wall_s``, ``run_dir``, ``node_id`` and ``error``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from trainers.rundir import append_line
from trainers.types import higher_is_better

__all__ = [
    "STATUSES",
    "Ledger",
    "log_summary_to_wandb",
    "markdown_table",
    "plot_summary",
    "results_table",
    "summarize",
    "write_outputs",
]

STATUSES = ("ok", "diverged", "timeout", "error")
"""A recorded trial's status: trained to its end (solved or not), stopped by a divergence,
stopped by the sweep's per-trial time limit, or raised (its message in ``error``)."""


class Ledger:
    """An append-only JSONL file of finished trials, each line flushed and fsync'd before
    :meth:`append` returns: what a killed sweep keeps. A last line cut short by a kill is
    skipped when read; a ``(point_key, seed)`` recorded twice keeps its first row."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def rows(self) -> list[dict[str, Any]]:
        """The recorded rows, in the order they finished, one per ``(point_key, seed)``."""
        if not self.path.is_file():
            return []
        seen: set[tuple[str, int]] = set()
        rows = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                key = (row["point_key"], int(row["seed"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
            if key not in seen:
                seen.add(key)
                rows.append(row)
        return rows

    def done(self) -> dict[tuple[str, int], dict[str, Any]]:
        """``{(point_key, seed): row}`` of the recorded trials."""
        return {(r["point_key"], int(r["seed"])): r for r in self.rows()}

    def append(self, row: dict[str, Any]) -> None:
        """Write one row (one line), flushed and fsync'd."""
        append_line(self.path, json.dumps(row, default=str) + "\n")


# ----------------------------------------------------------------------------- summaries
def _finite(values: Iterable[Any]) -> list[float]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if math.isfinite(v):
            out.append(float(v))
    return out


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One dict per point (in the order its first trial appears in ``rows``):

    ``label``, ``point``, ``point_key``, ``metric`` (the summarised metric), ``n`` (trials),
    ``solved`` (how many), ``success_rate``, ``n_error``, ``n_timeout``, ``n_diverged``;
    ``mean`` / ``std`` of the summarised metric and ``metrics`` ``{name: (mean, std)}`` of
    every final metric, over the trials that report it (std with n - 1; 0 for one trial);
    ``steps_median`` / ``steps_min`` / ``steps_max``: steps to criterion over the solved
    trials (None when none solved); ``wall_median`` and ``wall_total`` (s); ``best``: the
    trial with the best summarised metric (its direction: :func:`higher_is_better`).
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["point_key"], []).append(row)
    out = []
    for key, trials in groups.items():
        trials = sorted(trials, key=lambda r: int(r["seed"]))
        metric = trials[0].get("metric", "")
        names: list[str] = []
        for r in trials:
            names += [m for m in (r.get("metrics") or {}) if m not in names]
        metrics = {
            m: _mean_std(_finite((r.get("metrics") or {}).get(m) for r in trials)) for m in names
        }
        values = _finite(r.get("value") for r in trials)
        mean, std = _mean_std(values)
        solved = [r for r in trials if r.get("solved")]
        steps = [
            int(r["steps_to_criterion"]) for r in solved if r.get("steps_to_criterion") is not None
        ]
        walls = _finite(r.get("wall_s") for r in trials)
        scored = [r for r in trials if _finite([r.get("value")])]
        best = None
        if scored:
            pick = max if higher_is_better(metric) else min
            best = pick(scored, key=lambda r: float(r["value"]))["trial"]
        out.append(
            {
                "label": trials[0]["label"],
                "point": trials[0]["point"],
                "point_key": key,
                "metric": metric,
                "n": len(trials),
                "solved": len(solved),
                "success_rate": len(solved) / len(trials),
                "n_error": sum(r["status"] == "error" for r in trials),
                "n_timeout": sum(r["status"] == "timeout" for r in trials),
                "n_diverged": sum(r["status"] == "diverged" for r in trials),
                "mean": mean,
                "std": std,
                "metrics": metrics,
                "steps_median": statistics.median(steps) if steps else None,
                "steps_min": min(steps) if steps else None,
                "steps_max": max(steps) if steps else None,
                "wall_median": statistics.median(walls) if walls else math.nan,
                "wall_total": sum(walls),
                "best": best,
            }
        )
    return out


# ----------------------------------------------------------------------------- formatting
def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}g}"
    return str(value)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return ""
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _cell(text: Any) -> str:
    """A markdown table cell: one line, ``|`` escaped, at most 200 characters."""
    s = " ".join(str(text).split()).replace("|", "\\|")
    return s if len(s) <= 200 else s[:197] + "..."


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _steps_text(s: dict[str, Any]) -> str:
    if s["steps_median"] is None:
        return "-"
    if s["steps_min"] == s["steps_max"]:
        return _num(float(s["steps_median"]))
    return f"{_num(float(s['steps_median']))} ({s['steps_min']}-{s['steps_max']})"


def _pm(mean: float, std: float) -> str:
    if not math.isfinite(mean):
        return "-"
    return f"{_num(mean)} ± {_num(std, 2)}"


def _value_text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str | list | dict) else _num(value)


def _trial_columns(keys: Sequence[str], rows: Sequence[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for r in rows:
        names += [m for m in (r.get("metrics") or {}) if m not in names]
    return [
        "trial",
        *keys,
        "seed",
        "status",
        "solved",
        "metric",
        "value",
        "steps",
        "steps_to_criterion",
        "wall_s",
        *[f"metrics.{m}" for m in names],
        "node_id",
        "run_dir",
        "error",
    ]


def _trial_record(row: dict[str, Any], columns: Sequence[str]) -> dict[str, Any]:
    rec = {}
    for col in columns:
        if col.startswith("metrics."):
            rec[col] = (row.get("metrics") or {}).get(col[len("metrics.") :])
        elif col in ("trial", "seed", "status", "solved", "metric", "value", "steps"):
            rec[col] = row.get(col)
        elif col in ("steps_to_criterion", "wall_s", "node_id", "run_dir", "error"):
            rec[col] = row.get(col)
        else:  # a point key
            rec[col] = row["point"].get(col)
    return rec


def _summary_columns(keys: Sequence[str], summary: Sequence[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for s in summary:
        names += [m for m in s["metrics"] if m not in names]
    metric_cols = [c for m in names for c in (f"{m}_mean", f"{m}_std")]
    return [
        "point",
        *keys,
        "n",
        "solved",
        "success_rate",
        "n_error",
        "n_timeout",
        "n_diverged",
        "metric",
        "mean",
        "std",
        "steps_median",
        "steps_min",
        "steps_max",
        "wall_median_s",
        "wall_total_s",
        *metric_cols,
        "best",
    ]


def _summary_record(s: dict[str, Any], columns: Sequence[str], keys: Sequence[str]) -> dict:
    rec: dict[str, Any] = {"point": s["label"]}
    for k in keys:
        rec[k] = s["point"].get(k)
    for col in columns:
        if col in rec:
            continue
        if col == "wall_median_s":
            rec[col] = s["wall_median"]
        elif col == "wall_total_s":
            rec[col] = s["wall_total"]
        elif col.endswith("_mean") and col[: -len("_mean")] in s["metrics"]:
            rec[col] = s["metrics"][col[: -len("_mean")]][0]
        elif col.endswith("_std") and col[: -len("_std")] in s["metrics"]:
            rec[col] = s["metrics"][col[: -len("_std")]][1]
        else:
            rec[col] = s.get(col)
    return rec


def _write_csv(path: Path, columns: Sequence[str], records: Iterable[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        for rec in records:
            writer.writerow(
                {k: (json.dumps(v) if isinstance(v, list | dict) else v) for k, v in rec.items()}
            )
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def trials_markdown(keys: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    """Every trial: point values, seed, status, the summarised metric, steps, wall time,
    run folder and error."""
    header = ["trial", *keys, "seed", "status", "solved", "metric", "steps", "to criterion"]
    header += ["wall", "run folder", "error"]
    body = []
    for r in rows:
        metric = f"{r.get('metric', '')} {_num(r.get('value'))}".strip()
        body.append(
            [
                r["trial"],
                *[_value_text(r["point"].get(k)) for k in keys],
                r["seed"],
                r["status"],
                _num(bool(r.get("solved"))),
                metric,
                _num(r.get("steps")),
                _num(r.get("steps_to_criterion")),
                _duration(float(r.get("wall_s") or 0.0)),
                r.get("run_dir") or "",
                r.get("error") or "",
            ]
        )
    return markdown_table(header, body)


def summary_markdown(keys: Sequence[str], summary: Sequence[dict[str, Any]]) -> str:
    """Per point: seeds, success rate, the summarised metric (mean ± std), steps to
    criterion (median and range over solved seeds), wall time per run (median), failures,
    best trial."""
    header = ["point", *keys, "solved", "metric (mean ± std)", "steps to criterion"]
    header += ["wall per run", "failed", "best trial"]
    body = []
    for s in summary:
        failed = []
        for name in ("error", "timeout", "diverged"):
            if s[f"n_{name}"]:
                failed.append(f"{s[f'n_{name}']} {name}")
        body.append(
            [
                s["label"],
                *[_value_text(s["point"].get(k)) for k in keys],
                f"{s['solved']}/{s['n']}",
                f"{s['metric']} {_pm(s['mean'], s['std'])}",
                _steps_text(s),
                _duration(s["wall_median"]),
                ", ".join(failed) or "-",
                s["best"] or "-",
            ]
        )
    return markdown_table(header, body)


def _task_name(base: str) -> str:
    """A task id as it is; a TOML file (made absolute for the workers) relative to the current
    folder when it lies under it, as the user typed it."""
    path = Path(base)
    if path.is_absolute():
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return base
    return base


def results_table(summary: Sequence[dict[str, Any]], criteria: dict[str, str]) -> str:
    """The results table of a study whose points are tasks (``reproduce --seeds``): per task
    its criterion (``criteria[label]``), success rate, steps to criterion (median and range
    over solved seeds), wall time (median per run and total) and the final metrics (mean ±
    std over seeds; counts ``n_*`` left out)."""
    header = ["task", "criterion", "solved", "steps to criterion", "wall per run", "wall total"]
    header.append("final metrics (mean ± std)")
    body = []
    for s in summary:
        metrics = ", ".join(
            f"{m} {_pm(*ms)}" for m, ms in s["metrics"].items() if not m.startswith("n_")
        )
        task = _task_name(s["point"].get("base", s["label"]))
        body.append(
            [
                task,
                criteria.get(s["label"], s["metric"]),
                f"{s['solved']}/{s['n']}",
                _steps_text(s),
                _duration(s["wall_median"]),
                _duration(s["wall_total"]),
                metrics,
            ]
        )
    return markdown_table(header, body)


# ----------------------------------------------------------------------------- plot
def plot_summary(path: Path, keys: Sequence[str], summary: Sequence[dict[str, Any]]) -> Path:
    """The summarised metric (mean ± std over seeds) against the swept parameter: a line with
    error bars when one numeric parameter is swept (log x when its values are positive and
    span 20x or more), else one bar per point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = summary[0]["metric"] if summary else ""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), constrained_layout=True)
    try:
        xs = [s["point"].get(keys[0]) for s in summary] if len(keys) == 1 else []
        numeric = bool(xs) and all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in xs
        )
        if numeric:
            order = sorted(range(len(summary)), key=lambda i: xs[i])
            x = [xs[i] for i in order]
            y = [summary[i]["mean"] for i in order]
            e = [summary[i]["std"] for i in order]
            ax.errorbar(x, y, yerr=e, marker="o", capsize=4)
            if min(x) > 0 and max(x) / min(x) >= 20:
                ax.set_xscale("log")
            ax.set_xlabel(keys[0])
        else:
            labels = [
                ", ".join(f"{k.split('.')[-1]}={_value_text(s['point'].get(k))}" for k in keys)
                or s["label"]
                for s in summary
            ]
            pos = list(range(len(summary)))
            ax.bar(pos, [s["mean"] for s in summary], yerr=[s["std"] for s in summary], capsize=4)
            ax.set_xticks(pos, labels, rotation=30 if len(summary) > 3 else 0, ha="right")
        n = max((s["n"] for s in summary), default=0)
        ax.set_ylabel(f"{metric} (mean ± std over {n} seeds)")
        ax.grid(alpha=0.3)
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path


# ----------------------------------------------------------------------------- all outputs
def write_outputs(
    out: Path,
    keys: Sequence[str],
    rows: Sequence[dict[str, Any]],
    order: Sequence[str] = (),
) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """Write ``trials.csv``, ``trials.md``, ``summary.csv``, ``summary.md`` and
    ``summary.png`` into ``out`` (each replaced atomically); returns the summary and the
    paths. Rows are sorted by point (``order``: point keys; other points after them, in the
    order they finished) and seed."""
    out = Path(out)
    rank = {key: i for i, key in enumerate(order)}
    for r in rows:
        rank.setdefault(r["point_key"], len(rank))
    rows = sorted(rows, key=lambda r: (rank[r["point_key"]], int(r["seed"])))
    summary = summarize(rows)
    paths = {name: out / name for name in ("trials.csv", "trials.md", "summary.csv")}
    paths["summary.md"] = out / "summary.md"
    columns = _trial_columns(keys, rows)
    _write_csv(paths["trials.csv"], columns, (_trial_record(r, columns) for r in rows))
    _write_text(paths["trials.md"], trials_markdown(keys, rows))
    scol = _summary_columns(keys, summary)
    _write_csv(paths["summary.csv"], scol, (_summary_record(s, scol, keys) for s in summary))
    _write_text(paths["summary.md"], summary_markdown(keys, summary))
    if summary:
        paths["summary.png"] = plot_summary(out / "summary.png", keys, summary)
    return summary, paths


def log_summary_to_wandb(
    out: Path,
    name: str,
    keys: Sequence[str],
    summary: Sequence[dict[str, Any]],
    *,
    project: str,
    mode: str,
    tags: Sequence[str] = (),
    notes: str = "",
    plot: Path | None = None,
    warn: Callable[[str], None] | None = None,
) -> Path | None:
    """Log the summary as a ``wandb.Table`` (and the plot) in one W&B run named
    ``<name>-summary`` in group ``name`` (job type ``sweep-summary``), under ``out/wandb``.
    Offline unless ``mode`` (or ``WANDB_MODE``) says otherwise; an online run that cannot
    start is logged offline. Never raises: a failure is one warning on stderr. Returns the
    local run folder (``offline-run-*``), or None when nothing was logged."""
    from trainers.wandb_logger import _first_line, _warn, resolve_mode

    mode, problem = resolve_mode(mode)
    if problem:
        _warn(problem, f"the summary is logged in mode {mode!r}", "unset WANDB_MODE")
    if mode == "disabled":
        return None
    try:
        import wandb
    except Exception as err:
        _warn(
            f"the wandb package cannot be imported ({_first_line(err)})",
            "the sweep's summary is not logged to W&B; it is in summary.csv and summary.md",
            "pip install wandb",
        )
        return None
    scol = _summary_columns(keys, summary)
    records = [_summary_record(s, scol, keys) for s in summary]

    def plainv(v: Any) -> Any:
        if isinstance(v, list | dict):
            return json.dumps(v)
        return v

    folder = out / "wandb"
    folder.mkdir(parents=True, exist_ok=True)
    settings = dict(x_disable_stats=True, console="off", silent=True, disable_git=True)
    known = getattr(wandb.Settings, "model_fields", None)
    if known is not None:
        settings = {k: v for k, v in settings.items() if k in known}

    def start(run_mode: str):
        return wandb.init(
            project=project,
            group=name,
            job_type="sweep-summary",
            name=f"{name}-summary",
            tags=list(tags) or None,
            notes=notes or None,
            mode=run_mode,
            dir=str(out),
            settings=wandb.Settings(init_timeout=10.0, **settings),
            reinit="create_new",
        )

    try:
        try:
            run = start(mode)
        except Exception:
            if mode == "offline":
                raise
            run = start("offline")
        table = wandb.Table(
            columns=list(scol), data=[[plainv(r[c]) for c in scol] for r in records]
        )
        logged: dict[str, Any] = {"sweep/summary": table}
        if plot is not None and plot.is_file():
            logged["sweep/plot"] = wandb.Image(str(plot))
        run.log(logged)
        for s in summary:
            run.summary[f"success_rate/{s['label']}"] = s["success_rate"]
        local = Path(run.dir).parent
        run.finish()
        return local
    except Exception as err:
        _warn(
            f"the summary run could not be logged ({_first_line(err)})",
            "the sweep's summary is in summary.csv and summary.md",
            "check the WANDB_* environment variables and that the output folder is writable",
        )
        return None
