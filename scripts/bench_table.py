"""Regenerate the README's solver benchmark table: ``python scripts/bench_table.py``.

Measures everything in one run (one thread, timeit-style: a warmup call, then the fastest of N)
and prints markdown. Workloads and variants come from tests/benchmarks/test_bench_solvers.py.
Options: ``--repeats``, ``--per-trial-sample``, ``--skip-memory``, ``--skip-cold-compile``,
``--skip-accuracy``; scripts/gpu_check.py runs it with CUDA as the default device.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402

from colenv.models.column.integrators import DEFAULT_UNROLL  # noqa: E402
from tests.benchmarks import test_bench_solvers as B  # noqa: E402


def timed(call, repeats: int, warmup: int = 1, stat=statistics.median):
    """(``stat`` of ``repeats`` call times in seconds, last result, first-call seconds).

    With ``warmup`` >= 1 the first ``warmup`` calls are not measured; with 0 the first call
    is one of the ``repeats``. ``stat=min`` gives the fastest call: on a shared machine noise
    only adds time, so the fastest call is the cost without interference.
    """
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    t0 = time.perf_counter()
    result = call()
    sync()
    first = time.perf_counter() - t0
    times = [first] if warmup == 0 else []
    for _ in range(warmup - 1):
        call()
    while len(times) < repeats:
        t0 = time.perf_counter()
        result = call()
        sync()
        times.append(time.perf_counter() - t0)
    return stat(times), result, first


def row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}g}"


def peak_rss_mb(trial_ms: int, checkpoint_every: int, kernel: str) -> float:
    """Peak RSS (MB) of a fresh process doing one fast rk4exp forward+backward (eager)."""
    code = (
        "import resource, torch, sys; sys.path.insert(0, '.');"
        "torch.set_num_threads(1);"
        "from tests.benchmarks import test_bench_solvers as B;"
        "from colenv.models.column.integrators import fast_rollout;"
        f"net, stim, t, y0 = B.workload('parity', 16, {trial_ms});"
        "dyn = net.prepare(stim);"
        f"s = fast_rollout(dyn, y0, t.shape[0], 2, 0.5e-3, 'rk4exp', checkpoint_every={checkpoint_every}, kernel='{kernel}');"
        "B.loss_of(net, s).backward();"
        # VmHWM: this process image's own high-water mark. ru_maxrss is not: Linux carries
        # it over fork + exec, so a child of a 3 GB benchmark process reported 3 GB.
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')]"
        " if sys.platform.startswith('linux') else [];"
        "print(int(hwm[0].split()[1]) / 1024 if hwm else "
        "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    root = os.path.join(os.path.dirname(__file__), "..")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return float(out.stdout.strip().splitlines()[-1])


def cold_compile_s(unroll: int, kernel: str) -> list[float]:
    """First-call seconds (forward with grad, its backward, a forward without grad) of the fast
    path at 0.5 ms in a fresh process with inductor's caches disabled and an empty native-kernel
    cache: what a first run on a new machine pays (the torch kernel compiles its three graphs,
    the native one builds its C library on its first call)."""
    code = (
        "import time, torch, sys; sys.path.insert(0, '.');"
        "torch.set_num_threads(1);"
        "from tests.benchmarks import test_bench_solvers as B;"
        "from colenv import SolverConfig, rollout;"
        f"cfg = SolverConfig('rk4exp', step_ms=0.5, compile=True, unroll={unroll}, "
        f"kernel='{kernel}');"
        "net, stim, t, y0 = B.workload('parity', 16);"
        "t0 = time.perf_counter(); s = rollout(net, stim, t, cfg, y0=y0).states;"
        "t1 = time.perf_counter(); B.loss_of(net, s).backward(); t2 = time.perf_counter();"
        "torch.set_grad_enabled(False); rollout(net, stim, t, cfg, y0=y0);"
        "print(t1 - t0, t2 - t1, time.perf_counter() - t2)"
    )
    root = os.path.join(os.path.dirname(__file__), "..")
    with tempfile.TemporaryDirectory() as native_cache:
        env = dict(
            os.environ, TORCHINDUCTOR_FORCE_DISABLE_CACHES="1", COLENV_CACHE_DIR=native_cache
        )
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, env=env
        )
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return [float(x) for x in out.stdout.strip().splitlines()[-1].split()]


ROOT = os.path.join(os.path.dirname(__file__), "..")


def default_kernel() -> str:
    """The kernel the default solver runs float32 rollouts on here: native on CPU where the C
    kernel builds (colenv.models.column.native), else torch."""
    from colenv.models.column import native

    on_cpu = torch.get_default_device().type == "cpu"
    return "native" if on_cpu and native.available() else "torch"


def parity_call(variant: str, repeats: int, per_trial_sample: int) -> dict:
    """Time one variant of the parity batch-16 forward+backward (in this process)."""
    batch = 16
    if variant == "dopri5 per-trial":
        n = per_trial_sample
        _, call = B.measure(variant, "parity", n, grad=True)
        # the fastest of two calls, like the fast variants: noise only adds time
        sec, (states, nfe), first = timed(call, 2, warmup=0, stat=min)
        return {
            "sec": sec * batch / n,
            "nfe": nfe * batch // n,
            "first": first,
            "states": states,
            "note": f"{n} trials x {batch // n}",
        }
    slow = variant.startswith("dopri5") or "torchdiffeq" in variant
    _, call = B.measure(variant, "parity", batch, grad=True)
    sec, (states, nfe), first = timed(
        call, 1 if slow else repeats, warmup=0 if slow else 1, stat=min
    )
    return {"sec": sec, "nfe": nfe, "first": first, "states": states, "note": fmt(first)}


BATCH_CALLS = {1: 20, 16: 10, 256: 3}  # calls per round (batch 1 / 16 / 256)
BATCH_ROUNDS = 3


def batch_scaling(variant: str) -> dict:
    """Forward (no grad) call times of ``variant`` at batch 1, 16, 256, interleaved over
    rounds (in this process)."""
    calls = {}
    for batch in BATCH_CALLS:
        calls[batch] = B.measure(variant, "parity", batch, grad=False)[1]
        calls[batch]()  # compile / build / warm up
    times: dict[int, list[float]] = {batch: [] for batch in BATCH_CALLS}
    for _ in range(BATCH_ROUNDS):
        for batch, n in BATCH_CALLS.items():
            for _ in range(n):
                t0 = time.perf_counter()
                calls[batch]()
                times[batch].append(time.perf_counter() - t0)

    used = default_kernel() if variant == "fast rk4exp 0.5ms default" else "torch"
    # A floor under any batch-256 call: its states written once into fresh memory (what a
    # rollout returns; at batch 1 they stay in cache, at batch 256 they are 320 MB)
    shape = calls[256]()[0].shape
    floor = []
    for _ in range(3):
        t0 = time.perf_counter()
        torch.empty(shape).fill_(1.0)
        floor.append(time.perf_counter() - t0)
    return {"times": times, "kernel": used, "write_floor_s": min(floor)}


def isolated(kind: str, **kw) -> dict:
    """Run ``parity_call`` or ``batch_scaling`` in a fresh process (one thread) and return its
    result: every variant starts from the same process state (a long-running process that has
    held large tensors timed the compiled path up to 1.5x slower)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.pt")
        device = str(torch.get_default_device())  # scripts/gpu_check.py sets CUDA
        spec = json.dumps({"kind": kind, "kw": kw, "out": out, "device": device})
        res = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--child", spec],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if res.returncode:
            raise RuntimeError(f"{kind} {kw} failed:\n{res.stderr[-3000:]}")
        return torch.load(out, weights_only=False)


def child(spec: str) -> None:
    job = json.loads(spec)
    torch.set_num_threads(1)
    torch.set_default_device(job["device"])
    fn = {"parity": parity_call, "batch": batch_scaling}[job["kind"]]
    torch.save(fn(**job["kw"]), job["out"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--per-trial-sample",
        type=int,
        default=2,
        help="trials the per-trial dopri5 loop is timed on (scaled per trial)",
    )
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-cold-compile", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--json", help="also write raw numbers here")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: one isolated measurement
    args = ap.parse_args(argv)
    if args.child:
        child(args.child)
        return
    torch.set_num_threads(1)
    raw: dict = {}
    started = time.perf_counter()
    print(
        f"torch {torch.__version__}, 1 thread, {os.cpu_count()} cores; parity table: each variant "
        f"in its own process, fastest of {args.repeats} calls after a warmup call (per-trial dopri5: fastest of 2 calls; the "
        "other dopri5 and torchdiffeq rows: one call); 1 s trials (1001 points), stimulus in "
        "the second half.\n"
    )

    # ---- 1. parity, batch 16, forward+backward: all variants
    name, batch = "parity", 16
    ref = B.reference_states(name, batch)
    print(f"### Parity network (13 columns), batch {batch}, forward+backward\n")
    print(
        row(
            [
                "variant",
                "time (s)",
                "vs per-trial dopri5",
                "nfe",
                "readout err (Hz)",
                "all-pop err (Hz)",
                "first call (s)",
            ]
        )
    )
    print(row(["---"] * 7))
    results = {}
    for variant in [
        "dopri5 per-trial",
        "dopri5 batched",
        "dopri5 adjoint",
        "rk4 torchdiffeq 0.5ms",
        "fast rk4exp 0.5ms",
        "fast rk4exp 0.5ms compiled, autograd backward",
        "fast rk4exp 0.5ms compiled",
        "fast rk4exp 1ms compiled",
        "fast rk4exp 0.5ms default",
        "RK4 compiled reference 0.5ms",
    ]:
        res = isolated(
            "parity",
            variant=variant,
            repeats=args.repeats,
            per_trial_sample=args.per_trial_sample,
        )
        sec, nfe, states = res["sec"], res["nfe"], res["states"]
        errs = B.errors_hz(B.workload(name, 1)[0], states, ref[:, : states.shape[1]])
        results[variant] = sec
        base = results["dopri5 per-trial"]
        print(
            row(
                [
                    variant,
                    fmt(sec),
                    f"{base / sec:.0f}x",
                    nfe,
                    fmt(errs[0]),
                    fmt(errs[1]),
                    res["note"],
                ]
            ),
            flush=True,
        )
    raw["parity_b16_fwd_bwd"] = results
    best = results["fast rk4exp 0.5ms default"]
    speedup = results["dopri5 per-trial"] / best
    vs_rk4 = best / results["RK4 compiled reference 0.5ms"]
    torch_x = results["dopri5 per-trial"] / results["fast rk4exp 0.5ms compiled"]
    print(
        f"\nTargets (issue 5), fast rk4exp 0.5 ms default (the task configs' solver: "
        f"{default_kernel()} kernel): "
        f"{speedup:.0f}x faster than per-trial dopri5 (target >= 300x: "
        f"{'met' if speedup >= 300 else 'NOT met'}); {vs_rk4:.2f}x the time of the compiled "
        f"RK4 reference at the same step (target <= 2x: {'met' if vs_rk4 <= 2 else 'NOT met'}). "
        f"Per-trial dopri5 timed on {args.per_trial_sample} trials and scaled per trial. The "
        f"compiled torch kernel: {torch_x:.0f}x.\n"
    )

    # ---- 2. batch scaling, forward, parity: the native kernel (the no-grad default) and the
    # compiled torch path. A ratio of two timings on a shared machine: a slow moment in either
    # swings it (batch 1 alone measured 27-59 ms in one session). So: calls interleaved over
    # rounds, and the fastest call of each batch size (its cost without interference).
    print(
        "### Batch scaling, parity, forward (no grad), rk4exp 0.5 ms\n\n"
        f"Each kernel in its own process; fastest of {BATCH_ROUNDS} rounds x "
        + " / ".join(f"{n}" for n in BATCH_CALLS.values())
        + " calls (batch 1 / 16 / 256), interleaved; the median in brackets. Native: the C "
        "kernel (colenv.models.column.native), what the default solver runs on CPU; torch: the compiled torch "
        'path (`kernel="torch"`).\n'
    )
    print(
        row(
            ["kernel", "batch", "time (s)", "trials/s", "ms per trial", "per-trial cost vs batch 1"]
        )
    )
    print(row(["---"] * 6))
    raw["batch_scaling"] = {}
    for label, variant in (
        ("default", "fast rk4exp 0.5ms default"),
        ("torch", "fast rk4exp 0.5ms compiled"),
    ):
        res = isolated("batch", variant=variant)
        times = {int(b): ts for b, ts in res["times"].items()}
        kernel = res["kernel"] if label == "torch" else f"{res['kernel']} (default)"
        if label == "default":
            raw["default_kernel"] = res["kernel"]
        per = {batch: min(ts) / batch for batch, ts in times.items()}
        for batch, ts in times.items():
            sec = min(ts)
            print(
                row(
                    [
                        kernel,
                        batch,
                        f"{fmt(sec)} ({fmt(statistics.median(ts))})",
                        fmt(batch / sec),
                        fmt(1e3 * sec / batch),
                        f"{per[1] / per[batch]:.1f}x lower",
                    ]
                ),
                flush=True,
            )
        raw["batch_scaling"][label] = {
            "kernel": kernel,
            "per_trial_s": per,
            "times": times,
            "write_floor_s": res["write_floor_s"],
        }
    dft = raw["batch_scaling"]["default"]["per_trial_s"]
    tor = raw["batch_scaling"]["torch"]["per_trial_s"]
    print(
        f"\nBatch 256 per trial: the default ({raw['default_kernel']} kernel) "
        f"{dft[1] / dft[256]:.1f}x below its batch 1, torch {tor[1] / tor[256]:.1f}x below its "
        f"batch 1 (target 10x: {'met' if dft[1] / dft[256] >= 10 else 'NOT met'} by the "
        f"default); the default's batch 256 per trial is {tor[1] / dft[256]:.1f}x below the "
        "torch path's batch 1."
    )
    floor = raw["batch_scaling"]["default"]["write_floor_s"] / 256
    print(
        f"Writing batch 256's returned states into fresh memory (torch.empty + fill_, the same "
        f"size) costs {fmt(1e3 * floor)} ms per trial by itself: a floor under the batch-256 "
        f"per-trial cost that allows at most {dft[1] / floor:.1f}x below the default's batch 1 "
        "even with free arithmetic.\n"
    )

    # ---- 2b. first calls from cold caches
    if not args.skip_cold_compile:
        unroll = DEFAULT_UNROLL
        print("\n### First calls from cold caches, fast rk4exp 0.5 ms, parity batch 16\n")
        print("A fresh process with inductor's caches disabled and an empty native-kernel cache")
        print(
            f"(a first run on a new machine). torch: the compiled torch kernel (unroll={unroll}),"
        )
        print("whose three graphs compile here and load from the cache in later processes;")
        print("native: the C kernel, whose library builds on the first call.\n")
        kernels = ["torch"] + (["native"] if default_kernel() == "native" else [])
        print(row(["call", *(f"{k} (s)" for k in kernels)]))
        print(row(["---"] * (1 + len(kernels))))
        cold = {k: cold_compile_s(unroll, k) for k in kernels}
        for i, call in enumerate(["forward with grad", "backward", "forward without grad"]):
            print(row([call, *(fmt(cold[k][i]) for k in kernels)]), flush=True)
        raw["cold_first_calls_s"] = cold

    # ---- 3. task networks: accuracy and cost of the default solver without gradient
    print(
        "\n### Task networks, batch 16, forward: fast rk4exp (no grad: the default kernel) vs tight "
        "float64 reference\n"
    )
    print(
        row(
            [
                "network",
                "columns",
                "step (ms)",
                "time (s)",
                "nfe",
                "readout err (Hz)",
                "all-pop err (Hz)",
            ]
        )
    )
    print(row(["---"] * 7))
    for name in ("decision", "xor", "parity"):
        ref = B.reference_states(name, 16)
        for variant, step in (("fast rk4exp 0.5ms default", 0.5),):
            net, call = B.measure(variant, name, 16, grad=False)
            sec, (states, nfe), _ = timed(call, 1)
            ro, allp = B.errors_hz(net, states, ref)
            print(row([name, net.n_columns, step, fmt(sec), nfe, fmt(ro), fmt(allp)]), flush=True)

    # ---- 3b. accuracy on the task configs' evaluation grids
    if not args.skip_accuracy:
        import solver_accuracy

        print("\n### Accuracy on the task evaluation grids (config weights), rk4exp forward\n")
        solver_accuracy.main(["--steps", "0.5", "1.0"])

    # ---- 4. memory
    if not args.skip_memory:
        print("\n### Peak RSS, parity batch 16, fast rk4exp forward+backward (discrete adjoint)\n")
        print(
            "Native: the default on CPU, whose backward recomputes segments of 25 intervals "
            "(memory flat in trial length by design); torch: the eager torch kernel, without and "
            "with `checkpoint_every=50`.\n"
        )
        print(
            row(
                [
                    "trial",
                    "native (MB)",
                    "torch, no checkpointing (MB)",
                    "torch, checkpoint_every=50 (MB)",
                ]
            )
        )
        print(row(["---"] * 4))
        for trial_ms in (1000, 10000):
            nat = (
                peak_rss_mb(trial_ms, 0, "native") if default_kernel() == "native" else float("nan")
            )
            plain = peak_rss_mb(trial_ms, 0, "torch")
            ck = peak_rss_mb(trial_ms, 50, "torch")
            print(
                row([f"{trial_ms // 1000} s", fmt(nat, 4), fmt(plain, 4), fmt(ck, 4)]), flush=True
            )

    # ---- 5. SDE
    print("\n### SDE, parity batch 16, 1 s (no grad)\n")
    print(row(["variant", "time (s)", "nfe", "min rate (Hz)", "max rate (Hz)"]))
    print(row(["---"] * 5))
    for variant in B.SDE_VARIANTS:
        net, call = B.sde_call(variant, "parity", 16)
        sec, (states, nfe), _ = timed(call, 1, warmup=0)
        r = states[..., 2 * net.n_pop :]
        print(row([variant, fmt(sec), nfe, fmt(float(r.min())), fmt(float(r.max()))]), flush=True)
    # torchsde adaptive: timed on 50 ms (it is 20-40x the fixed-step cost) and scaled
    net, stim, t, y0 = B.workload("parity", 16, 50)
    cfg = B.SolverConfig("euler", sde=True, adaptive=True, step_ms=0.5, rtol=1e-3, atol=1e-3)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = B.rollout(
            net,
            stim,
            t,
            cfg,
            y0=y0,
            seed=0,
        )
    sec = (time.perf_counter() - t0) * 20
    r = out.states[..., 2 * net.n_pop :]
    print(
        row(
            [
                "torchsde euler adaptive (rtol=atol=1e-3; 50 ms x 20)",
                fmt(sec),
                out.stats.nfe * 20,
                fmt(float(r.min())),
                fmt(float(r.max())),
            ]
        )
    )
    print(f"\n(total run {time.perf_counter() - started:.0f} s)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(raw, fh, indent=1)


if __name__ == "__main__":
    main()
