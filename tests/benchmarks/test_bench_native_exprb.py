"""The native exprb2 kernel (colenv/models/column/native/exprb2.c) at 0.5 ms against the native
rk4exp kernel at 0.1 ms (the shipped step) on the Decision network.

Run: ``python -m pytest tests/benchmarks/test_bench_native_exprb.py --benchmark-enable``
(skipped in the unit run). One torch thread (conftest.py). Workload: the shipped Decision
network (colenv/Decision-v0's config, untrained) over its evaluation grid (11 trials, 1.5 s),
float32 on the CPU. exprb2 runs on :func:`colenv.models.column.native.exprb2_rollout` with the
default onset restart (16 x for 5 ms after every change of the drive); both through
:func:`colenv.rollout` (the native kernels, as training runs them). Forward: no gradient.
Forward+backward: the gradient of a readout loss for every trainable parameter. ``benchmark.extra_info`` holds the time ratio to rk4exp measured in the same run
(``time_vs_rk4exp_0_1ms``) and, for the forward, exprb2's readout error against the float64
dopri5 reference (rtol = atol = 1e-9), the Jacobian applications per step.
"""

from __future__ import annotations

import functools
import time

import pytest
import torch

from colenv import SolverConfig, rollout
from colenv.models.column import exprb, native
from trainers.bench import build_network, readout_error_hz, reference_readout

pytestmark = pytest.mark.skipif(not native.available(), reason="native kernel unavailable")

STEP_S = 0.5e-3  # exprb2's step; the grid is 1 ms, so two steps per interval
N_SUB = 2
RK4EXP = SolverConfig("rk4exp", step_ms=0.1)
EXPRB2 = SolverConfig("exprb2", step_ms=0.5, fast={"kernel": "native"})


@functools.lru_cache(maxsize=1)
def _decision():
    torch.manual_seed(0)
    bench_net = build_network("colenv/Decision-v0", device="cpu")
    grid = bench_net.trial(None, torch.float32)
    return bench_net, grid


def _solve(net, grid, grad: bool, solver: SolverConfig):
    if not grad:
        with torch.no_grad():
            return rollout(net, grid.stimulus, grid.t_ms, solver).states
    return rollout(net, grid.stimulus, grid.t_ms, solver).states


def _run(case: str, grad: bool):
    bench_net, grid = _decision()
    net = bench_net.model
    net.zero_grad()
    states = _solve(net, grid, grad, EXPRB2 if case == "exprb2" else RK4EXP)
    if grad:
        net.readout(states).square().mean().backward()
    return states


@functools.lru_cache(maxsize=2)
def _baseline_s(grad: bool) -> float:
    _run("rk4exp", grad)  # warm-up (kernel build)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        _run("rk4exp", grad)
        best = min(best, time.perf_counter() - t0)
    return best


@pytest.mark.benchmark(group="native exprb2 vs rk4exp, Decision")
@pytest.mark.parametrize("grad", [False, True], ids=["forward", "forward+backward"])
@pytest.mark.parametrize("case", ["exprb2", "rk4exp"], ids=["exprb2 0.5ms", "rk4exp 0.1ms"])
def test_native_exprb2_vs_rk4exp_decision(benchmark, case, grad):
    base = _baseline_s(grad)
    states = benchmark.pedantic(lambda: _run(case, grad), rounds=3, warmup_rounds=1)
    benchmark.extra_info["time_vs_rk4exp_0_1ms"] = benchmark.stats.stats.min / base
    assert torch.isfinite(states).all()
    if case == "exprb2" and not grad:
        bench_net, grid = _decision()
        with torch.no_grad():
            terms = bench_net.model.prepare(grid.stimulus).terms
            y0 = bench_net.model.initial_state(grid.stimulus.shape[1])
        steps, products = exprb.jacobian_products(terms, y0, grid.stimulus.shape[0], N_SUB, STEP_S)
        err, _ = readout_error_hz(
            bench_net.model.readout(states), reference_readout(bench_net, grid)
        )
        benchmark.extra_info.update(readout_err_hz=err, jacobian_products_per_step=products / steps)
        assert err < 0.5  # the reason for exprb2 at 0.5 ms (rk4exp runs away there)
