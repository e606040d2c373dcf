"""Fault injection for the numerics: runaway rates, non-finite inputs, adaptive solvers that
would take ever smaller steps, and a damaged or unbuildable native kernel.

Each test breaks one thing the way a careless user or a crashed process would, and checks
that the rollout stops with an error naming the input (or recovers), never silently."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from colenv import DivergenceError, SolverConfig, rollout
from colenv.models import AreaSpec, ColumnNetwork, ConnectionSpec, NetworkSpec
from colenv.models.column import native
from colenv.models.ctrnn import CTRNN, CTRNNConfig
from colenv.solve import MAX_RATE_HZ, max_adaptive_steps

ROOT = Path(__file__).resolve().parents[1]


def xor_net(dtype=torch.float32) -> ColumnNetwork:
    spec = NetworkSpec(
        areas=(AreaSpec("ab", 2), AreaSpec("c", 1)),
        n_inputs=2,
        input_mode="one_to_one",
        feedforward=ConnectionSpec(trainable=True),
        input=ConnectionSpec(pairs=(("input", "L4e"), ("input", "L4i")), trainable=True),
    )
    torch.manual_seed(0)
    return ColumnNetwork(spec=spec).to(dtype)


def trial(net, T: int = 6, batch: int = 2, hz: float = 20.0):
    """A constant ``hz`` stimulus on every input over ``T`` grid points, 1 ms apart."""
    stim = torch.full((T, batch, net.n_inputs), hz, dtype=net.bg_drive.dtype)
    return stim, torch.arange(T, dtype=net.bg_drive.dtype)


def runaway_net(dtype=torch.float32) -> tuple[ColumnNetwork, torch.Tensor]:
    """Input weights x 1e6: the driven populations climb to 1e7-1e11 Hz within 10 ms, all
    finite (what every solver used to hand back unflagged); with the rest state of the
    unscaled network."""
    net = xor_net(dtype)
    y0 = net.initial_state(2)
    with torch.no_grad():
        net.input.weight.mul_(1e6)
    return net, y0


RUNAWAY_SOLVERS = [
    pytest.param(SolverConfig("euler", step_ms=0.25), id="torchdiffeq-euler"),
    pytest.param(SolverConfig("rk4"), id="torchdiffeq-rk4"),
    pytest.param(SolverConfig("dopri5"), id="torchdiffeq-dopri5"),
    pytest.param(SolverConfig("euler", sde=True, step_ms=0.25), id="torchsde-euler"),
    pytest.param(SolverConfig("expeuler"), id="fast-expeuler"),
    pytest.param(SolverConfig("rk4exp", fast={"kernel": "torch"}), id="fast-rk4exp-torch"),
    pytest.param(SolverConfig("rk4exp", fast={"kernel": "native"}), id="native-rk4exp"),
    pytest.param(SolverConfig("rk4exp", sde=True), id="fast-sde-rk4exp"),
    pytest.param(SolverConfig("exprb2", fast={"kernel": "torch"}), id="fast-exprb2-torch"),
    pytest.param(SolverConfig("exprb2", fast={"kernel": "native"}), id="native-exprb2"),
    pytest.param(SolverConfig("exprb2", sde=True), id="fast-sde-exprb2"),
]


# ------------------------------------------------------------------ 1. no silent runaway
@pytest.mark.parametrize("solver", RUNAWAY_SOLVERS)
def test_finite_runaway_rates_raise_on_every_solver_path(solver):
    net, y0 = runaway_net()
    T = 2 if solver.method == "dopri5" else 6  # dopri5 crawls through the stiff runaway
    stim, t = trial(net, T)
    with torch.no_grad(), pytest.raises(DivergenceError) as err:
        rollout(net, stim, t, solver, y0=y0, seed=0)
    found = re.fullmatch(
        r"rollout ran away: the rate of (ab|c)\[\d\]\.L\w+ in trial \d is (\S+) Hz at t = "
        r"\d+\.000 ms, beyond solver\.max_rate_hz = 10000 .*",
        str(err.value),
    )
    assert found, str(err.value)
    # the audit's case: a finite rate far beyond any cortical rate, no NaN in sight
    assert MAX_RATE_HZ < float(found.group(2)) < 1e30


@pytest.mark.parametrize("kernel", ["torch", "native"])
def test_exprb2_runaway_trial_is_nan_and_flagged_the_others_are_kept(kernel):
    # a state whose Jacobian norm overflows has no Taylor plan: that trial becomes NaN (not a
    # FloatingPointError that loses the whole batch), the check names it, and with
    # check_finite=False the other trials come back as a rollout of them alone gives them
    net = xor_net()
    y0 = net.initial_state(2)
    y0[0] = 3e38
    stim, t = trial(net, 6)
    solver = SolverConfig("exprb2", fast={"kernel": kernel})
    with torch.no_grad():
        with pytest.raises(DivergenceError, match="in trial 0"):
            rollout(net, stim, t, solver, y0=y0)
        raw = rollout(net, stim, t, solver.replace(check_finite=False), y0=y0).states
        alone = rollout(net, stim[:, 1:], t, solver, y0=y0[1:]).states
    assert bool(torch.isnan(raw[1:, 0]).all())
    torch.testing.assert_close(raw[:, 1:], alone, rtol=1e-6, atol=1e-6)


def test_rate_bound_names_the_first_time_and_is_configurable():
    net, y0 = runaway_net()
    stim, t = trial(net, 6)
    with torch.no_grad():
        raw = rollout(net, stim, t, SolverConfig("rk4exp", check_finite=False), y0=y0).states
        rates = net.rates(raw)
        k = int((rates.amax(dim=(1, 2)) > MAX_RATE_HZ).nonzero()[0])
        with pytest.raises(DivergenceError, match=rf"at t = {k}\.000 ms"):
            rollout(net, stim, t, SolverConfig("rk4exp"), y0=y0)
        # a bound above the peak lets it through
        peak = float(rates.max())
        rollout(net, stim, t, SolverConfig("rk4exp", max_rate_hz=2 * peak), y0=y0)


def test_the_shipped_networks_stay_far_below_the_bound():
    """At rest and driven, a column fires < 200 Hz: the default bound is 50x above that."""
    net = xor_net()
    stim, t = trial(net, 200)
    with torch.no_grad():
        states = rollout(net, stim, t, SolverConfig("rk4exp")).states
    assert float(net.rates(states).max()) < MAX_RATE_HZ / 50


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_rate_bound_must_be_a_positive_finite_number(bad):
    with pytest.raises(ValueError, match="max_rate_hz"):
        SolverConfig(max_rate_hz=bad)


def test_ctrnn_rates_are_bounded_and_named():
    net = CTRNN(CTRNNConfig(), n_inputs=2, n_outputs=1, seed=0)
    with torch.no_grad():
        net.w_in.mul_(1e7)
    stim, t = torch.full((5, 2, 2), 1.0), torch.arange(5, dtype=torch.float32) * 10
    with pytest.raises(DivergenceError, match=r"rate of x\[\d+\] \([EI]\) in trial \d"):
        rollout(net, stim, t, SolverConfig("rk4", step_ms=1.0))


def test_models_without_rates_are_not_bounded():
    """HopfField's state is a position, not a rate: large finite values pass."""
    from colenv.models.mlp import HopfField, HopfFieldConfig

    net = HopfField.from_config(HopfFieldConfig(), n_inputs=1, n_outputs=2, seed=0)
    assert not hasattr(net, "rates")
    stim, t = torch.zeros(3, 1, 1), torch.arange(3, dtype=torch.float32)
    y0 = torch.full((1, 2), 1e6)
    states = rollout(net, stim, t, SolverConfig("rk4", step_ms=0.5), y0=y0).states
    assert float(states.detach().abs().max()) > MAX_RATE_HZ


# ------------------------------------------------------------------ 2. non-finite inputs
def _no_step_advice(message: str) -> None:
    assert "step_ms" not in message and "smaller step" not in message


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_stimulus_is_named_before_integrating(value):
    net = xor_net()
    stim, t = trial(net, 6)
    stim[3, 1, 0] = value
    with pytest.raises(
        DivergenceError,
        match=rf"stimulus has {value} at t = 3\.000 ms \(index 3\), trial 1, input 0",
    ) as err:
        rollout(net, stim, t, SolverConfig("rk4exp"))
    _no_step_advice(str(err.value))


def test_non_finite_t_ms_is_named():
    net = xor_net()
    stim, t = trial(net, 6)
    t[2] = float("nan")
    with pytest.raises((DivergenceError, ValueError), match="t_ms"):
        rollout(net, stim, t, SolverConfig("rk4"))


def test_non_finite_y0_is_named():
    net = xor_net()
    stim, t = trial(net, 6)
    y0 = net.initial_state(2)
    y0[1, 30] = float("-inf")
    with pytest.raises(DivergenceError, match=r"y0 has -inf in trial 1, state ab\[0\]\.L6e a") as e:
        rollout(net, stim, t, SolverConfig("rk4exp"), y0=y0)
    _no_step_advice(str(e.value))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("input.weight", float("nan")),
        ("recurrent.weight", float("inf")),
        ("bg_drive", float("nan")),
    ],
)
def test_non_finite_parameter_or_buffer_is_named(name, value):
    net = xor_net()
    stim, t = trial(net, 6)
    y0 = net.initial_state(2)
    tensor = dict(net.named_parameters()).get(name)
    if tensor is None:
        tensor = dict(net.named_buffers())[name]
    with torch.no_grad():
        tensor.view(-1)[0] = value
    kind = "buffer" if name == "bg_drive" else "parameter"
    for solver in (SolverConfig("rk4exp"), SolverConfig("euler", step_ms=0.5)):
        with pytest.raises(
            DivergenceError, match=rf"{kind} {name} has {value} \(1 of \d+ entries\)"
        ) as err:
            rollout(net, stim, t, solver, y0=y0)
        _no_step_advice(str(err.value))


def test_rest_state_names_a_non_finite_parameter():
    """A NaN weight makes the rest state impossible: said as such, not as non-convergence."""
    net = xor_net()
    with torch.no_grad():
        net.feedforward.weight.view(-1)[3] = float("nan")
    with pytest.raises(DivergenceError, match=r"rest_state: feedforward\.weight \(1 of 576"):
        net.initial_state(2)
    stim, t = trial(net, 6)
    with pytest.raises(DivergenceError, match="parameter feedforward.weight has nan"):
        rollout(net, stim, t, SolverConfig("rk4exp"))  # named before the rest state is sought


def test_overflowing_drive_is_named():
    """Finite weights whose product with the stimulus overflows float32."""
    net = xor_net()
    stim, t = trial(net, 6)
    y0 = net.initial_state(2)
    with torch.no_grad():
        net.input.weight.fill_(3e38)
    with pytest.raises(
        DivergenceError,
        match=r"input drive .* of ab\[\d\]\.L\w+ is (inf|nan) at t = 0\.000 ms, trial 0: the weights overflow",
    ):
        rollout(net, stim, t, SolverConfig("rk4exp"), y0=y0)


# ------------------------------------------------------------------ 3. adaptive step cap
def test_default_adaptive_cap_follows_the_grid():
    assert max_adaptive_steps(SolverConfig("dopri5"), 1001) == 1000 + 20 * 1000
    assert max_adaptive_steps(SolverConfig("dopri5"), 1001, records=True) == 100 + 4 * 1000
    assert max_adaptive_steps(SolverConfig("dopri5", adaptive={"max_steps": 7}), 1001) == 7
    sde = SolverConfig("euler", sde=True, torchsde={"adaptive": True, "max_steps": 9})
    assert max_adaptive_steps(sde, 1001, records=True) == 9


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "adaptive_heun"])
def test_adaptive_cap_is_a_named_divergence_error(method):
    net, y0 = runaway_net(torch.float64)
    stim, t = trial(net, 11)
    solver = SolverConfig(method, adaptive={"max_steps": 40})
    with pytest.raises(
        DivergenceError,
        match=rf"{method} took more than 40 steps between t = 0 and t = .* ms \(of 10 ms\); the "
        r"dynamics are too stiff or ran away\. Raise solver\.adaptive\.max_steps",
    ):
        with torch.no_grad():
            rollout(net, stim, t, solver, y0=y0)


_MEMORY_SCRIPT = """
import resource, sys, torch
sys.path.insert(0, {tests!r})
from test_faults_numerics import runaway_net, trial
from colenv import DivergenceError, SolverConfig, rollout
net, y0 = runaway_net(torch.float64)
net.requires_grad_(True)
stim, t = trial(net, {T}, batch={batch})
solver = SolverConfig({method!r}, **{kwargs})
try:
    rollout(net, stim, t, solver, y0=y0[:1].expand({batch}, -1).contiguous(), seed=0)
    print("no error")
except DivergenceError as err:
    print("DivergenceError:", err)
print("maxrss_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def _memory_run(method: str, T: int, batch: int, timeout: float, **kwargs) -> tuple[str, float]:
    script = _MEMORY_SCRIPT.format(
        tests=str(ROOT / "tests"), T=T, batch=batch, method=method, kwargs=kwargs
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    return "\n".join(lines[:-1]), float(lines[-1].split()[1])


def test_adaptive_runaway_with_gradient_stays_in_memory():
    """A runaway network under dopri5 with autograd used to keep every tiny step's graph
    (tens of GB); the cap stops it with a named error and the process stays small."""
    message, rss = _memory_run("dopri5", 21, 4, 300, adaptive={"max_steps": 100})
    assert "dopri5 took more than 100 steps" in message
    assert rss < 2048, f"peak RSS {rss:.0f} MB"


@pytest.mark.slow
def test_adaptive_runaway_default_cap_over_a_full_trial_stays_in_memory():
    """The default cap with a gradient (100 + 4 per grid interval) over a 1 s trial, batch 16
    (the no-gradient default, 1000 + 20 per interval, took 4.8 GB here)."""
    message, rss = _memory_run("dopri5", 1001, 16, 1200)
    assert "dopri5 took more than 4100 steps" in message
    assert rss < 2048, f"peak RSS {rss:.0f} MB"


def test_torchsde_adaptive_runaway_ends_with_a_named_error():
    """torchsde's adaptive step has a floor of trial / max_steps: a runaway ends in bounded
    steps (the default: 1000 + 20 per grid interval) and is named."""
    net, y0 = runaway_net(torch.float64)
    stim, t = trial(net, 3)
    solver = SolverConfig(
        "euler", sde=True, step_ms=0.25, torchsde={"adaptive": True, "max_steps": 50}
    )
    with pytest.raises(DivergenceError, match="rate of|state .* of trial"):
        with torch.no_grad():
            rollout(net, stim, t, solver, y0=y0, seed=0)


# ------------------------------------------------------------------ 4. native kernel cache
@pytest.fixture(scope="module")
def built_kernel() -> Path:
    """A verified library of this machine (built once if the user cache has none)."""
    if os.environ.get("COLENV_NATIVE") == "0" or not native.available():
        pytest.skip(f"native kernel unavailable: {native.unavailable_reason()}")
    path = native.library_path()
    assert path is not None and native._verified(path)
    return path


def _copy_cache(lib: Path, folder: Path) -> Path:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copy2(lib, folder / lib.name)
    shutil.copy2(native._record(lib), folder / native._record(lib).name)
    return folder / lib.name


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """The module as in a fresh process: nothing loaded yet; fallback folder in tmp_path."""
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_lib_path", None)
    monkeypatch.setattr(native, "_error", None)
    monkeypatch.setattr(native, "_fallback_dir", lambda: tmp_path / "fallback")
    return tmp_path


def test_damaged_library_is_never_verified(built_kernel, tmp_path):
    lib = _copy_cache(built_kernel, tmp_path / "cache")
    assert native._verified(lib)
    data = lib.read_bytes()
    lib.write_bytes(data[: len(data) // 2])  # a crash mid-copy
    assert not native._verified(lib)
    lib.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, one bit flipped
    assert not native._verified(lib)
    lib.write_bytes(data)
    native._record(lib).unlink()  # a library from before the record
    assert not native._verified(lib)


def test_damaged_library_is_rebuilt_not_loaded(built_kernel, fresh_native, monkeypatch):
    cache = fresh_native / "cache"
    lib = _copy_cache(built_kernel, cache)
    lib.write_bytes(lib.read_bytes()[:4096])
    monkeypatch.setenv("COLENV_CACHE_DIR", str(cache))
    rebuilt = []

    def compile_(cc, lib_path):  # the real build takes 15 s; hand over the good library
        rebuilt.append(lib_path)
        _copy_cache(built_kernel, lib_path.parent)

    monkeypatch.setattr(native, "_compile", compile_)
    assert native.available()
    assert rebuilt == [lib] and native.library_path() == lib and native._verified(lib)


def test_unwritable_cache_falls_back_to_a_private_temp_folder(
    built_kernel, fresh_native, monkeypatch
):
    blocker = fresh_native / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("COLENV_CACHE_DIR", str(blocker / "cache"))  # cannot be created
    _copy_cache(built_kernel, fresh_native / "fallback")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: the kernel works
        assert native.available()
    assert native.library_path().parent == fresh_native / "fallback"


def test_cache_folder_others_can_write_is_passed_over(built_kernel, fresh_native, monkeypatch):
    shared = fresh_native / "shared"
    _copy_cache(built_kernel, shared)
    shared.chmod(0o777)
    monkeypatch.setenv("COLENV_CACHE_DIR", str(shared))
    _copy_cache(built_kernel, fresh_native / "fallback")
    assert native.available()
    assert native.library_path().parent == fresh_native / "fallback"


def test_no_usable_cache_folder_warns_once_and_runs_the_torch_path(fresh_native, monkeypatch):
    blocker = fresh_native / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("COLENV_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.setattr(native, "_fallback_dir", lambda: blocker / "fallback")
    _one_warning_and_torch_results(r"cannot build or cache it in .*a-file/cache.*a-file/fallback")


def test_no_compiler_warns_once_and_runs_the_torch_path(fresh_native, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    _one_warning_and_torch_results(r"no working C compiler \(/nonexistent/cc")


def _one_warning_and_torch_results(reason: str) -> None:
    net = xor_net()
    stim, t = trial(net, 11)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        auto = rollout(net, stim, t, SolverConfig("rk4exp")).states
        again = rollout(net, stim, t, SolverConfig("rk4exp")).states
    ours = [w for w in caught if issubclass(w.category, native.NativeKernelWarning)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    text = str(ours[0].message)
    assert "15x slower" in text and "install a C compiler" in text and "COLENV_CACHE_DIR" in text
    assert re.search(reason, text), text
    with torch.no_grad():
        torch_path = rollout(net, stim, t, SolverConfig("rk4exp", fast={"kernel": "torch"})).states
    assert torch.equal(auto, torch_path) and torch.equal(again, torch_path)
    with pytest.raises(ValueError, match="kernel = 'native' cannot run this rollout"):
        rollout(net, stim, t, SolverConfig("rk4exp", fast={"kernel": "native"}))


_TRUNCATED_SCRIPT = textwrap.dedent(
    """
    import sys, torch, warnings
    sys.path.insert(0, sys.argv[1])
    from test_faults_numerics import trial, xor_net
    from colenv import SolverConfig, rollout
    net = xor_net()
    stim, t = trial(net, 11)
    with torch.no_grad():
        out = rollout(net, stim, t, SolverConfig("rk4exp"))
    print("ok", float(net.rates(out.states).max()))
    """
)


def _run_with_cache(cache: Path, **env_changes: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLENV_CACHE_DIR": str(cache), **env_changes}
    env.pop("COLENV_NATIVE", None)
    return subprocess.run(
        [sys.executable, "-c", _TRUNCATED_SCRIPT, str(ROOT / "tests")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=ROOT,
    )


def _truncated_cache(built_kernel: Path, folder: Path) -> Path:
    lib = _copy_cache(built_kernel, folder)
    lib.write_bytes(lib.read_bytes()[:8192])
    return lib


def test_truncated_cached_library_is_never_loaded(built_kernel, tmp_path):
    """The audit's crash: a truncated cached .so was dlopen'ed (Bus error, rc 135). A fresh
    process whose compiler cannot rebuild it (it answers --version like the real one, so the
    cache key matches, then fails) passes it over: torch path, one warning, exit 0."""
    lib = _truncated_cache(built_kernel, tmp_path / "cache")
    cc = native._compiler()
    broken = tmp_path / "broken-cc"
    broken.write_text(
        '#!/bin/sh\nif [ "$1" = "--version" ]; then exec '
        + " ".join(map(shlex.quote, cc))
        + ' --version; fi\necho "no space left on device" >&2\nexit 1\n'
    )
    broken.chmod(0o755)
    out = _run_with_cache(tmp_path / "cache", CC=str(broken), TMPDIR=str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok")
    assert out.stderr.count("NativeKernelWarning") == 1 and "15x slower" in out.stderr
    assert "no space left on device" in out.stderr  # the reason is the failed rebuild
    assert lib.stat().st_size == 8192  # left alone, not loaded


@pytest.mark.slow
def test_truncated_cached_library_is_rebuilt_in_a_fresh_process(built_kernel, tmp_path):
    """With a compiler, the fresh process rebuilds the truncated library (one real build,
    ~15 s) and runs the rollout on it."""
    lib = _truncated_cache(built_kernel, tmp_path / "cache")
    out = _run_with_cache(tmp_path / "cache")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok") and "building the native rk4exp kernel" in out.stderr
    assert "NativeKernelWarning" not in out.stderr
    assert native._verified(lib) and lib.stat().st_size > 8192
