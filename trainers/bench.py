"""Time and check the solvers on a task's network: ``python -m trainers.bench``.

    python -m trainers.bench colenv/Parity-v0                      # the shipped config's network
    python -m trainers.bench my_task.toml model.network.lateral.enabled=false
    python -m trainers.bench colenv/Decision-v0 --solvers config rk4exp-native --batch 64
    python -m trainers.bench colenv/XOR-v0 --device cuda --repeat 10 --steps 0.25 1.0
    python -m trainers.bench runs/<run>/checkpoints/last.pt     # a trained network

The network is the one training would build (``trainers.load_config`` with the same
``key=value`` overrides, then ``trainers.build_task`` and ``trainers.build_model``), so a
researcher points this at their own config. For every solver variant (``--solvers``; default:
all that apply) it reports:

- forward + backward time of one rollout of a batch (``--batch`` trials sampled from the
  task; default: the task's evaluation grid) with a training-like loss (masked squared error
  of the readout against the target), and forward-only time (no gradient); the fastest of
  ``--repeat`` calls after one warm-up call, and the ratio against the first variant
  measured in the same run (the baseline); the warm-up call's time is listed as "first
  call" (it pays ``torch.compile`` and the native kernel's build when their caches are cold);
- function evaluations (nfe) of the forward;
- the readout error against a float64 dopri5 reference (rtol = atol = 1e-9) on the task's
  evaluation grid (``sample_batch(conditions="all")``), the largest over trials and time, Hz.
  Errors above 0.5 Hz (``--bound``) are flagged ``!!``: at that step the solver does not
  reproduce the network's dynamics.

Variants (``VARIANTS``, in this order by default; the first one measured is the baseline):
``dopri5`` (adaptive, torchdiffeq's default tolerances), ``dopri5-adjoint``, ``rk4``
(torchdiffeq fixed step), ``rk4exp-torch`` (colenv's fast exponential RK4, torch kernel,
eager), ``rk4exp-compiled`` (the same under ``torch.compile``), ``rk4exp-native`` (the native
C kernel; CPU, float32), ``ros2-torch`` (the linearly implicit Rosenbrock-W step,
:mod:`colenv.models.column.rosenbrock`, torch, gradient by autograd), ``ros2-native`` (kernel
"auto": its C forward on CPU in float32; the gradient of the fwd+bwd timing runs the torch path), ``exprb2-torch`` (exponential Rosenbrock-Euler with the onset restart,
:mod:`colenv.models.column.exprb`, torch, gradient by autograd), ``exprb2-native`` (the same
on its C kernel with its discrete adjoint; CPU, float32), ``config`` (the config's own ``[solver]``) and, on request, the SDE variants (timed, and
reported by their largest rate, since a noisy rollout has no deterministic reference):
``rk4exp-sde`` (rk4exp with the noise kick on v, default kernel: native on CPU),
``rk4exp-sde-torch`` (the same on the torch path), ``sde-euler`` and ``sde-srk`` (torchsde's
Euler-Maruyama and stochastic Runge-Kutta). The noisy rows run with the model's own
``noise_std`` (``model.network.noise_std=...`` to change it); a row whose rollout runs away
(torchsde's Euler-Maruyama at 0.5 ms on large networks) says so instead of numbers. Fixed-step variants run at the config's
``solver.step_ms`` and at each ``--steps`` value. A variant the model or machine does not
support (the fast schemes on a model without them, the native kernel on a GPU) is listed with
the reason instead of numbers.

Torch runs on ``--threads`` threads (default 1, so figures compare across machines) on
``--device`` (default: CUDA when present, else CPU).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from colenv import SolverConfig, Trial, rollout
from colenv.errors import ConfigError, DivergenceError
from trainers.build import build_model, build_task
from trainers.checkpoint import CheckpointError, read_checkpoint
from trainers.config import TrainConfig, apply_overrides, load_config

__all__ = [
    "BOUND_HZ",
    "VARIANTS",
    "SDE_VARIANTS",
    "BenchRow",
    "Network",
    "bench",
    "build_network",
    "build_parser",
    "format_table",
    "main",
    "readout_error_hz",
    "reference_readout",
    "solver_variants",
]

BOUND_HZ = 0.5
"""Largest readout error (Hz) against the float64 reference that counts as accurate."""

REFERENCE = {"adaptive": {"rtol": 1e-9, "atol": 1e-9}}
DOPRI5_DEFAULT = {"adaptive": {"rtol": 1e-7, "atol": 1e-9}}  # torchdiffeq's defaults

VARIANTS = (
    "dopri5",
    "dopri5-adjoint",
    "rk4",
    "rk4exp-torch",
    "rk4exp-compiled",
    "rk4exp-native",
    "ros2-torch",
    "ros2-native",
    "exprb2-torch",
    "exprb2-native",
    "config",
    "rk4exp-sde",
    "rk4exp-sde-torch",
    "sde-euler",
    "sde-srk",
)
SDE_VARIANTS = ("rk4exp-sde", "rk4exp-sde-torch", "sde-euler", "sde-srk")
FIXED_STEP = {
    "config",
    "rk4",
    "rk4exp-torch",
    "rk4exp-compiled",
    "rk4exp-native",
    "ros2-torch",
    "ros2-native",
    "exprb2-torch",
    "exprb2-native",
    *SDE_VARIANTS,
}


def solver_variants(
    config_solver: SolverConfig, names: Sequence[str], steps_ms: Sequence[float]
) -> list[tuple[str, SolverConfig]]:
    """(label, SolverConfig) for each variant name, fixed-step ones at each step (ms).

    ``config`` keeps the config's solver as it is (at its own step only). Unknown names are a
    ConfigError listing :data:`VARIANTS`.
    """
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown solver variant(s) {unknown}; allowed: {', '.join(VARIANTS)}")
    out: list[tuple[str, SolverConfig]] = []
    for name in names:
        if name == "config":
            out.append(
                (f"config ({config_solver.method} {config_solver.step_ms:g} ms)", config_solver)
            )
            continue
        if name == "dopri5":
            out.append(("dopri5", SolverConfig("dopri5", **DOPRI5_DEFAULT)))
            continue
        if name == "dopri5-adjoint":
            out.append(("dopri5 adjoint", SolverConfig("dopri5", adjoint=True, **DOPRI5_DEFAULT)))
            continue
        for step in steps_ms:
            at = f"{step:g} ms"
            if name == "rk4":
                out.append((f"rk4 {at}", SolverConfig("rk4", step_ms=step)))
            elif name == "rk4exp-torch":
                cfg = SolverConfig("rk4exp", step_ms=step, fast={"kernel": "torch"})
                out.append((f"rk4exp torch {at}", cfg))
            elif name == "rk4exp-compiled":
                cfg = SolverConfig(
                    "rk4exp", step_ms=step, fast={"kernel": "torch", "compile": True}
                )
                out.append((f"rk4exp compiled {at}", cfg))
            elif name == "rk4exp-native":
                cfg = SolverConfig("rk4exp", step_ms=step, fast={"kernel": "native"})
                out.append((f"rk4exp native {at}", cfg))
            elif name == "ros2-torch":
                cfg = SolverConfig("ros2", step_ms=step, fast={"kernel": "torch"})
                out.append((f"ros2 torch {at}", cfg))
            elif name == "ros2-native":  # native forward; a gradient runs the torch path
                cfg = SolverConfig("ros2", step_ms=step, fast={"kernel": "auto"})
                out.append((f"ros2 native {at}", cfg))
            elif name == "exprb2-torch":  # exponential Rosenbrock-Euler + onset restart
                cfg = SolverConfig("exprb2", step_ms=step, fast={"kernel": "torch"})
                out.append((f"exprb2 torch {at}", cfg))
            elif name == "exprb2-native":
                cfg = SolverConfig("exprb2", step_ms=step, fast={"kernel": "native"})
                out.append((f"exprb2 native {at}", cfg))
            elif name == "rk4exp-sde":
                out.append((f"rk4exp SDE {at}", SolverConfig("rk4exp", step_ms=step, sde=True)))
            elif name == "rk4exp-sde-torch":
                cfg = SolverConfig("rk4exp", step_ms=step, sde=True, fast={"kernel": "torch"})
                out.append((f"rk4exp SDE torch {at}", cfg))
            elif name in ("sde-euler", "sde-srk"):
                method = name.split("-")[1]
                out.append(
                    (f"torchsde {method} {at}", SolverConfig(method, step_ms=step, sde=True))
                )
    return out


@dataclass
class Network:
    """What :func:`build_network` returns: the task, the model as training builds it, and the
    config's initial-state rule."""

    config: object  # trainers.TrainConfig
    task: object  # colenv.TrialTask
    model: torch.nn.Module
    device: torch.device

    def initial_state(self, trial: Trial) -> torch.Tensor | None:
        """y0 for ``trial``: None (the model's rest state) or the trial condition the config
        names (``model.initial_state = "condition:<key>"``)."""
        rule = self.config.model.initial_state
        if rule == "rest":
            return None
        key = rule.split(":", 1)[1]
        return trial.conditions[key].to(dtype=trial.stimulus.dtype)

    def trial(self, batch: int | None, dtype: torch.dtype) -> Trial:
        """``batch`` trials from the task (seeded by ``train.seed``), or the evaluation grid
        (every condition) when ``batch`` is None, on the network's device."""
        seed = self.config.train.seed
        if batch is None:
            trial = self.task.sample_batch(conditions="all", seed=seed, dtype=dtype)
        else:
            trial = self.task.sample_batch(batch, seed=seed, dtype=dtype)
        return trial.to(self.device)

    def readout(
        self, trial: Trial, solver: SolverConfig, model: torch.nn.Module | None = None
    ) -> torch.Tensor:
        """Readout [T, B, O] of one forward rollout of ``trial`` (no gradient; noise seed 0)
        with ``model`` (default: the network's own)."""
        model = self.model if model is None else model
        with torch.no_grad():
            y0 = self.initial_state(trial)
            out = rollout(model, trial.stimulus, trial.t_ms, solver, y0=y0, seed=0)
            return model.readout(out.states)

    def with_dtype(self, dtype: torch.dtype) -> torch.nn.Module:
        """A copy of the model in ``dtype`` (same weights)."""
        return copy.deepcopy(self.model).to(dtype=dtype)


def build_network(
    target: str, overrides: Sequence[str] = (), device: str | torch.device | None = None
) -> Network:
    """The task and model (float32) that ``python -m trainers train`` would build from the
    same arguments, on ``device`` (default: CUDA when present, else CPU).

    ``target`` is a task id (its shipped config), a training config (.toml), or a checkpoint
    (a .pt file or a run folder): then the run's config (with ``overrides``) and its trained
    weights.
    """
    state = None
    if str(target).endswith(".pt") or Path(target).is_dir():
        ckpt = read_checkpoint(target)
        raw = apply_overrides(ckpt["config"], list(overrides))
        config = TrainConfig.from_dict(raw, source=f"checkpoint {target}")
        state = ckpt["state_dict"]
    else:
        config = load_config(target, list(overrides))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    task = build_task(config)
    model = build_model(config, task, device, torch.float32)
    if state is not None:
        model.load_state_dict(state)
    return Network(config=config, task=task, model=model, device=device)


def reference_readout(net: Network, trial: Trial) -> torch.Tensor:
    """Readout [T, B, O] of the float64 model on ``trial`` with dopri5 at rtol = atol = 1e-9."""
    reference = SolverConfig("dopri5", **REFERENCE)
    return net.readout(trial.to(dtype=torch.float64), reference, net.with_dtype(torch.float64))


def readout_error_hz(
    readout: torch.Tensor, reference: torch.Tensor, keep: torch.Tensor | None = None
) -> tuple[float, int]:
    """(largest |readout - reference| over time, trials and outputs, trial index where it is)
    over the trials ``keep`` (bool [B], default all)."""
    err = (readout.detach().double() - reference.double()).abs().amax(dim=(0, 2))
    if keep is not None:
        err = torch.where(keep.to(err.device), err, torch.zeros_like(err))
    b = int(err.argmax())
    return float(err[b]), b


@dataclass
class BenchRow:
    """One line of the table. Times in seconds (NaN when not measured; ``first_s`` is the
    warm-up call, compilation and kernel build included), error in Hz."""

    label: str
    first_s: float = math.nan
    train_s: float = math.nan
    forward_s: float = math.nan
    nfe: int = 0
    error_hz: float = math.nan
    worst_trial: str = ""
    max_rate_hz: float = math.nan
    note: str = ""
    bound_hz: float = BOUND_HZ

    @property
    def flagged(self) -> bool:
        """The error exceeds the bound."""
        return math.isfinite(self.error_hz) and self.error_hz > self.bound_hz


def _timed(
    call: Callable[[], object], repeat: int, device: torch.device
) -> tuple[float, object, float]:
    """(fastest of ``repeat`` calls, last result, time of the warm-up call), seconds."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    result = call()  # warm-up: compilation, kernel build, caches
    sync()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = call()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times), result, first


def _conditions_of(trial: Trial, b: int) -> str:
    """Trial ``b``'s conditions, e.g. ``coherence_pct=3.2`` or ``bits=[1, 0]`` (small ones)."""
    parts = []
    for key, value in trial.conditions.items():
        v = value[b].reshape(-1)
        if v.numel() == 1:
            parts.append(f"{key}={float(v):g}")
        elif v.numel() <= 8:
            parts.append(f"{key}=[{', '.join(f'{float(x):g}' for x in v)}]")
    return ", ".join(parts)


def bench(
    net: Network,
    solvers: Sequence[tuple[str, SolverConfig]],
    *,
    batch: int | None = None,
    repeat: int = 3,
    backward: bool = True,
    exclude: dict[str, float] | None = None,
    bound_hz: float = BOUND_HZ,
    log: Callable[[str], None] = lambda s: None,
) -> list[BenchRow]:
    """Time each solver on ``net`` and measure its readout error on the evaluation grid.

    ``exclude`` leaves out of the error the evaluation trials whose (scalar) conditions equal
    the given values (e.g. ``{"coherence_pct": 0.0}``: a symmetric Decision trial that
    rounding decides). Errors raised by a variant (a solver the model lacks) become the
    row's ``note``.
    """
    model = net.model
    timing = net.trial(batch, torch.float32)
    grid = net.trial(None, torch.float32)
    keep = torch.ones(grid.batch_size, dtype=torch.bool, device=grid.stimulus.device)
    for key, value in (exclude or {}).items():
        if key not in grid.conditions:
            raise ConfigError(
                f"exclude: no condition {key!r}; conditions: {', '.join(grid.conditions)}"
            )
        keep &= grid.conditions[key].reshape(grid.batch_size) != value
    t0 = time.perf_counter()
    reference = reference_readout(net, grid.to(dtype=torch.float64))
    log(f"float64 dopri5 reference: {time.perf_counter() - t0:.1f} s")
    y0_t = net.initial_state(timing)

    def forward(solver: SolverConfig):
        with torch.no_grad():
            return rollout(model, timing.stimulus, timing.t_ms, solver, y0=y0_t, seed=0)

    def train_step(solver: SolverConfig):
        model.zero_grad(set_to_none=True)
        out = rollout(model, timing.stimulus, timing.t_ms, solver, y0=y0_t, seed=0)
        loss = ((model.readout(out.states) - timing.target) ** 2)[timing.mask].mean()
        loss.backward()
        return out

    rows = []
    for label, solver in solvers:
        row = BenchRow(label, bound_hz=bound_hz)
        try:
            if backward:
                row.train_s, _, row.first_s = _timed(
                    lambda s=solver: train_step(s), repeat, net.device
                )
            row.forward_s, out, first = _timed(lambda s=solver: forward(s), repeat, net.device)
            row.first_s = first if not backward else row.first_s
            row.nfe = int(out.stats.nfe)
            readout = net.readout(grid, solver)
            row.max_rate_hz = float(readout.max())
            if not solver.sde:
                row.error_hz, b = readout_error_hz(readout, reference, keep)
                row.worst_trial = _conditions_of(grid, b)
        except DivergenceError as err:  # a runaway (a RuntimeError): cut to its first sentence
            row.note = f"DivergenceError: {str(err).split(' (', 1)[0].split('. ', 1)[0]}"
        except (ConfigError, RuntimeError, ValueError) as err:
            row.note = f"{type(err).__name__}: {err}".splitlines()[0]
        if row.note:
            log(f"{label}: {row.note}")
        else:
            error = "noise" if solver.sde else f"{row.error_hz:.3g} Hz"
            log(f"{label}: {row.train_s:.3g} s fwd+bwd, {row.forward_s:.3g} s forward, {error}")
        rows.append(row)
    return rows


def format_table(rows: Sequence[BenchRow]) -> str:
    """Markdown table; ratios against the first row with a measured time."""

    def fmt(x: float) -> str:
        return "" if not math.isfinite(x) else f"{x:.3g}"

    def ratio(base: float, x: float) -> str:
        return "" if not math.isfinite(base / x) else f"{base / x:.3g}x"

    base_train = next((r.train_s for r in rows if math.isfinite(r.train_s)), math.nan)
    base_fwd = next((r.forward_s for r in rows if math.isfinite(r.forward_s)), math.nan)
    lines = [
        "| solver | fwd+bwd (s) | vs baseline | forward (s) | vs baseline | nfe "
        "| readout error (Hz) | worst trial | first call (s) | |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in rows:
        if r.note:
            lines.append(f"| {r.label} | | | | | | | | | n/a: {r.note} |")
            continue
        err = (
            fmt(r.error_hz) if math.isfinite(r.error_hz) else f"(noise; max {r.max_rate_hz:.3g} Hz)"
        )
        lines.append(
            f"| {r.label} | {fmt(r.train_s)} | {ratio(base_train, r.train_s)} | "
            f"{fmt(r.forward_s)} | {ratio(base_fwd, r.forward_s)} | {r.nfe} | {err} | "
            f"{r.worst_trial} | {fmt(r.first_s)} | {'!!' if r.flagged else ''} |"
        )
    return "\n".join(lines)


def _parse_exclude(items: Sequence[str]) -> dict[str, float]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--exclude {item!r}: expected key=value, e.g. coherence_pct=0")
        out[key] = float(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m trainers.bench``."""
    ap = argparse.ArgumentParser(
        prog="python -m trainers.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "target", help="task id (colenv/Parity-v0), training config (.toml) or checkpoint"
    )
    ap.add_argument("overrides", nargs="*", help="key=value config overrides, as for train")
    ap.add_argument(
        "--solvers",
        nargs="+",
        default=[v for v in VARIANTS if v not in SDE_VARIANTS],
        help=f"variants, the first is the baseline (default: all but the SDE ones); "
        f"allowed: {', '.join(VARIANTS)}",
    )
    ap.add_argument(
        "--steps",
        nargs="*",
        type=float,
        default=[],
        help="fixed steps (ms) besides the config's solver.step_ms",
    )
    ap.add_argument(
        "--batch",
        type=int,
        default=None,
        help="trials per timed rollout (default: the evaluation grid)",
    )
    ap.add_argument("--repeat", type=int, default=3, help="timed calls per variant (fastest kept)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    ap.add_argument("--no-backward", action="store_true", help="time the forward only")
    ap.add_argument(
        "--exclude",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="leave evaluation trials with this condition out of the error",
    )
    ap.add_argument("--bound", type=float, default=BOUND_HZ, help="flag errors above (Hz)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; returns 1 when a variant's error exceeds the bound, 2 on a config error,
    else 0."""
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.repeat < 1 or (args.batch is not None and args.batch < 1) or args.threads < 1:
        ap.error("--repeat, --batch and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    try:
        net = build_network(args.target, args.overrides, args.device)
        step = net.config.solver.step_ms
        steps = sorted({step, *args.steps})
        solvers = solver_variants(net.config.solver, args.solvers, steps)
        rows = bench(
            net,
            solvers,
            batch=args.batch,
            repeat=args.repeat,
            backward=not args.no_backward,
            exclude=_parse_exclude(args.exclude),
            bound_hz=args.bound,
            log=lambda s: print(s, file=sys.stderr, flush=True),
        )
    except (ConfigError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    batch = "evaluation grid" if args.batch is None else f"batch {args.batch}"
    print(
        f"\n{net.config.task} on {net.device} ({args.threads} thread(s)), {batch}, "
        f"fastest of {args.repeat}; errors against float64 dopri5 (rtol = atol = 1e-9) on "
        f"the evaluation grid, !! above {args.bound:g} Hz\n"
    )
    print(format_table(rows))
    if any(r.flagged for r in rows):
        print(f"\n!! {sum(r.flagged for r in rows)} variant(s) above {args.bound:g} Hz")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
