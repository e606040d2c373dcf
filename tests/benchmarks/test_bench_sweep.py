"""Sweep throughput on Ray Tune: 40 short XOR trials at concurrency 2 on this machine.

    python -m pytest tests/benchmarks/test_bench_sweep.py --benchmark-enable -s

Figures (printed, and in the benchmark's extra_info):

- ``ray_start_s``: starting the local Ray (``ray.init``);
- ``ratio``: the sweep's wall time (Ray start included) over the ideal, the sum of the
  trials' own wall times / 2 (two trials at once on two CPUs); the goal is <= 1.25;
- ``ratio_after_start``: the same without the Ray start;
- ``overhead_per_trial_s``: (wall - Ray start - ideal) / (40 / 2), Tune's cost per trial slot.

A trial is a 100-step XOR run (the shipped trial lengths, early stopping off, no W&B or
plots), about 1-3 s of one core: long enough that the figures say what a sweep of real
runs costs over running them by hand.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("ray")

N_TRIALS = 40
CONCURRENCY = 2


def test_sweep_of_40_xor_trials_at_concurrency_2(benchmark, tmp_path, monkeypatch):
    from trainers.sweep import SweepSpec, make_plan, run_sweep

    ray_tmp = tempfile.mkdtemp(prefix="rb", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    spec = SweepSpec(
        name="bench",
        base="colenv/XOR-v0",
        overrides=[
            "train.steps=100",
            "train.device='cpu'",
            "success.stop_on_success=false",
            "logging.wandb=false",
            "logging.plots=false",
            "checkpoint.every=0",
        ],
        space={"train.lr": [0.02, 0.05, 0.1, 0.2]},
        seeds=N_TRIALS // 4,
        concurrency=CONCURRENCY,
        wandb=False,
    )
    plan = make_plan(spec)
    outcomes = []

    def run():
        out = tmp_path / f"out{len(outcomes)}"
        outcomes.append(run_sweep(plan, out, quiet=True))

    try:
        benchmark.pedantic(run, rounds=1, iterations=1)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    outcome = outcomes[-1]
    assert len(outcome.rows) == N_TRIALS and outcome.missing == 0
    assert all(r["status"] == "ok" for r in outcome.rows)
    busy = sum(r["wall_s"] for r in outcome.rows)
    ideal = busy / CONCURRENCY
    figures = {
        "trials": N_TRIALS,
        "concurrency": CONCURRENCY,
        "wall_s": round(outcome.wall_s, 1),
        "ray_start_s": round(outcome.ray_start_s, 1),
        "sum_trial_wall_s": round(busy, 1),
        "median_trial_s": round(sorted(r["wall_s"] for r in outcome.rows)[N_TRIALS // 2], 2),
        "ideal_s": round(ideal, 1),
        "ratio": round(outcome.wall_s / ideal, 2),
        "ratio_after_start": round((outcome.wall_s - outcome.ray_start_s) / ideal, 2),
        "overhead_per_trial_s": round(
            (outcome.wall_s - outcome.ray_start_s - ideal) / (N_TRIALS / CONCURRENCY), 2
        ),
    }
    benchmark.extra_info.update(figures)
    print("\nsweep benchmark:", json.dumps(figures))
    (Path(tempfile.gettempdir()) / "colenv_bench_sweep.json").write_text(json.dumps(figures))
