"""``python -m trainers.bench``: variants, error measure, table and one real run on XOR."""

from __future__ import annotations

import math

import pytest
import torch

from colenv import SolverConfig
from colenv.errors import ConfigError
from trainers import bench


def test_variants_cover_every_step_and_reject_unknown_names():
    config = SolverConfig("rk4exp", step_ms=0.5)
    labels = [label for label, _ in bench.solver_variants(config, ["rk4", "config"], [0.25, 0.5])]
    assert labels == ["rk4 0.25 ms", "rk4 0.5 ms", "config (rk4exp 0.5 ms)"]
    with pytest.raises(ConfigError, match="allowed: dopri5"):
        bench.solver_variants(config, ["rk5"], [0.5])


def test_readout_error_is_the_largest_over_kept_trials():
    ref = torch.zeros(5, 3, 2)
    out = ref.clone()
    out[2, 0, 1] = 4.0  # trial 0
    out[4, 2, 0] = -1.5  # trial 2
    assert bench.readout_error_hz(out, ref) == (4.0, 0)
    keep = torch.tensor([False, True, True])
    assert bench.readout_error_hz(out, ref, keep) == (1.5, 2)


def test_table_flags_errors_above_the_bound_and_gives_ratios():
    rows = [
        bench.BenchRow("slow", train_s=2.0, forward_s=1.0, nfe=10, error_hz=0.01),
        bench.BenchRow("fast", train_s=0.5, forward_s=0.25, nfe=10, error_hz=0.7),
        bench.BenchRow("missing", note="ConfigError: no fast scheme"),
    ]
    table = bench.format_table(rows)
    slow, fast, missing = table.splitlines()[2:]
    assert "| 4x |" in fast and fast.rstrip().endswith("!! |") and not slow.endswith("!! |")
    assert "n/a: ConfigError" in missing
    assert rows[1].flagged and not rows[0].flagged and not math.isfinite(rows[2].error_hz)


def test_bench_runs_on_xor(capsys):
    status = bench.main(["colenv/XOR-v0", "--solvers", "config", "--repeat", "1"])
    out = capsys.readouterr().out
    assert status == 0, out
    (row,) = [line for line in out.splitlines() if line.startswith("| config (rk4exp 0.5 ms) |")]
    assert not row.rstrip().endswith("!! |"), row
