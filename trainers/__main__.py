"""Command line: ``python -m trainers`` (or ``colenv-train``).

    python -m trainers train colenv/Parity-v0 [key=value ...]     train (resume=<run or .pt>)
    python -m trainers train config/tasks/xor_ctrnn.toml          any TOML file
    python -m trainers resume runs/<run> [key=value ...]          continue a run exactly
    python -m trainers evaluate runs/<run> [key=value ...]        metrics on the evaluation grid
    python -m trainers config colenv/XOR-v0 [key=value ...]       every key: value, type, help
    python -m trainers list                                       tasks, trainers, models, solvers
    python -m trainers reproduce [--tasks ...] [--out docs/results.md] [key=value ...]
    python -m trainers reproduce --seeds 10 [--concurrency 2] [--out docs/results.md]
    python -m trainers sweep config/sweeps/xor_lr.toml [--address HOST:6379] [--out DIR] [--resume]
    python -m trainers bench <task|toml> [...]                    solver / kernel timings

``key=value`` overrides use the dotted keys of the config (``train.lr=0.01``,
``solver.method=rk4``, ``task_kwargs.n_bits=3``); ``python -m trainers config <task>`` lists
them. ``--import my_pkg.train`` imports a module first (where your own trainer, model or task
registers itself); the config key ``imports = [...]`` does the same and is saved with the run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}
"""Exit status of a training stopped by a signal (128 + the signal's number)."""

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


def _load(args):
    """The config of ``args.task`` with ``args.overrides``, after ``--import`` modules."""
    from trainers.config import load_config
    from trainers.registry import import_modules

    import_modules(args.imports)
    config = load_config(args.task, args.overrides)
    return _with_imports(config, args.imports)


def _with_imports(config, imports: list[str]):
    extra = [m for m in imports if m not in config.imports]
    if not extra:
        return config
    return config.model_copy(update={"imports": [*config.imports, *extra]})


def _report(config, result) -> int:
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
    if result.interrupted:
        print(result.message, file=sys.stderr)
        return EXIT_CODES.get(result.interrupted, 1)
    return 0


def cmd_train(args) -> int:
    from trainers.registry import import_modules
    from trainers.run import resume_config, train

    resume, args.overrides = _split_overrides(args.overrides)
    if resume:
        import_modules(args.imports)
        config = resume_config(resume, args.overrides, task=args.task, imports=args.imports)
        config = _with_imports(config, args.imports)
    else:
        config = _load(args)
    return _report(config, train(config))


def cmd_resume(args) -> int:
    from trainers.registry import import_modules
    from trainers.run import resume_config, train

    import_modules(args.imports)
    config = _with_imports(
        resume_config(args.run, args.overrides, imports=args.imports), args.imports
    )
    return _report(config, train(config))


def cmd_evaluate(args) -> int:
    from trainers.checkpoint import resolve_checkpoint
    from trainers.registry import import_modules
    from trainers.run import evaluate_checkpoint

    import_modules(args.imports)
    path = resolve_checkpoint(args.checkpoint)
    if Path(args.checkpoint).is_dir():
        note = (
            "" if path.name == "last.pt" else f" (no checkpoints/last.pt there; using {path.name})"
        )
        print(f"checkpoint {path}{note}")
    metrics = evaluate_checkpoint(path, args.overrides, imports=args.imports)
    width = max(len(k) for k in metrics)
    print(f"{'metric':<{width}}  value")
    print(f"{'-' * width}  -----")
    for key, value in metrics.items():
        print(f"{key:<{width}}  {_fmt(value)}")
    return 0


def cmd_config(args) -> int:
    from trainers.config import format_config

    print(format_config(_load(args)))
    return 0


def cmd_list(args) -> int:
    import colenv
    from colenv.models import list_models
    from colenv.solve import SOLVERS
    from trainers.registry import import_modules, list_trainers

    import_modules(args.imports)
    print("tasks:")
    for task in colenv.list_tasks():
        print(f"  {task['id']:<24} {', '.join(task['tags'])}")
        print(f"  {'':<24} {task['paper']}")
    print("trainers:")
    for name in list_trainers():
        print(f"  {name}")
    print("models:")
    for kind in list_models():
        print(f"  {kind}")
    print("solvers:")
    for family, methods in SOLVERS.items():
        print(f"  {family:<13} {', '.join(methods)}")
    return 0


def cmd_bench(argv: list[str]) -> int:
    """``python -m trainers bench ...`` is ``python -m trainers.bench ...``."""
    try:
        from trainers.bench import main as bench_main
    except ImportError as err:
        print(f"error: the bench command is not available here ({err})", file=sys.stderr)
        return 2
    return bench_main(argv)


def reproduce(tasks: list[str], overrides: list[str]) -> tuple[str, list]:
    """Train each task with its default config (plus overrides); the results table (markdown)."""
    from trainers.config import load_config
    from trainers.run import train
    from trainers.types import higher_is_better

    rows = []
    for task in tasks:
        config = load_config(task, overrides)
        result = train(config)
        threshold = (
            config.success.threshold
            if config.success.threshold is not None
            else _task_threshold(config)
        )
        op = ">=" if higher_is_better(config.success.metric) else "<="
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
    from trainers.build import build_task

    return float(build_task(config).success_threshold)


def cmd_reproduce(args) -> int:
    import platform
    import time

    import torch

    if args.seeds is not None:
        return reproduce_seeds(args)
    if args.resume or args.sweep_dir or args.concurrency != 1:
        from colenv.errors import ConfigError

        raise ConfigError("--concurrency, --sweep-dir and --resume go with --seeds N")

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


def _ray_missing() -> str | None:
    from trainers.sweep import ray_missing_message

    return ray_missing_message()


def cmd_sweep(args) -> int:
    from trainers.sweep import load_sweep, make_plan, run_sweep

    if message := _ray_missing():
        print(f"error: {message}", file=sys.stderr)
        return 2
    spec = load_sweep(args.file)
    plan = make_plan(spec)
    points = f"{len(plan.points)} points" if plan.points else f"{spec.samples} optuna points"
    print(
        f"sweep {spec.name}: {points} x {len(plan.seeds)} seeds, {spec.algorithm}, "
        f"concurrency {spec.concurrency}; every point checked",
        flush=True,
    )
    outcome = run_sweep(plan, args.out, address=args.address, resume=args.resume)
    return _sweep_report(
        outcome, f"python -m trainers sweep {args.file} --out {outcome.out} --resume"
    )


def _sweep_report(outcome, resume_cmd: str) -> int:
    from trainers.study import summary_markdown

    print()
    print(summary_markdown(outcome.keys, outcome.summary))
    print(f"output      {outcome.out}")
    for name in ("trials.md", "summary.md", "summary.png"):
        if name in outcome.files:
            print(f"  {name:<12}{outcome.files[name]}")
    if outcome.wandb_run is not None:
        print(f"  W&B       {outcome.wandb_run}  (upload: wandb sync {outcome.wandb_run})")
    print(
        f"trials      {outcome.ran} run now, {len(outcome.rows)} recorded, "
        f"{outcome.missing} missing; wall {_duration(outcome.wall_s)} "
        f"(Ray start {outcome.ray_start_s:.1f} s)"
    )
    if outcome.missing:
        print(
            f"{outcome.missing} trial(s) did not finish; continue with: {resume_cmd}",
            file=sys.stderr,
        )
        return 1
    return 0


def reproduce_seeds(args) -> int:
    """``reproduce --seeds N``: every task over seeds 0..N-1 as one sweep whose points are the
    tasks; the results table per task."""
    import platform

    import torch

    from trainers.study import results_table
    from trainers.sweep import SweepSpec, make_plan, resolve_base, run_sweep
    from trainers.types import higher_is_better

    if message := _ray_missing():
        print(f"error: {message}", file=sys.stderr)
        return 2
    # a TOML path becomes absolute: the trials run in Ray's workers, in other folders
    tasks = [resolve_base(t, Path.cwd()) for t in args.tasks]
    spec = SweepSpec(
        name="reproduce",
        base=tasks[0],
        overrides=list(args.overrides),
        space={"base": tasks},
        seeds=args.seeds,
        concurrency=args.concurrency,
        tags=["reproduce"],
    )
    plan = make_plan(spec)
    criteria = {}
    for point in plan.points:
        config = plan.config(point, plan.seeds[0])
        threshold = config.success.threshold
        if threshold is None:
            threshold = _task_threshold(config)
        op = ">=" if higher_is_better(config.success.metric) else "<="
        criteria[plan.label(point)] = f"{config.success.metric} {op} {threshold:g}"
    out = args.sweep_dir or str(Path("runs") / f"reproduce-{time_stamp()}")
    print(
        f"reproduce: {len(plan.points)} tasks x {args.seeds} seeds, concurrency "
        f"{args.concurrency}; runs in {out}",
        flush=True,
    )
    outcome = run_sweep(plan, out, resume=args.resume)
    table = results_table(outcome.summary, criteria)
    device = "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    command = "python -m trainers reproduce --seeds " + str(args.seeds)
    if list(args.tasks) != list(DEFAULT_TASKS):
        command += " --tasks " + " ".join(args.tasks)
    if args.concurrency != 1:
        command += f" --concurrency {args.concurrency}"
    if args.overrides:
        command += " " + " ".join(args.overrides)
    import time

    text = (
        "# Results\n\n"
        f"Produced by `{command}` on {time.strftime('%Y-%m-%d')} ({device}, "
        f"{platform.machine()}, torch {torch.__version__}); each task trains with its "
        f"config/tasks/*.toml over train.seed = 0..{args.seeds - 1}, "
        f"{args.concurrency} run(s) at a time, one thread each; "
        + (
            f"the whole table took {_duration(outcome.wall_s)}"
            if outcome.ran == len(outcome.rows)
            else f"{outcome.ran} of its runs took {_duration(outcome.wall_s)} (the others "
            "ran before an interruption)"
        )
        + ". Steps to criterion: median (range) over the solved "
        "seeds; final metrics: mean ± std over seeds.\n\n" + table
    )
    print()
    print(table)
    print(f"total wall {_duration(outcome.wall_s)}; trials in {outcome.out}")
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    if outcome.missing:
        print(
            f"{outcome.missing} run(s) did not finish; continue with: python -m trainers "
            f"reproduce --seeds {args.seeds} --sweep-dir {outcome.out} --resume ...",
            file=sys.stderr,
        )
        return 1
    return 0


def time_stamp() -> str:
    import time

    return time.strftime("%Y%m%d-%H%M%S")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainers", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def imports(p):
        p.add_argument(
            "--import",
            dest="imports",
            action="append",
            default=[],
            metavar="MODULE",
            help="import MODULE first (it may register a trainer, model or task); repeatable",
        )

    keys = "every key with its value, type and description: python -m trainers config <task>"
    p = sub.add_parser(
        "train",
        help="train a task (resume=<run dir or .pt> to continue)",
        epilog=f"Overrides are key=value; {keys}",
    )
    p.add_argument("task", help="gym id (colenv/Parity-v0) or a TOML path")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. train.lr=0.01")
    imports(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("resume", help="continue a run from its last checkpoint", epilog=keys)
    p.add_argument("run", help="a run dir or a .pt file")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. train.steps=600")
    imports(p)
    p.set_defaults(func=cmd_resume)
    p = sub.add_parser("evaluate", help="metrics of a checkpoint on the evaluation grid")
    p.add_argument("checkpoint", help="a .pt file, or a run dir (its last.pt, else best.pt)")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. train.device=cpu")
    imports(p)
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("config", help="print every config key: value, type, description")
    p.add_argument("task", help="gym id (colenv/Parity-v0) or a TOML path")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. train.lr=0.01")
    imports(p)
    p.set_defaults(func=cmd_config)
    p = sub.add_parser("list", help="tasks, trainers, models and solvers")
    imports(p)
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("reproduce", help="train every task with its default config; results table")
    p.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS))
    p.add_argument("--out", default=None, help="write the table here (e.g. docs/results.md)")
    p.add_argument(
        "--seeds",
        type=_positive,
        default=None,
        metavar="N",
        help="train each task over train.seed = 0..N-1 on Ray Tune (a sweep whose points are "
        "the tasks); without it: one run per task, in this process",
    )
    p.add_argument("--concurrency", type=_positive, default=1, help="with --seeds: runs at once")
    p.add_argument(
        "--sweep-dir",
        default=None,
        help="with --seeds: the runs' folder (default runs/reproduce-<timestamp>)",
    )
    p.add_argument("--resume", action="store_true", help="with --seeds: continue --sweep-dir")
    p.add_argument("overrides", nargs="*", help="key=value applied to every task")
    p.set_defaults(func=cmd_reproduce)
    p = sub.add_parser(
        "sweep",
        help="a sweep or study over seeds on Ray Tune (docs/studies.md)",
        epilog='needs Ray Tune and Optuna: pip install "colenv[sweep]"',
    )
    p.add_argument("file", help="a sweep file (config/sweeps/*.toml)")
    p.add_argument(
        "--address", default=None, help="a Ray cluster, HOST:PORT (default RAY_ADDRESS, else local)"
    )
    p.add_argument("--out", default=None, help="output folder (default runs/<sweep name>)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the sweep in --out (an existing folder of the same sweep continues anyway)",
    )
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser(
        "bench", help="solver timings and accuracy (python -m trainers bench -h)", add_help=False
    )
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments of trainers.bench")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m trainers`` and ``colenv-train``; returns the exit status."""
    from colenv.errors import ConfigError
    from trainers.checkpoint import CheckpointError

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # every argument, --help included, is trainers.bench's
        return cmd_bench(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, CheckpointError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a disk that fills up, a file that cannot be written
        print(f"error: {err}; checkpoints already written are intact", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # outside training (or a second Ctrl-C): nothing half-written
        print("\ninterrupted; checkpoints already written are intact", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
