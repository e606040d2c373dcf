"""Solver benchmarks: forward, forward+backward and SDE on three column networks.

Run: ``python -m pytest tests/benchmarks --benchmark-enable`` (skipped in the unit run; see
conftest.py). For one network of your own, ``python -m trainers.bench <task|config.toml>``
prints the same comparison as a table.

Workloads: a decision-like (2 MT columns), an XOR-like (3) and a parity-like network (the
8 -> 4 -> 1 chain of MT columns, 13 columns, 104 populations), batch 1, 16 and 256, 1 s trials
on a 1 ms grid with the stimulus (15 Hz bits) on in the second half, one torch thread. Every
deterministic case asserts that its readout stays within ``trainers.bench.BOUND_HZ`` (0.5 Hz)
of a float64 dopri5 reference at rtol = atol = 1e-9 and records in ``benchmark.extra_info``
the function evaluations and the readout and all-population rate errors (Hz).
"""

from __future__ import annotations

import functools

import pytest
import torch

from colenv import SolverConfig, rollout
from colenv.models import AreaSpec, ColumnNetwork, ConnectionSpec, NetworkSpec, load_params
from trainers.bench import BOUND_HZ

TRIAL_MS = 1000
NETWORKS = {
    "decision": lambda: NetworkSpec(
        areas=(AreaSpec("mt", 2),),
        n_inputs=2,
        input_mode="one_to_one",
        lateral=ConnectionSpec(enabled=True, trainable=True),
        input=ConnectionSpec(pairs=(("input", "L4e"), ("input", "L4i")), trainable=True),
    ),
    "xor": lambda: NetworkSpec(
        areas=(AreaSpec("ab", 2), AreaSpec("c", 1)),
        n_inputs=2,
        input_mode="one_to_one",
        feedforward=ConnectionSpec(trainable=True),
        input=ConnectionSpec(pairs=(("input", "L4e"), ("input", "L4i")), trainable=True),
    ),
    "parity": lambda: NetworkSpec(
        areas=(AreaSpec("a", 8), AreaSpec("b", 4), AreaSpec("c", 1)),
        n_inputs=4,
        lateral=ConnectionSpec(enabled=True, trainable=True),
        feedforward=ConnectionSpec(trainable=True),
    ),
}
DOPRI5_DEFAULT = {"adaptive": {"rtol": 1e-7, "atol": 1e-9}}  # torchdiffeq's defaults
REFERENCE = SolverConfig("dopri5", adaptive={"rtol": 1e-9, "atol": 1e-9})


def workload(name: str, batch: int, dtype=torch.float32):
    """(net, stimulus [T, B, I], t_ms [T], y0 [B, S]) with 15 Hz bits in the second half."""
    torch.manual_seed(0)
    net = ColumnNetwork(load_params(), NETWORKS[name](), dtype=dtype)
    T = TRIAL_MS + 1
    gen = torch.Generator().manual_seed(1)
    bits = torch.rand(batch, net.n_inputs, generator=gen) > 0.5
    stim = torch.zeros(T, batch, net.n_inputs, dtype=dtype)
    stim[T // 2 :] = bits.to(dtype) * 15.0
    t = torch.arange(T, dtype=dtype)
    with torch.no_grad():
        y0 = net.initial_state(batch)
    return net, stim, t, y0


@functools.cache
def reference_states(name: str, batch: int) -> torch.Tensor:
    """float64 dopri5, rtol = atol = 1e-9: the accuracy yardstick [T, B, S]."""
    net, stim, t, y0 = workload(name, batch, torch.float64)
    with torch.no_grad():
        return rollout(net, stim, t, REFERENCE, y0=y0).states


def errors_hz(net, states: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(largest readout error, largest error over every population's rate), Hz."""
    states = states.detach().double()
    readout = (net.readout(states) - net.readout(ref)).abs().max()
    every = (net.rates(states) - net.rates(ref)).abs().max()
    return float(readout), float(every)


def loss_of(net, states: torch.Tensor) -> torch.Tensor:
    """Training-like loss: readout rates over the last 100 ms."""
    return (net.readout(states[-100:]) ** 2).mean()


# ----------------------------------------------------------------------------- variants
def _solve(cfg: SolverConfig):
    def run(net, stim, t, y0):
        out = rollout(net, stim, t, cfg, y0=y0)
        return out.states, out.stats.nfe

    return run


def per_trial(cfg: SolverConfig):
    """One trial at a time (how the predecessor code integrated a batch)."""

    def run(net, stim, t, y0):
        states, nfe = [], 0
        for b in range(stim.shape[1]):
            out = rollout(net, stim[:, b : b + 1], t, cfg, y0=y0[b : b + 1])
            states.append(out.states)
            nfe += out.stats.nfe
        return torch.cat(states, dim=1), nfe

    return run


def _fast(step_ms: float, **fast) -> SolverConfig:
    return SolverConfig("rk4exp", step_ms=step_ms, fast=fast)


VARIANTS = {
    "dopri5 per-trial": per_trial(SolverConfig("dopri5", **DOPRI5_DEFAULT)),
    "dopri5 batched": _solve(SolverConfig("dopri5", **DOPRI5_DEFAULT)),
    "dopri5 adjoint": _solve(SolverConfig("dopri5", adjoint=True, **DOPRI5_DEFAULT)),
    "rk4 torchdiffeq 0.5ms": _solve(SolverConfig("rk4", step_ms=0.5)),
    "rk4exp torch 0.5ms": _solve(_fast(0.5, kernel="torch")),
    "rk4exp torch compiled 0.5ms": _solve(_fast(0.5, kernel="torch", compile=True)),
    "rk4exp torch compiled autograd 0.5ms": _solve(
        _fast(0.5, kernel="torch", compile=True, backward="autograd")
    ),
    "rk4exp torch compiled 1ms": _solve(_fast(1.0, kernel="torch", compile=True)),
    # what the task configs run: on CPU in float32 the native kernel, elsewhere compiled torch
    "rk4exp default 0.5ms": _solve(_fast(0.5, compile=True)),
}
COMPILED = {v for v in VARIANTS if "compiled" in v or "default" in v}


def measure(variant: str, name: str, batch: int, grad: bool):
    """(net, a zero-argument callable doing one rollout (and backward) -> (states, nfe))."""
    net, stim, t, y0 = workload(name, batch)
    run = VARIANTS[variant]

    def call():
        net.zero_grad(set_to_none=True)
        if grad:
            states, nfe = run(net, stim, t, y0)
            loss_of(net, states).backward()
        else:
            with torch.no_grad():
                states, nfe = run(net, stim, t, y0)
        return states, nfe

    return net, call


def _bench(benchmark, variant, name, batch, grad):
    net, call = measure(variant, name, batch, grad)
    states, nfe = benchmark.pedantic(
        call, rounds=3 if variant in COMPILED else 1, warmup_rounds=int(variant in COMPILED)
    )
    readout, every = errors_hz(net, states, reference_states(name, batch))
    benchmark.extra_info.update(nfe=nfe, readout_err_hz=readout, all_pop_err_hz=every)
    assert readout <= BOUND_HZ, f"{variant} on {name} x{batch}: readout error {readout:.3g} Hz"


def _cases(batches):
    # the per-trial loop at batch 256 would take hours: it is the batch-16 case x 16
    return [
        (v, n, b)
        for v in VARIANTS
        for n in NETWORKS
        for b in batches
        if not (v == "dopri5 per-trial" and b > 16)
    ]


@pytest.mark.benchmark(group="forward")
@pytest.mark.parametrize(("variant", "name", "batch"), _cases([1, 16, 256]))
def test_forward(benchmark, variant, name, batch):
    _bench(benchmark, variant, name, batch, grad=False)


@pytest.mark.benchmark(group="forward+backward")
@pytest.mark.parametrize(("variant", "name", "batch"), _cases([1, 16]))
def test_forward_backward(benchmark, variant, name, batch):
    _bench(benchmark, variant, name, batch, grad=True)


SDE_VARIANTS = {
    "rk4exp SDE 0.5ms": SolverConfig("rk4exp", sde=True, step_ms=0.5),
    "torchsde srk 0.5ms": SolverConfig("srk", sde=True, step_ms=0.5),
    # its artefacts exceed solver.max_rate_hz: recorded raw, without the divergence check
    "torchsde euler 0.5ms": SolverConfig("euler", sde=True, step_ms=0.5, check_finite=False),
}


@pytest.mark.benchmark(group="SDE")
@pytest.mark.parametrize("variant", list(SDE_VARIANTS))
def test_sde_parity(benchmark, variant):
    """Noisy rollouts have no deterministic reference: the record is the rate range. The
    exponential scheme and srk stay in a physiological range; torchsde's Euler-Maruyama at
    0.5 ms is recorded for its artefacts (its filtered rate swings far outside it)."""
    net, stim, t, y0 = workload("parity", 16)
    cfg = SDE_VARIANTS[variant]

    def call():
        with torch.no_grad():
            return rollout(net, stim, t, cfg, y0=y0, seed=0)

    out = benchmark.pedantic(call, rounds=1)
    rates = net.rates(out.states)
    lo, hi = float(rates.min()), float(rates.max())
    benchmark.extra_info.update(nfe=out.stats.nfe, max_rate_hz=hi, min_rate_hz=lo)
    if "euler" not in variant:
        assert -1e-3 <= lo and hi < 1000.0, f"{variant}: rates in [{lo:.3g}, {hi:.3g}] Hz"


SDE_TRAIN_VARIANTS = {
    "rk4exp native ODE 0.5ms": SolverConfig("rk4exp", step_ms=0.5, fast={"kernel": "native"}),
    "rk4exp native SDE 0.5ms": SolverConfig(
        "rk4exp", sde=True, step_ms=0.5, fast={"kernel": "native"}
    ),
    "rk4exp torch SDE 0.5ms": SolverConfig(
        "rk4exp", sde=True, step_ms=0.5, fast={"kernel": "torch"}
    ),
    "torchsde srk 0.5ms": SolverConfig("srk", sde=True, step_ms=0.5),
    "torchsde euler 0.5ms": SolverConfig("euler", sde=True, step_ms=0.5, check_finite=False),
}


def _sde_train_call(net, stim, t, y0, cfg):
    def call():
        net.zero_grad(set_to_none=True)
        out = rollout(net, stim, t, cfg, y0=y0, seed=0)
        loss_of(net, out.states).backward()
        return out

    return call


@pytest.mark.benchmark(group="SDE forward+backward")
@pytest.mark.parametrize("variant", list(SDE_TRAIN_VARIANTS))
def test_sde_forward_backward_parity(benchmark, variant):
    """Training-like noisy rollouts of the parity network (batch 16, 1 s, noise_std 1): the
    native kernel with noise beside the same kernel without, the torch path and torchsde.
    torchsde's Euler-Maruyama runs away here (recorded without the check)."""
    net, stim, t, y0 = workload("parity", 16)
    call = _sde_train_call(net, stim, t, y0, SDE_TRAIN_VARIANTS[variant])
    out = benchmark.pedantic(call, rounds=1 if "torchsde" in variant else 3, warmup_rounds=1)
    benchmark.extra_info.update(
        nfe=out.stats.nfe, max_rate_hz=float(net.rates(out.states.detach()).max())
    )


def test_native_sde_overhead_parity(benchmark):
    """The native kernel's noisy rollout costs at most 1.5x its noise-free rollout (forward +
    backward, parity network, batch 16, 1 s): both timed in this run, interleaved, fastest of
    7 each; the ratio is in extra_info."""
    import time

    net, stim, t, y0 = workload("parity", 16)
    calls = {
        "ode": _sde_train_call(net, stim, t, y0, SDE_TRAIN_VARIANTS["rk4exp native ODE 0.5ms"]),
        "sde": _sde_train_call(net, stim, t, y0, SDE_TRAIN_VARIANTS["rk4exp native SDE 0.5ms"]),
    }
    best = {k: float("inf") for k in calls}
    for call in calls.values():
        call()  # warm-up
    for _ in range(7):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            best[name] = min(best[name], time.perf_counter() - t0)
    benchmark.pedantic(calls["sde"], rounds=1)
    ratio = best["sde"] / best["ode"]
    benchmark.extra_info.update(ode_s=best["ode"], sde_s=best["sde"], sde_over_ode=ratio)
    assert ratio <= 1.5, f"native SDE {best['sde']:.3g} s vs ODE {best['ode']:.3g} s: {ratio:.2f}x"
