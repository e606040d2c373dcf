"""Command line: ``python -m trainers`` (or ``colenv-train``).

    python -m trainers train colenv/Parity-v0 [key=value ...]     train (resume=<run or .pt>)
    python -m trainers evaluate <checkpoint or run dir>           metrics on the evaluation grid
    python -m trainers list                                       tasks, trainers, solvers
    python -m trainers reproduce [--tasks ...] [--out docs/results.md] [key=value ...]

``key=value`` overrides use the dotted keys of the config (``train.lr=0.01``,
``solver.method=rk4``, ``task_kwargs.n_bits=3``); see ``trainers/config.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]

DEFAULT_TASKS = ("colenv/XOR-v0", "colenv/Parity-v0", "colenv/Decision-v0", "colenv/Bifurcation-v0")


def _split_overrides(items: list[str]) -> tuple[str | None, list[str]]:
    resume = None
    rest = []
    for item in items:
        if item.startswith("resume="):
            resume = item.split("=", 1)[1]
        else:
            rest.append(item)
    return resume, rest


def cmd_train(args) -> int:
    from trainers.config import load_config
    from trainers.run import resume_config, train

    resume, overrides = _split_overrides(args.overrides)
    if resume:
        config = resume_config(resume, overrides)
    else:
        config = load_config(args.task, overrides)
    result = train(config)
    run_dir = Path(result.run_dir) if result.run_dir else None
    print(f"\n{config.task}: {result.message}")
    print(f"  steps       {result.steps}   wall {result.wall_s:.1f} s   solved {result.solved}")
    if result.metrics:
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in result.metrics.items())
        print(f"  metrics     {shown}")
    print(f"  run dir     {run_dir}")
    print(f"  checkpoint  {result.checkpoint}")
    if run_dir is not None and (run_dir / "plots").is_dir():
        print(f"  plots       {run_dir / 'plots'}")
    if run_dir is not None:
        wandb_runs = sorted((run_dir / "wandb").glob("offline-run-*"))
        if wandb_runs:
            print(f"  W&B         {wandb_runs[-1]}  (upload: wandb sync {wandb_runs[-1]})")
    if result.diverged:
        print(f"error: {result.message}", file=sys.stderr)
        return 1
    return 0


def evaluate_checkpoint(path: str, overrides: list[str] | None = None) -> dict[str, float]:
    """Load a checkpoint, rebuild its task and model, return the metrics on the grid."""
    import torch

    from trainers.callbacks import read_checkpoint
    from trainers.config import TrainConfig, apply_overrides
    from trainers.run import DTYPES
    from trainers.supervised import build_model, build_task, evaluate, resolve_device

    ckpt = read_checkpoint(path)
    config = TrainConfig.from_dict(
        apply_overrides(ckpt["config"], overrides or []), source=f"checkpoint {path}"
    )
    if config.train.threads:  # as train() does: the same thread count as the run
        torch.set_num_threads(config.train.threads)
    task = build_task(config)
    device = resolve_device(config.train.device)
    dtype = getattr(torch, DTYPES[config.train.dtype])
    model = build_model(config, task, device, dtype)
    model.load_state_dict(ckpt["model"])
    trial = task.sample_batch(conditions="all", seed=config.train.seed, device=device, dtype=dtype)
    metrics, _ = evaluate(model, task, config, trial, config.solver_config())
    return {"step": ckpt["step"], **metrics}


def cmd_evaluate(args) -> int:
    metrics = evaluate_checkpoint(args.checkpoint, args.overrides)
    width = max(len(k) for k in metrics)
    print(f"{'metric':<{width}}  value")
    print(f"{'-' * width}  -----")
    for key, value in metrics.items():
        print(f"{key:<{width}}  {_fmt(value)}")
    return 0


def cmd_list(args) -> int:
    import colenv
    from colenv.solve import SOLVERS
    from trainers.registry import list_trainers

    print("tasks:")
    for task in colenv.list_tasks():
        print(f"  {task['id']:<24} {', '.join(task['tags'])}")
        print(f"  {'':<24} {task['paper']}")
    print("trainers:")
    for name in list_trainers():
        print(f"  {name}")
    print("solvers:")
    for family, methods in SOLVERS.items():
        print(f"  {family:<13} {', '.join(methods)}")
    return 0


def reproduce(tasks: list[str], overrides: list[str]) -> tuple[str, list]:
    """Train each task with its default config (plus overrides); the results table (markdown)."""
    from trainers.config import load_config
    from trainers.run import train

    rows = []
    for task in tasks:
        config = load_config(task, overrides)
        result = train(config)
        threshold = (
            config.success.threshold
            if config.success.threshold is not None
            else _task_threshold(config)
        )
        op = ">=" if config.higher_is_better else "<="
        criterion = f"{config.success.metric} {op} {threshold:g}"
        shown = ", ".join(
            f"{k} {_fmt(v)}" for k, v in result.metrics.items() if not k.startswith("n_")
        )
        rows.append((task, criterion, result, shown))
    lines = [
        "| task | criterion | solved | steps | wall time | final metrics |",
        "|---|---|---|---|---|---|",
    ]
    for task, criterion, result, shown in rows:
        solved = "diverged" if result.diverged else ("yes" if result.solved else "no")
        lines.append(
            f"| {task} | {criterion} | {solved} | {result.steps} | "
            f"{_duration(result.wall_s)} | {shown} |"
        )
    return "\n".join(lines) + "\n", rows


def _task_threshold(config) -> float:
    from trainers.supervised import build_task

    return float(build_task(config).success_threshold)


def cmd_reproduce(args) -> int:
    import platform
    import time

    import torch

    table, rows = reproduce(args.tasks, args.overrides)
    device = "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    text = (
        "# Results\n\n"
        "Produced by `python -m trainers reproduce"
        + (f" --tasks {' '.join(args.tasks)}" if list(args.tasks) != list(DEFAULT_TASKS) else "")
        + (" " + " ".join(args.overrides) if args.overrides else "")
        + f"` on {time.strftime('%Y-%m-%d')} ({device}, {platform.machine()}, "
        f"torch {torch.__version__}); each task trains with its config/tasks/*.toml.\n\n" + table
    )
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")
    return 1 if any(r[2].diverged for r in rows) else 0


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainers", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a task (resume=<run dir or .pt> to continue)")
    p.add_argument("task", help="gym id (colenv/Parity-v0) or a TOML path")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. train.lr=0.01")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("evaluate", help="metrics of a checkpoint on the evaluation grid")
    p.add_argument("checkpoint", help="a .pt file or a run dir")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. train.device=cpu")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("list", help="tasks, trainers and solvers")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("reproduce", help="train every task with its default config; results table")
    p.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS))
    p.add_argument("--out", default=None, help="write the table here (e.g. docs/results.md)")
    p.add_argument("overrides", nargs="*", help="key=value applied to every task")
    p.set_defaults(func=cmd_reproduce)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m trainers`` and ``colenv-train``; returns the exit status."""
    from trainers.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
