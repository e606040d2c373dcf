"""Solver benchmarks: forward, forward+backward and SDE on the task networks.

Run: ``pytest tests/benchmarks/test_bench_solvers.py --benchmark-enable`` (the unit run keeps
``--benchmark-disable``, which still calls each function once: expensive cases skip there).
The README table comes from ``python scripts/bench_table.py`` (same workloads and variants).

Workloads: the decision (2 columns), XOR (3) and parity (13) networks, batch 1, 16 and 256,
1 s trials on a 1 ms grid with the stimulus (15 Hz bits) on in the second half. Each case
records in ``benchmark.extra_info`` the function evaluations and the readout and all-population
rate errors (Hz) against a float64 dopri5 reference at rtol = atol = 1e-9.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from colenv import SolverConfig, rollout
from colenv.models import AreaSpec, ColumnNetwork, ConnectionSpec, NetworkSpec
from colenv.models.column.integrators import _filter_weights, fast_rollout  # noqa: F401  (bench_table imports these)
from colenv.models.column.transfer import transfer_g

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
DOPRI5_DEFAULT = dict(rtol=1e-7, atol=1e-9)  # torchdiffeq's defaults: the predecessor's solver


def workload(name: str, batch: int, trial_ms: int = TRIAL_MS, dtype=torch.float32):
    """(net, stimulus [T, B, I], t_ms [T], y0 [B, S]) with 15 Hz bits in the second half."""
    torch.manual_seed(0)
    net = ColumnNetwork(spec=NETWORKS[name](), dtype=dtype)
    T = trial_ms + 1
    gen = torch.Generator(device="cpu").manual_seed(1)
    bits = torch.rand(batch, net.n_inputs, generator=gen, device="cpu") > 0.5
    device = net.bg_drive.device
    stim = torch.zeros(T, batch, net.n_inputs, dtype=dtype, device=device)
    stim[T // 2 :] = bits.to(device=device, dtype=dtype) * 15.0
    t = torch.arange(T, dtype=dtype, device=device)
    with torch.no_grad():
        y0 = net.initial_state(batch)
    return net, stim, t, y0


@functools.cache
def reference_states(name: str, batch: int, trial_ms: int = TRIAL_MS) -> torch.Tensor:
    """float64 dopri5, rtol = atol = 1e-9: the accuracy yardstick [T, B, S]."""
    net, stim, t, y0 = workload(name, batch, trial_ms, torch.float64)
    cfg = SolverConfig("dopri5", rtol=1e-9, atol=1e-9)
    with torch.no_grad():
        return rollout(net, stim, t, cfg, y0=y0).states


def errors_hz(net, states: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max readout error, max error over all populations' rates), Hz."""
    P = net.n_pop
    r, rr = states.detach().double()[..., 2 * P :], ref[..., 2 * P :]
    readout = (r - rr).index_select(-1, net.readout_index)
    return float(readout.abs().max()), float((r - rr).abs().max())


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
    """One trial at a time (the predecessor's loop)."""

    def run(net, stim, t, y0):
        states, nfe = [], 0
        for b in range(stim.shape[1]):
            out = rollout(net, stim[:, b : b + 1], t, cfg, y0=y0[b : b + 1])
            states.append(out.states)
            nfe += out.stats.nfe
        return torch.cat(states, dim=1), nfe

    return run


def reference_rk4_step(c: dict, h: float):
    """Plain classical RK4 over the full state [v, a, r]: ``step(y, drive, w_t, kappa)``.
    The yardstick for the fast path: the simplest thing one would compile."""
    da, db, inv_d = c["da"], c["db"], 1.0 / c["d"]
    inv_m, inv_a, inv_s = 1.0 / c["tau_m"], 1.0 / c["tau_a"], 1.0 / c["tau_s"]

    def rhs(y, drive, w_t, kappa):
        P = drive.shape[-1]
        v, a, r = y[:, :P], y[:, P : 2 * P], y[:, 2 * P :]
        phi = transfer_g((v - a) * da - db) * inv_d
        dv = torch.addmm(drive, phi, w_t) - v * inv_m
        return torch.cat([dv, (kappa * phi - a) * inv_a, (phi - r) * inv_s], dim=-1)

    def step(y, drive, w_t, kappa):
        k1 = rhs(y, drive, w_t, kappa)
        k2 = rhs(y + 0.5 * h * k1, drive, w_t, kappa)
        k3 = rhs(y + 0.5 * h * k2, drive, w_t, kappa)
        k4 = rhs(y + h * k3, drive, w_t, kappa)
        return y + (h / 6.0) * (k1 + 2.0 * (k2 + k3) + k4)

    return step


_RK4_CACHE: dict = {}


def compiled_rk4(step_ms: float = 0.5):
    def run(net, stim, t, y0):
        h = step_ms * 1e-3
        key = (net.n_pop, tuple(y0.shape), step_ms)
        if key not in _RK4_CACHE:
            _RK4_CACHE[key] = torch.compile(reference_rk4_step(net.constants(), h), dynamic=False)
        step = _RK4_CACHE[key]
        dyn = net.prepare(stim)
        n_sub = round(float(t[1] - t[0]) / step_ms)
        y, out = y0, [y0]
        for k in range(t.shape[0] - 1):
            for _ in range(n_sub):
                y = step(y, dyn.drive[k], dyn.w_t, dyn.kappa)
            out.append(y)
        return torch.stack(out), (t.shape[0] - 1) * n_sub * 4

    return run


VARIANTS = {
    "dopri5 per-trial": per_trial(SolverConfig("dopri5", **DOPRI5_DEFAULT)),
    "dopri5 batched": _solve(SolverConfig("dopri5", **DOPRI5_DEFAULT)),
    "rk4 torchdiffeq 0.5ms": _solve(SolverConfig("rk4", step_ms=0.5)),
    "dopri5 adjoint": _solve(SolverConfig("dopri5", adjoint=True, **DOPRI5_DEFAULT)),
    # the torch kernel of the fast path (on CPU in float32 the default is colenv.models.column.native)
    "fast rk4exp 0.5ms": _solve(SolverConfig("rk4exp", step_ms=0.5, kernel="torch")),
    "fast rk4exp 0.5ms compiled": _solve(
        SolverConfig("rk4exp", step_ms=0.5, compile=True, kernel="torch")
    ),
    "fast rk4exp 0.5ms compiled, autograd backward": _solve(
        SolverConfig("rk4exp", step_ms=0.5, compile=True, backward="autograd", kernel="torch")
    ),
    "fast rk4exp 1ms compiled": _solve(
        SolverConfig("rk4exp", step_ms=1.0, compile=True, kernel="torch")
    ),
    # the task configs' solver: the native kernel and its adjoint on CPU (torch compiled on GPU)
    "fast rk4exp 0.5ms default": _solve(SolverConfig("rk4exp", step_ms=0.5, compile=True)),
    "RK4 compiled reference 0.5ms": compiled_rk4(0.5),
}
CHEAP = {"fast rk4exp 0.5ms", "fast rk4exp 0.5ms default"}  # run under --benchmark-disable
# on small cases (decision and XOR, batch 1)


def measure(variant: str, name: str, batch: int, grad: bool, trial_ms: int = TRIAL_MS):
    """A zero-argument callable doing one rollout (and backward if ``grad``) -> (states, nfe)."""
    net, stim, t, y0 = workload(name, batch, trial_ms)
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


# ----------------------------------------------------------------------------- pytest
@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _skip_if_disabled(request, variant, name, batch):
    if request.config.getoption("benchmark_disable") and not (
        variant in CHEAP and name != "parity" and batch == 1
    ):
        pytest.skip("expensive benchmark: run with --benchmark-enable")


def _bench(benchmark, request, variant, name, batch, grad):
    _skip_if_disabled(request, variant, name, batch)
    if variant == "dopri5 per-trial" and batch > 16:
        pytest.skip("per-trial loop at batch 256 takes hours; scaled in scripts/bench_table.py")
    net, call = measure(variant, name, batch, grad)
    states, nfe = benchmark.pedantic(
        call,
        rounds=3 if "compiled" in variant else 1,
        warmup_rounds=1 if "compiled" in variant else 0,
    )
    ro, allp = errors_hz(net, states, reference_states(name, batch))
    benchmark.extra_info.update(nfe=nfe, readout_err_hz=ro, all_pop_err_hz=allp)
    assert math.isfinite(ro)


@pytest.mark.benchmark(group="forward")
@pytest.mark.parametrize("batch", [1, 16, 256])
@pytest.mark.parametrize("name", list(NETWORKS))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward(benchmark, request, variant, name, batch):
    _bench(benchmark, request, variant, name, batch, grad=False)


@pytest.mark.benchmark(group="forward+backward")
@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("name", list(NETWORKS))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_backward(benchmark, request, variant, name, batch):
    _bench(benchmark, request, variant, name, batch, grad=True)


SDE_VARIANTS = {
    "fast rk4exp SDE 0.5ms": "fast",
    "torchsde euler 0.5ms": SolverConfig("euler", sde=True, step_ms=0.5),
    "torchsde srk 0.5ms": SolverConfig("srk", sde=True, step_ms=0.5),
}


def sde_call(variant: str, name: str, batch: int, trial_ms: int = TRIAL_MS):
    net, stim, t, y0 = workload(name, batch, trial_ms)
    cfg = SDE_VARIANTS[variant]

    def call():
        with torch.no_grad():
            if cfg == "fast":
                dyn = net.prepare(stim)
                gen = torch.Generator(device=y0.device).manual_seed(0)
                states = fast_rollout(
                    dyn, y0, t.shape[0], 2, 0.5e-3, "rk4exp", noise=True, generator=gen
                )
                return states, dyn.nfe
            out = rollout(net, stim, t, cfg, y0=y0, seed=0)
            return out.states, out.stats.nfe

    return net, call


@pytest.mark.benchmark(group="SDE")
@pytest.mark.parametrize("variant", list(SDE_VARIANTS))
def test_sde_parity(benchmark, request, variant):
    if request.config.getoption("benchmark_disable"):
        pytest.skip("expensive benchmark: run with --benchmark-enable")
    net, call = sde_call(variant, "parity", 16)
    states, nfe = benchmark.pedantic(call, rounds=1)
    r = states[..., 2 * net.n_pop :]
    benchmark.extra_info.update(nfe=nfe, max_rate_hz=float(r.max()), min_rate_hz=float(r.min()))
