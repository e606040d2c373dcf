"""A native (C) rk4exp forward for evaluation rollouts on CPU: ``rk4exp.c`` beside this file.

The torch fast path spends its batch-256 time on a dense [P, P] product and on element-wise
kernels (docs/profiling.md). The C kernel does the same scheme with the weight product over
W's nonzeros only and the batch innermost, so every update is a vector operation over a tile
of trials that stays in cache. It has no backward: :func:`colenv.fast.fast_rollout` uses it
for float32 CPU rollouts that need no gradient (evaluation, inference, the batch-256 row of
the benchmark table) and keeps the compiled torch path for training.

Built on first use with the system C compiler (``$CC``, else ``cc``; ``-O3 -march=native``,
no ``-ffast-math``), cached per source, compiler and CPU in ``$COLENV_CACHE_DIR`` (default
``~/.cache/colenv``); written to a temporary name and renamed, so concurrent builds do not
clash. Where no compiler works, :func:`available` is False (the reason in
:func:`unavailable_reason`) and callers use the torch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("rk4exp.c")
HEADERS = (Path(__file__).with_name("rk4exp_tile.h"),)
FLAGS = (
    "-O3",
    "-march=native",
    "-std=c11",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-fPIC",
    "-shared",
    "-pthread",
)

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: str | None = None


class _Problem(ctypes.Structure):
    _fields_ = [
        ("B", ctypes.c_int32),
        ("P", ctypes.c_int32),
        ("n_int", ctypes.c_int32),
        ("n_sub", ctypes.c_int32),
        ("n_threads", ctypes.c_int32),
        ("y0", ctypes.c_void_p),
        ("drive", ctypes.c_void_p),
        ("row_ptr", ctypes.c_void_p),
        ("col", ctypes.c_void_p),
        ("val", ctypes.c_void_p),
        ("kappa", ctypes.c_void_p),
        *(
            (name, ctypes.c_float)
            for name in (
                "h",
                "da",
                "db",
                "inv_d",
                "inv_tau_m",
                "inv_tau_a",
                "e_r",
                "w0",
                "wm",
                "w1",
                "max_rate",
            )
        ),
        ("out", ctypes.c_void_p),
    ]


def _cpu_tag() -> str:
    """What -march=native depends on: the CPU model and flags (Linux), else the platform."""
    try:
        with open("/proc/cpuinfo") as fh:
            lines = [ln for ln in fh if ln.startswith(("model name", "flags"))][:2]
        return "".join(lines)
    except OSError:
        return platform.processor() + platform.machine()


def _compiler() -> list[str]:
    return shlex.split(os.environ.get("CC", "cc"))


def cache_dir() -> Path:
    return Path(os.environ.get("COLENV_CACHE_DIR", Path.home() / ".cache" / "colenv"))


def _build() -> ctypes.CDLL:
    cc = _compiler()
    version = subprocess.run([*cc, "--version"], capture_output=True, text=True, check=True)
    src = SOURCE.read_bytes() + b"".join(h.read_bytes() for h in HEADERS)
    key = hashlib.sha256(
        src + " ".join(FLAGS).encode() + version.stdout.encode() + _cpu_tag().encode()
    ).hexdigest()[:16]
    lib_path = cache_dir() / f"rk4exp-{key}.so"
    if not lib_path.exists():
        lib_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=lib_path.parent)
        os.close(fd)
        try:
            out = subprocess.run(
                [*cc, *FLAGS, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True
            )
            if out.returncode:
                raise RuntimeError(f"{' '.join(cc)} failed: {out.stderr.strip()[-1000:]}")
            os.replace(tmp, lib_path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    lib = ctypes.CDLL(str(lib_path))
    lib.colenv_rk4exp_forward.argtypes = [ctypes.POINTER(_Problem)]
    lib.colenv_rk4exp_forward.restype = ctypes.c_int
    return lib


def _load() -> ctypes.CDLL | None:
    global _lib, _error
    with _lock:
        if _lib is None and _error is None:
            if os.environ.get("COLENV_NATIVE", "1") == "0":
                _error = "disabled by COLENV_NATIVE=0"
            else:
                try:
                    _lib = _build()
                except (OSError, RuntimeError, subprocess.SubprocessError) as err:
                    _error = f"{type(err).__name__}: {err}"
        return _lib


def available() -> bool:
    """True when the C kernel is built (or builds now) and loads."""
    return _load() is not None


def unavailable_reason() -> str | None:
    """Why :func:`available` is False (None while it is True)."""
    _load()
    return _error


def supports(y0: torch.Tensor, w_t: torch.Tensor, drive: torch.Tensor, kappa: torch.Tensor) -> bool:
    """Whether these tensors can take the native path (float32 CPU, no gradient)."""
    tensors = (y0, w_t, drive, kappa)
    return all(x.device.type == "cpu" and x.dtype == torch.float32 for x in tensors) and not (
        torch.is_grad_enabled() and any(x.requires_grad for x in tensors)
    )


def sparse_by_target(w_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CSR of the nonzeros of w_t [P source, P target] grouped by target:
    (row_ptr [P + 1] int32, source [nnz] int32, weight [nnz] float32)."""
    w = w_t.detach().t()  # [target, source]
    target, source = torch.nonzero(w, as_tuple=True)
    counts = torch.bincount(target, minlength=w.shape[0])
    row_ptr = torch.zeros(w.shape[0] + 1, dtype=torch.int32)
    row_ptr[1:] = torch.cumsum(counts, 0)
    return row_ptr, source.to(torch.int32).contiguous(), w[target, source].contiguous()


def rk4exp_forward(
    y0: torch.Tensor,
    drive: torch.Tensor,
    w_t: torch.Tensor,
    kappa: torch.Tensor,
    c: dict,
    n_points: int,
    n_sub: int,
    h: float,
    filter_weights: tuple[float, float, float],
    n_threads: int | None = None,
) -> torch.Tensor:
    """States [n_points, B, 3P] of rk4exp from y0 [B, 3P] under drive [>= n_points - 1, B, P].

    The scheme of :func:`colenv.fast.fast_rollout` (method "rk4exp", no noise), computed by the
    C kernel; ``n_threads`` defaults to ``torch.get_num_threads()``. Raises RuntimeError when
    the kernel is unavailable (check :func:`available` first).
    """
    lib = _load()
    if lib is None:
        raise RuntimeError(f"the native rk4exp kernel is unavailable: {_error}")
    B, S = y0.shape
    P = S // 3
    n_int = n_points - 1
    if drive.shape[0] < n_int or tuple(drive.shape[1:]) != (B, P):
        raise ValueError(
            f"drive must be [>= {n_int}, {B}, {P}] for y0 {tuple(y0.shape)}, "
            f"got {tuple(drive.shape)}"
        )
    y0c = y0.detach().contiguous()
    drv = drive.detach()[:n_int].contiguous()
    kap = kappa.detach().contiguous()
    row_ptr, col, val = sparse_by_target(w_t)
    out = torch.empty(n_points, B, S, dtype=torch.float32)
    w0, wm, w1 = filter_weights
    import math

    prob = _Problem(
        B=B,
        P=P,
        n_int=n_int,
        n_sub=n_sub,
        n_threads=n_threads or torch.get_num_threads(),
        y0=y0c.data_ptr(),
        drive=drv.data_ptr(),
        row_ptr=row_ptr.data_ptr(),
        col=col.data_ptr(),
        val=val.data_ptr(),
        kappa=kap.data_ptr(),
        h=h,
        da=c["da"],
        db=c["db"],
        inv_d=1.0 / c["d"],
        inv_tau_m=1.0 / c["tau_m"],
        inv_tau_a=1.0 / c["tau_a"],
        e_r=math.exp(-h / c["tau_s"]),
        w0=w0,
        wm=wm,
        w1=w1,
        max_rate=c.get("max_rate", 0.0),
        out=out.data_ptr(),
    )
    status = lib.colenv_rk4exp_forward(ctypes.byref(prob))
    if status:
        raise MemoryError(f"native rk4exp kernel failed (status {status}: out of memory)")
    return out
