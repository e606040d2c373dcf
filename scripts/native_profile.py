"""Where the native kernel's time goes: ``python scripts/native_profile.py [--batch 16]``.

Times (one thread, fastest of 5 calls after a warmup) the pieces of one 1 s parity trial
(13 columns, rk4exp at 0.5 ms) on colenv.models.column.native, as its forward and its adjoint run them:
the forward without stores, the forward of one backward segment with stores (each stage's
rates and slopes), the adjoint over that segment, and the weight gradient from the stores
(per-column 8 x 8 blocks plus the off-block entries of the connection masks, as in training),
each summed over the trial's segments. docs/profiling.md quotes one run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402

from colenv.models.column import native  # noqa: E402
from colenv.models.column.integrators import _filter_weights  # noqa: E402
from tests.benchmarks import test_bench_solvers as B  # noqa: E402


def fastest(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--segment", type=int, default=native.SEGMENT)
    args = ap.parse_args(argv)
    if not native.available():
        raise SystemExit(f"native kernel unavailable: {native.unavailable_reason()}")
    torch.set_num_threads(1)
    batch, seg, h = args.batch, args.segment, 0.5e-3
    net, stim, t, y0 = B.workload("parity", batch)
    with torch.no_grad():
        dyn = net.prepare(stim)
    n_int, P, n_sub = t.shape[0] - 1, net.n_pop, 2
    lib = native._lib_or_raise()
    fw = _filter_weights(dyn.c["tau_s"], h)
    call = native._Call(dyn.drive[:n_int], dyn.w_t, dyn.kappa, dyn.c, n_sub, h, fw, 1)
    bt = native.tile_width(batch)
    n_tiles = -(-batch // bt)
    ps, ss, gdvs = (torch.empty(n_tiles, P, seg * n_sub * 4 * bt) for _ in range(3))
    scratch = torch.empty(seg + 1, batch, 3 * P)
    states = torch.empty(n_int + 1, batch, 3 * P)
    y = y0.contiguous()
    row_ptr_s, col_s, val_s = call.by_source()
    g_states = torch.randn(n_int + 1, batch, 3 * P, generator=torch.Generator().manual_seed(0))
    adj, g_drive = torch.zeros(batch, 3 * P), torch.zeros(n_int, batch, P)
    segments = [(k0, min(k0 + seg, n_int)) for k0 in range(0, n_int, seg)]

    def forward():
        call.call(lib.colenv_rk4exp_forward, call.problem(y, 0, n_int, states))

    def forward_stores():
        for k0, k1 in segments:
            call.call(lib.colenv_rk4exp_forward, call.problem(y, k0, k1, scratch, ps=ps, ss=ss))

    def adjoint():
        for k0, k1 in segments:
            prob = call.problem(
                y, k0, k1, scratch, ss=ss, row_ptr_s=row_ptr_s, col_s=col_s, val_s=val_s,
                g_states=g_states[k0 + 1], adj=adj, gdvs=gdvs, g_drive=g_drive[k0],
            )  # fmt: skip
            call.call(lib.colenv_rk4exp_backward, prob)

    plan = call.weight_grad_plan(dyn.w_pattern_t)  # the connection masks, as in training

    def weight_gradient():
        weight = native._WeightGrad(P, plan)
        for _ in segments:
            for t in range(n_tiles):
                weight.add(ps[t], gdvs[t])
        weight.result()

    print(f"parity, batch {batch}, 1 s trial, rk4exp 0.5 ms, segments of {seg} intervals\n")
    print("| piece | time (ms) |\n|---|---:|")
    total = 0.0
    for name, fn in [
        ("forward (no stores): the forward pass", forward),
        ("forward with stores, every segment (backward recomputes)", forward_stores),
        ("adjoint recursion, every segment", adjoint),
        ("weight gradient: stores products on the masks, every segment", weight_gradient),
    ]:
        sec = fastest(fn)
        total += sec
        print(f"| {name} | {1e3 * sec:.1f} |", flush=True)
    print(f"| sum | {1e3 * total:.1f} |")


if __name__ == "__main__":
    main()
