"""The native (C) rk4exp kernel for CPU: ``rk4exp.c``, ``rk4exp_tile.h`` and ``column_rate.h`` (the
transfer function it shares with ``ros2.c``) beside this file.

The torch fast path spends its time on per-op overheads, a dense [P, P] product and
element-wise kernels (docs/profiling.md). The C kernel does the same scheme and the same
discrete adjoint with the weight product over W's structure only (each column's dense 8 x 8
block, then the few other nonzeros) and the trials in vector lanes, so every update is a vector
operation over a tile of trials that stays in cache.
:func:`colenv.models.column.integrators.fast_rollout` runs float32 CPU rk4exp rollouts on it
by default (``kernel="auto"``), ODE and SDE, with or without a gradient for y0, the drive and
the weights (:func:`rk4exp_rollout`; a kappa gradient takes the torch path). SDE rollouts pass
their noise increments (drawn in torch, :func:`colenv.models.column.integrators.
noise_increments`) as an input: each step is followed by its increment on v, and the gradient
is pathwise (the increments are constants of the rollout).

Gated networks (the slow gating synapse, ``model.network.gating``; ColumnTerms' ``w_slow_t``,
``gate_tau``, ``gate_gamma``) run on it too: the state is [v, a, r, S] (4P), every RK4 stage
adds (S / (gamma tau_S)) @ w_slow_t to dv and integrates dS = gamma (1 - S) phi - S / tau_S
with the same stages, and the adjoint carries S and gives w_slow_t's gradient. The gated code
is a separate compiled variant of each tile function: an ungated rollout runs exactly the
instructions it ran before gating existed (same states and gradients, bit for bit).

exprb2 (:mod:`colenv.models.column.exprb`, exponential Rosenbrock-Euler with the onset
restart) has its forward and discrete adjoint in ``exprb2.c``, compiled into the same library:
:func:`exprb2_forward`, :func:`exprb2_rollout` (gradients for y0, drive, w_t, kappa and
w_slow_t), one trial per thread at a time, float32, ODE or SDE, gated or not.

Built on first use with the system C compiler (``$CC``, else ``cc``; ``-O3 -march=native``,
fused multiply-adds, no ``-ffast-math``), cached per source, compiler and CPU in
``$COLENV_CACHE_DIR`` (default ``~/.cache/colenv``); the build says so in one line on stderr.
The cache fails safe: the library is compiled to a temporary name and renamed into place, and
its size and sha256 are then recorded beside it (``rk4exp-<key>.so.sha256``, also written
atomically); a library that does not match its record (truncated, damaged, or from before the
record) is rebuilt, never loaded. A cache folder that cannot be written, or that other users
can write (its library would run as our code), is passed over for a private temporary folder
(``$TMPDIR/colenv-<uid>``, mode 0700). Where no compiler works or neither folder can be used,
:func:`available` is False (the reason in :func:`unavailable_reason`), callers use the torch
path, and one :class:`NativeKernelWarning` per process says why, what it costs and how to fix
it; with ``COLENV_NATIVE=0`` in the environment the kernel is off without a warning.

The entry points (:func:`rk4exp_forward`, :func:`rk4exp_rollout`) hand raw memory to C, so they
check every tensor first: float32, on the CPU, contiguous where C reads it directly (y0, drive,
kappa; w_t is repacked in Python and may be any layout), and the shapes below; a ValueError
names the argument, what it got and what is allowed.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("rk4exp.c")
HEADERS = (Path(__file__).with_name("rk4exp_tile.h"), Path(__file__).with_name("column_rate.h"))
# compiled into the same library: ROS2's forward (colenv.models.column.rosenbrock)
# exprb2.c: EXPRB2's forward and adjoint (colenv.models.column.exprb; exprb2_rollout below)
EXTRA_SOURCES = (Path(__file__).with_name("ros2.c"), Path(__file__).with_name("exprb2.c"))
FLAGS = (
    "-O3",
    "-march=native",
    "-std=c11",
    "-ffp-contract=fast",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-fPIC",
    "-shared",
    "-pthread",
)

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_lib_path: Path | None = None
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
        ("ps", ctypes.c_void_p),
        ("ss", ctypes.c_void_p),
        ("row_ptr_s", ctypes.c_void_p),
        ("col_s", ctypes.c_void_p),
        ("val_s", ctypes.c_void_p),
        ("g_states", ctypes.c_void_p),
        ("adj", ctypes.c_void_p),
        ("gdvs", ctypes.c_void_p),
        ("g_drive", ctypes.c_void_p),
        ("n_blk", ctypes.c_int32),
        ("blk", ctypes.c_void_p),
        ("blk_s", ctypes.c_void_p),
        ("noise", ctypes.c_void_p),
        ("gated", ctypes.c_int32),
        ("inv_tau_g", ctypes.c_float),
        ("gamma", ctypes.c_float),
        ("inv_g", ctypes.c_float),
        ("row_ptr_g", ctypes.c_void_p),
        ("col_g", ctypes.c_void_p),
        ("val_g", ctypes.c_void_p),
        ("row_ptr_gs", ctypes.c_void_p),
        ("col_gs", ctypes.c_void_p),
        ("val_gs", ctypes.c_void_p),
        ("sgs", ctypes.c_void_p),
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
    """Where the built kernel is cached: ``$COLENV_CACHE_DIR``, else ``~/.cache/colenv``."""
    return Path(os.environ.get("COLENV_CACHE_DIR", Path.home() / ".cache" / "colenv"))


def _fallback_dir() -> Path:
    """The private temporary folder tried when :func:`cache_dir` cannot be written."""
    uid = os.getuid() if hasattr(os, "getuid") else os.getpid()
    return Path(tempfile.gettempdir()) / f"colenv-{uid}"


class NativeKernelWarning(UserWarning):
    """The native kernel cannot be built or loaded here; rk4exp runs on the torch path."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _record(lib: Path) -> Path:
    """The sidecar of a built library: its size and sha256, written after a successful build."""
    return lib.with_name(lib.name + ".sha256")


def _verified(lib: Path) -> bool:
    """Whether ``lib`` is complete: its size and sha256 are those its build recorded (a
    truncated or damaged library must never be dlopen'ed: that is a bus error, not an
    exception)."""
    try:
        size, digest = _record(lib).read_text().split()
        return lib.stat().st_size == int(size) and _sha256(lib) == digest
    except (OSError, ValueError):
        return False


def _private(folder: Path) -> None:
    """OSError unless ``folder`` exists (created 0700) and only this user can write to it:
    the library loaded from it runs as our code."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = folder.stat()
    if hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & 0o022):
        raise PermissionError(
            f"{folder} is writable by other users or not ours (mode {oct(st.st_mode & 0o777)}); "
            "a library loaded from it would run their code"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{folder} is not writable")


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _compile(cc: list[str], lib_path: Path) -> None:
    """Build the library into a temporary file beside ``lib_path``, then rename it into place
    and record its size and hash (each step atomic: a reader sees no library, or a complete
    one)."""
    print(
        f"colenv: building the native rk4exp kernel (once per machine and compiler, "
        f"about 15 s) in {lib_path.parent}",
        file=sys.stderr,
        flush=True,
    )
    fd, tmp = tempfile.mkstemp(prefix=lib_path.name + ".", suffix=".tmp", dir=lib_path.parent)
    os.close(fd)
    try:
        cmd = [*cc, *FLAGS, "-o", tmp, str(SOURCE), *map(str, EXTRA_SOURCES), "-lm"]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"{' '.join(cc)} failed: {out.stderr.strip()[-1000:]}")
        record = f"{os.path.getsize(tmp)} {_sha256(Path(tmp))}\n".encode()
        os.replace(tmp, lib_path)
        _atomic_write(_record(lib_path), record)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _open(lib_path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(lib_path))
    for fn in (lib.colenv_rk4exp_forward, lib.colenv_rk4exp_backward):
        fn.argtypes = [ctypes.POINTER(_Problem)]
        fn.restype = ctypes.c_int
    for fn in (lib.colenv_exprb2_forward, lib.colenv_exprb2_backward):
        fn.argtypes = [ctypes.POINTER(_Exprb2Problem)]
        fn.restype = ctypes.c_int
    lib.colenv_exprb2_rate.argtypes = [ctypes.c_int32, ctypes.c_void_p, *[ctypes.c_float] * 4,
                                       *[ctypes.c_void_p] * 3]  # fmt: skip
    lib.colenv_exprb2_rate.restype = None
    return lib


def _build() -> ctypes.CDLL:
    """Load the cached library, (re)building it where it is missing or damaged; in
    :func:`cache_dir`, else in a private temporary folder. Raises RuntimeError saying why
    neither works."""
    cc = _compiler()
    try:
        version = subprocess.run(
            [*cc, "--version"], capture_output=True, text=True, check=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError) as err:
        raise RuntimeError(f"no working C compiler ({' '.join(cc) or '$CC'}: {err})") from err
    src = SOURCE.read_bytes() + b"".join(h.read_bytes() for h in (*HEADERS, *EXTRA_SOURCES))
    key = hashlib.sha256(
        src + " ".join(FLAGS).encode() + version.stdout.encode() + _cpu_tag().encode()
    ).hexdigest()[:16]
    problems = []
    for folder in dict.fromkeys((cache_dir(), _fallback_dir())):
        lib_path = folder / f"rk4exp-{key}.so"
        try:
            _private(folder)
            if not _verified(lib_path):
                _compile(cc, lib_path)
            lib = _open(lib_path)
            global _lib_path
            _lib_path = lib_path
            return lib
        except OSError as err:
            problems.append(f"{folder}: {err}")
    raise RuntimeError("cannot build or cache it in " + "; ".join(problems))


def _load() -> ctypes.CDLL | None:
    global _lib, _error
    warn = None
    with _lock:
        if _lib is None and _error is None:
            if os.environ.get("COLENV_NATIVE", "1") == "0":
                _error = "disabled by COLENV_NATIVE=0"
            else:
                try:
                    _lib = _build()
                except (OSError, RuntimeError, subprocess.SubprocessError) as err:
                    _error = f"{type(err).__name__}: {err}"
                    warn = _error
    if warn is not None:  # once per process: the outcome is kept in _lib / _error
        warnings.warn(
            f"colenv: the native rk4exp kernel is unavailable ({warn}). rk4exp on CPU runs on "
            "the torch path instead, about 15x slower for training. To fix: install a C "
            "compiler (or set CC to one), and set COLENV_CACHE_DIR to a folder only you can "
            "write; COLENV_NATIVE=0 silences this.",
            NativeKernelWarning,
            stacklevel=2,
        )
    return _lib


def library_path() -> Path | None:
    """The file the kernel was loaded from (None where it is not loaded)."""
    _load()
    return _lib_path


def available() -> bool:
    """True when the C kernel is built (or builds now) and loads."""
    return _load() is not None


def unavailable_reason() -> str | None:
    """Why :func:`available` is False (None while it is True)."""
    _load()
    return _error


def supports(
    y0: torch.Tensor,
    w_t: torch.Tensor,
    drive: torch.Tensor,
    kappa: torch.Tensor,
    w_slow_t: torch.Tensor | None = None,
    method: str = "rk4exp",
) -> bool:
    """Whether these tensors can take ``method``'s native path: float32 on CPU; for rk4exp
    also no gradient for kappa (its adjoint covers y0, drive, w_t and w_slow_t, like
    colenv.models.column.integrators's discrete adjoint; exprb2's covers kappa too)."""
    tensors = (y0, w_t, drive, kappa) + (() if w_slow_t is None else (w_slow_t,))
    kappa_grad = method != "exprb2" and torch.is_grad_enabled() and kappa.requires_grad
    cpu_f32 = all(x.device.type == "cpu" and x.dtype == torch.float32 for x in tensors)
    return cpu_f32 and not kappa_grad


def sparse_by_target(w_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CSR of the nonzeros of w_t [P source, P target] grouped by target:
    (row_ptr [P + 1] int32, source [nnz] int32, weight [nnz] float32)."""
    return _csr(w_t.detach().t())


def sparse_by_source(w_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same grouped by source: (row_ptr, target, weight), for the adjoint's W^T product."""
    return _csr(w_t.detach())


def _csr(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    row, col = torch.nonzero(w, as_tuple=True)
    counts = torch.bincount(row, minlength=w.shape[0])
    row_ptr = torch.zeros(w.shape[0] + 1, dtype=torch.int32)
    row_ptr[1:] = torch.cumsum(counts, 0)
    return row_ptr, col.to(torch.int32).contiguous(), w[row, col].contiguous()


BLOCK = 8  # populations per column: the kernel's dense diagonal blocks of W (rk4exp.c)


def column_blocks(w_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """W's diagonal BLOCK x BLOCK blocks (within-column connectivity, dense in the Potjans &
    Diesmann circuit) for the kernel's dense per-column product, or None where P is not a
    multiple of BLOCK (the kernel then runs the CSR of all nonzeros):
    (blocks [n, BLOCK target, BLOCK source], blocks by source [n, BLOCK source, BLOCK target],
    w_t with the blocks zeroed, whose nonzeros go to the CSRs)."""
    P = w_t.shape[0]
    if BLOCK <= 0 or P % BLOCK:
        return None
    n = P // BLOCK
    idx = torch.arange(n, device=w_t.device)
    by_source = w_t.reshape(n, BLOCK, n, BLOCK)[idx, :, idx, :].contiguous()
    rest = w_t.masked_fill(_inside_blocks(P, BLOCK).to(w_t.device), 0.0)
    return by_source.transpose(1, 2).contiguous(), by_source, rest


@functools.lru_cache(maxsize=8)
def _inside_blocks(P: int, block: int) -> torch.Tensor:
    """[P, P] bool: True on the diagonal block x block blocks (shared: do not modify)."""
    return torch.block_diag(*[torch.ones(block, block, dtype=torch.bool)] * (P // block))


def tile_width(batch: int) -> int:
    """Trials per tile (rk4exp.c's tile_width): 1, 8, else 16."""
    return 1 if batch <= 1 else 8 if batch <= 8 else 16


class _Gate:
    """The slow gating synapse of one rollout: w_slow_t's nonzeros as CSRs by target (forward)
    and by source (the adjoint), and its constants."""

    def __init__(self, w_slow_t: torch.Tensor, tau: float, gamma: float):
        self.w_slow_t = w_slow_t.detach()
        self.by_target = sparse_by_target(self.w_slow_t)
        self.by_source = sparse_by_source(self.w_slow_t)
        self.tau, self.gamma = float(tau), float(gamma)
        self.inv_g = 1.0 / (self.gamma * self.tau)

    def fields(self) -> dict:
        (rp, col, val), (rps, cols, vals) = self.by_target, self.by_source
        return dict(
            gated=1, inv_tau_g=1.0 / self.tau, gamma=self.gamma, inv_g=self.inv_g,
            row_ptr_g=rp.data_ptr(), col_g=col.data_ptr(), val_g=val.data_ptr(),
            row_ptr_gs=rps.data_ptr(), col_gs=cols.data_ptr(), val_gs=vals.data_ptr(),
        )  # fmt: skip


class _Call:
    """The arguments shared by every kernel call of one rollout (tensors kept alive here)."""

    def __init__(
        self, drive, w_t, kappa, c, n_sub, h, filter_weights, n_threads, noise=None, gate=None
    ):
        self.drive = drive.detach().contiguous()
        self.noise = None if noise is None else noise.detach().contiguous()
        self.kappa = kappa.detach().contiguous()
        self.w_t = w_t.detach()
        self.blocks = column_blocks(self.w_t)
        self.w_off = self.w_t if self.blocks is None else self.blocks[2]
        self.by_target = sparse_by_target(self.w_off)
        self._by_source = None
        self.n_sub, self.h, self.c = n_sub, h, c
        self.fw = filter_weights
        self.n_threads = n_threads or torch.get_num_threads()
        self.B, self.P = self.drive.shape[1], self.drive.shape[2]
        self.gate: _Gate | None = gate
        self.width = (3 if gate is None else 4) * self.P  # state size: [v, a, r(, S)]

    def by_source(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """W's CSR by source (the adjoint's W^T product; entries outside the column blocks
        where there are blocks), built on first use."""
        if self._by_source is None:
            self._by_source = sparse_by_source(self.w_off)
        return self._by_source

    def weight_grad_plan(self, pattern: torch.Tensor | None, name="grad_pattern") -> tuple | None:
        """How the adjoint forms w_t's gradient from the stores. None: one dense [P, P] product
        per tile and segment. Given the entries whose gradient is used (pattern [P source, P
        target] bool, e.g. the network's connection masks) and column blocks: each block's 8 x 8
        product, plus one product over only the sources and targets of the pattern's entries
        outside the blocks (on the parity network 12 sources x 22 targets instead of 104 x 104);
        the gradient is then exact on the pattern and zero outside it.
        Returns (sources, targets, their [sources, targets] mask of off-block pattern entries,
        pattern)."""
        if pattern is None or self.blocks is None:
            return None
        P = self.P
        if tuple(pattern.shape) != (P, P) or pattern.dtype != torch.bool:
            raise ValueError(f"{name} must be a [{P}, {P}] bool tensor, got "
                             f"{tuple(pattern.shape)} {pattern.dtype}")  # fmt: skip
        off = pattern.cpu() & ~_inside_blocks(P, BLOCK)
        sources = off.any(1).nonzero().flatten()
        targets = off.any(0).nonzero().flatten()
        return sources, targets, off[sources][:, targets], pattern.cpu()

    def problem(self, y0, k0, k1, out, **ptrs) -> _Problem:
        """The C struct for intervals [k0, k1) from the states y0 [B, 3P] ([B, 4P] gated)."""
        c, (row_ptr, col, val) = self.c, self.by_target
        w0, wm, w1 = self.fw
        prob = _Problem(
            B=self.B,
            P=self.P,
            n_int=k1 - k0,
            n_sub=self.n_sub,
            n_threads=self.n_threads,
            y0=y0.data_ptr(),
            drive=self.drive[k0].data_ptr() if k1 > k0 else self.drive.data_ptr(),
            row_ptr=row_ptr.data_ptr(),
            col=col.data_ptr(),
            val=val.data_ptr(),
            kappa=self.kappa.data_ptr(),
            h=self.h,
            da=c["da"],
            db=c["db"],
            inv_d=1.0 / c["d"],
            inv_tau_m=1.0 / c["tau_m"],
            inv_tau_a=1.0 / c["tau_a"],
            e_r=math.exp(-self.h / c["tau_s"]),
            w0=w0,
            wm=wm,
            w1=w1,
            max_rate=c.get("max_rate", 0.0),
            out=out.data_ptr(),
        )
        if self.noise is not None and k1 > k0:
            prob.noise = self.noise[k0].data_ptr()
        if self.blocks is not None:
            prob.n_blk = self.P // BLOCK
            prob.blk = self.blocks[0].data_ptr()
            prob.blk_s = self.blocks[1].data_ptr()
        if self.gate is not None:
            for name, x in self.gate.fields().items():
                setattr(prob, name, x)
        for name, x in ptrs.items():
            setattr(prob, name, x.data_ptr())
        return prob

    def call(self, fn, prob: _Problem) -> None:
        if fn(ctypes.byref(prob)):
            raise MemoryError("native rk4exp kernel: out of memory for its scratch arrays")

    def states(self, y0: torch.Tensor) -> torch.Tensor:
        """The states [n_int + 1, B, 3P] of the whole trial from y0 [B, 3P] (no stores; 4P
        gated)."""
        n_int = self.drive.shape[0]
        out = torch.empty(n_int + 1, *y0.shape, dtype=torch.float32)
        y0d = y0.detach()
        self.call(_lib_or_raise().colenv_rk4exp_forward, self.problem(y0d, 0, n_int, out))
        return out


def _prepare(
    y0, drive, w_t, kappa, c, n_points, n_sub, h, filter_weights, n_threads, noise=None, gate=None
) -> _Call:
    """The checked call object for one rollout of n_points grid points; ``gate``: None or
    (w_slow_t, gate_tau, gate_gamma)."""
    _check(y0, drive, w_t, kappa, c, n_points, n_sub, h, filter_weights, n_threads, noise, gate)
    _lib_or_raise()
    n_int = n_points - 1
    noise = None if noise is None else noise[:n_int]
    g = None if gate is None else _Gate(*gate)
    return _Call(drive[:n_int], w_t, kappa, c, n_sub, h, filter_weights, n_threads, noise, g)


_CONSTANTS = ("tau_m", "tau_a", "tau_s", "da", "db", "d")


def _check_tensor(name: str, x, shape: tuple | None, contiguous: bool = True) -> None:
    """ValueError naming ``name`` unless x is a float32 CPU tensor of ``shape`` (None entries:
    any size), contiguous if C reads its memory directly."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise ValueError(
            f"{name} must be float32 (the kernel computes in float32), got {x.dtype}; "
            "convert with .float() or run the torch path (solver.fast.kernel = 'torch')"
        )
    if x.device.type != "cpu":
        raise ValueError(
            f"{name} must be on the CPU (the kernel is CPU code), got {x.device}; on a GPU "
            "run the torch path (solver.fast.kernel = 'torch' or 'auto')"
        )
    if shape is not None and (
        x.dim() != len(shape)
        or any(s is not None and s != n for s, n in zip(shape, x.shape, strict=True))
    ):
        want = ", ".join("*" if s is None else str(s) for s in shape)
        raise ValueError(f"{name} must be [{want}], got {list(x.shape)}")
    if contiguous and not x.is_contiguous():
        raise ValueError(
            f"{name} must be contiguous (the kernel reads its memory in order), got strides "
            f"{x.stride()} for shape {list(x.shape)}; pass {name}.contiguous()"
        )


def _check(
    y0, drive, w_t, kappa, c, n_points, n_sub, h, filter_weights, n_threads, noise=None, gate=None
) -> None:
    """Every argument of one kernel rollout, before C sees its memory."""
    _check_tensor("y0", y0, (None, None))
    B, S = y0.shape
    n_blocks = 3 if gate is None else 4
    if S % n_blocks:
        what = "v, a and r" if gate is None else "v, a, r and S (w_slow_t given: gating on)"
        raise ValueError(
            f"y0 must be [B, {n_blocks}P] ({what} of P populations), got {list(y0.shape)}"
        )
    P = S // n_blocks
    for name, value, low in (("n_points", n_points, 2), ("n_sub", n_sub, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    n_int = n_points - 1
    _check_tensor("drive", drive, (None, B, P))
    if drive.shape[0] < n_int:
        raise ValueError(
            f"drive must be [>= {n_int}, {B}, {P}] for y0 {list(y0.shape)} and n_points "
            f"{n_points}, got {list(drive.shape)}"
        )
    _check_tensor("w_t", w_t, (P, P), contiguous=False)
    _check_tensor("kappa", kappa, (P,))
    missing = [k for k in _CONSTANTS if k not in c]
    if missing:
        raise ValueError(f"c lacks the constants {', '.join(missing)} (ColumnNetwork.constants())")
    if not (isinstance(h, int | float) and math.isfinite(h) and h > 0):
        raise ValueError(f"h must be a step > 0 in seconds, got {h!r}")
    if len(filter_weights) != 3:
        raise ValueError(f"filter_weights must be 3 floats (w0, wm, w1), got {filter_weights!r}")
    if n_threads is not None and (not isinstance(n_threads, int) or n_threads < 1):
        raise ValueError(f"n_threads must be None or an integer >= 1, got {n_threads!r}")
    if noise is not None:
        _check_tensor("noise", noise, (None, n_sub, B, P))
        if noise.shape[0] < n_int:
            raise ValueError(
                f"noise must be [>= {n_int}, {n_sub}, {B}, {P}] (n_points - 1, n_sub, B, P), "
                f"got {list(noise.shape)}"
            )
    if gate is not None:
        w_slow_t, tau, gamma = gate
        _check_tensor("w_slow_t", w_slow_t, (P, P), contiguous=False)
        for name, value in (("gate_tau", tau), ("gate_gamma", gamma)):
            if isinstance(value, bool) or not (
                isinstance(value, int | float) and math.isfinite(value) and value > 0
            ):
                raise ValueError(
                    f"{name} must be a finite number > 0 with w_slow_t given, got {value!r}"
                )


def _gate_args(w_slow_t, gate_tau, gate_gamma) -> tuple | None:
    """None (gating off) or (w_slow_t, gate_tau, gate_gamma)."""
    if w_slow_t is None:
        if gate_tau is not None or gate_gamma is not None:
            raise ValueError("gate_tau and gate_gamma apply with w_slow_t only (gating on)")
        return None
    return w_slow_t, gate_tau, gate_gamma


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
    noise: torch.Tensor | None = None,
    *,
    w_slow_t: torch.Tensor | None = None,
    gate_tau: float | None = None,
    gate_gamma: float | None = None,
) -> torch.Tensor:
    """States [n_points, B, 3P] of rk4exp from y0 [B, 3P] under drive [>= n_points - 1, B, P],
    no gradient.

    The scheme of :func:`colenv.models.column.integrators.fast_rollout` (method "rk4exp"),
    computed by the C kernel; with ``noise`` [>= n_points - 1, n_sub, B, P] (the SDE's
    increments, :func:`colenv.models.column.integrators.noise_increments`) step i of interval
    k is followed by v += noise[k, i]. w_t [P source, P target] and kappa [P] as in
    :class:`colenv.models.column.network.ColumnTerms`, ``c`` its constants, ``h`` the step (s),
    ``n_sub`` steps per grid interval, ``filter_weights`` (w0, wm, w1) of the r filter
    (:func:`colenv.models.column.integrators._filter_weights`); ``n_threads`` defaults to
    ``torch.get_num_threads()``.

    Slow gating synapse (ColumnTerms' fields of the same names): with ``w_slow_t`` [P source,
    P target] (the gated entries; any layout) the state is [v, a, r, S] (y0 [B, 4P], states
    [n_points, B, 4P]) and every RK4 stage adds (S inv_g) @ w_slow_t to dv, inv_g =
    1 / (gate_gamma gate_tau), with dS = gate_gamma (1 - S) phi - S / gate_tau integrated by
    the same RK4 stages as v and a (``gate_tau`` in s, ``gate_gamma`` per Hz per s). Without
    it nothing of the gating is computed.

    Raises:
        ValueError: a tensor is not float32, not on the CPU, not contiguous (y0, drive, kappa)
            or of the wrong shape, or a number is out of range; the message names it.
        RuntimeError: the kernel is unavailable (check :func:`available` first).
    """
    gate = _gate_args(w_slow_t, gate_tau, gate_gamma)
    args = (y0, drive, w_t, kappa, c, n_points, n_sub, h, filter_weights, n_threads, noise, gate)
    return _prepare(*args).states(y0)


SEGMENT = 25  # grid intervals recomputed per backward segment (stores of one segment only)


class _Adjoint(torch.autograd.Function):
    """rk4exp on the native kernel with its discrete adjoint (the same gradient as
    colenv.models.column.integrators._Rk4expAdjoint, to float rounding).

    Forward keeps only the states it returns. Backward walks the trial in segments of
    ``segment`` intervals from the end: it recomputes a segment from its saved start state with
    stores (each stage's rates and slopes, and S gated, bit-identical to the forward), runs the
    adjoint recursion over it and adds the segment's weight gradients as products of the
    stores. The stores of one segment are all the extra memory, so memory is flat in trial
    length.
    """

    @staticmethod
    def forward(ctx, y0, drive, w_t, kappa, w_slow_t, call: _Call, segment: int, plans):
        states = call.states(y0)
        ctx.call, ctx.segment, ctx.drive_shape, ctx.plans = call, segment, drive.shape, plans
        ctx.save_for_backward(states)
        return states

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_states):
        lib = _lib_or_raise()
        (states,) = ctx.saved_tensors
        call, seg = ctx.call, ctx.segment
        gated = call.gate is not None
        B, P, n_int = call.B, call.P, states.shape[0] - 1
        g_states = g_states.contiguous()
        bt = tile_width(B)
        n_tiles = -(-B // bt)
        size = n_tiles * P * seg * call.n_sub * 4 * bt  # stores of one segment
        ps, ss, gdvs = torch.empty(size), torch.empty(size), torch.empty(size)
        sgs = torch.empty(size) if gated else None
        scratch = torch.empty(seg + 1, B, call.width)
        adj = torch.zeros(B, call.width)
        plan, slow_plan = ctx.plans
        weight = _WeightGrad(P, plan) if ctx.needs_input_grad[2] else None
        slow = None
        if gated and ctx.needs_input_grad[4]:
            slow = _WeightGrad(P, slow_plan)
        g_drive = torch.zeros(ctx.drive_shape)
        row_ptr_s, col_s, val_s = call.by_source()
        for k1 in range(n_int, 0, -seg):
            k0 = max(0, k1 - seg)
            n = (k1 - k0) * call.n_sub * 4 * bt  # a store row: one population of one tile
            p_, s_, g_ = (x[: n_tiles * P * n].view(n_tiles, P, n) for x in (ps, ss, gdvs))
            stores = dict(ps=p_, ss=s_)
            if gated:
                stores["sgs"] = sgs[: n_tiles * P * n].view(n_tiles, P, n)
            y0 = states[k0].contiguous()
            fwd = call.problem(y0, k0, k1, scratch, **stores)
            call.call(lib.colenv_rk4exp_forward, fwd)
            if not gated:
                del stores["ps"]  # the ungated adjoint reads the slopes only
            back = call.problem(
                y0, k0, k1, scratch, **stores, row_ptr_s=row_ptr_s, col_s=col_s, val_s=val_s,
                g_states=g_states[k0 + 1], adj=adj, gdvs=g_, g_drive=g_drive[k0],
            )  # fmt: skip
            call.call(lib.colenv_rk4exp_backward, back)
            for t in range(n_tiles):  # the weight gradients of this segment, tile by tile
                if weight is not None:
                    weight.add(p_[t], g_[t])
                if slow is not None:
                    slow.add(stores["sgs"][t], g_[t])
        g_y0 = g_states[0] + adj if ctx.needs_input_grad[0] else None
        g_slow = None
        if slow is not None:  # the slow product's input is S inv_g
            g_slow = slow.result().mul_(call.gate.inv_g)
        return (
            g_y0,
            g_drive if ctx.needs_input_grad[1] else None,
            weight.result() if weight is not None else None,
            None,
            g_slow,
            None,
            None,
            None,
        )


class _WeightGrad:
    """A weight gradient summed over the stores of every tile and segment: the product's inputs
    of each stage (source: the rates ps [P, n] for w_t, the gates S for w_slow_t) times gdvs
    [P, n], the gradient of each stage's dv (target)."""

    def __init__(self, P: int, plan):
        self.plan = plan
        if plan is None:
            self.g = torch.zeros(P, P)
        else:
            sources, targets, _, _ = plan
            self.P, self.n = P, P // BLOCK
            self.g_blocks = torch.zeros(self.n, BLOCK, BLOCK)  # [column, source, target]
            self.g_off = torch.zeros(len(sources), len(targets))

    def add(self, ps: torch.Tensor, gdvs: torch.Tensor) -> None:
        if self.plan is None:
            self.g.addmm_(ps, gdvs.t())
            return
        sources, targets, _, _ = self.plan
        n = ps.shape[1]
        self.g_blocks.baddbmm_(
            ps.view(self.n, BLOCK, n), gdvs.view(self.n, BLOCK, n).transpose(1, 2)
        )
        if len(sources):
            self.g_off.addmm_(ps.index_select(0, sources), gdvs.index_select(0, targets).t())

    def result(self) -> torch.Tensor:
        if self.plan is None:
            return self.g
        sources, targets, off, pattern = self.plan
        g = torch.zeros(self.P, self.P)
        idx = torch.arange(self.n)
        g.view(self.n, BLOCK, self.n, BLOCK)[idx, :, idx, :] = self.g_blocks
        g[sources[:, None], targets[None, :]] += self.g_off * off
        return g * pattern


def rk4exp_rollout(
    y0: torch.Tensor,
    drive: torch.Tensor,
    w_t: torch.Tensor,
    kappa: torch.Tensor,
    c: dict,
    n_points: int,
    n_sub: int,
    h: float,
    filter_weights: tuple[float, float, float],
    *,
    segment: int = SEGMENT,
    n_threads: int | None = None,
    grad_pattern: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    w_slow_t: torch.Tensor | None = None,
    gate_tau: float | None = None,
    gate_gamma: float | None = None,
    slow_grad_pattern: torch.Tensor | None = None,
) -> torch.Tensor:
    """Like :func:`rk4exp_forward`, differentiable in y0, drive, w_t and w_slow_t when they
    need it (the native discrete adjoint, :class:`_Adjoint`; kappa and ``noise`` get no
    gradient: the noise increments are constants of the rollout, so the gradient is pathwise).
    With ``grad_pattern`` ([P source, P target] bool: the entries of w_t whose gradient is used,
    e.g. the transposed :meth:`ColumnNetwork.weight_pattern`), w_t's gradient is formed on it
    only (zero elsewhere; :meth:`_Call.weight_grad_plan`); ``slow_grad_pattern`` does the same
    for w_slow_t (the gated entries, or any superset such as ``grad_pattern``)."""
    if not isinstance(segment, int) or segment < 1:
        raise ValueError(f"segment must be an integer >= 1, got {segment!r}")
    gate = _gate_args(w_slow_t, gate_tau, gate_gamma)
    inputs = (y0, drive, w_t) + (() if w_slow_t is None else (w_slow_t,))
    needs = torch.is_grad_enabled() and any(x.requires_grad for x in inputs)
    if not needs:
        return rk4exp_forward(
            y0, drive, w_t, kappa, c, n_points, n_sub, h, filter_weights, n_threads, noise,
            w_slow_t=w_slow_t, gate_tau=gate_tau, gate_gamma=gate_gamma,
        )  # fmt: skip
    args = (y0, drive, w_t, kappa, c, n_points, n_sub, h, filter_weights, n_threads, noise, gate)
    call = _prepare(*args)
    plan = call.weight_grad_plan(grad_pattern) if w_t.requires_grad else None
    slow_plan = None
    if w_slow_t is not None and w_slow_t.requires_grad:
        slow_plan = call.weight_grad_plan(slow_grad_pattern, "slow_grad_pattern")
    return _Adjoint.apply(y0, drive, w_t, kappa, w_slow_t, call, segment, (plan, slow_plan))


def _lib_or_raise() -> ctypes.CDLL:
    lib = _load()
    if lib is None:
        raise RuntimeError(f"the native rk4exp kernel is unavailable: {_error}")
    return lib


# ---------------------------------------------------------------------------------------------
# EXPRB2 (exprb2.c): exponential Rosenbrock-Euler with the onset restart, forward and adjoint


class _Exprb2Problem(ctypes.Structure):
    _fields_ = [
        *((name, ctypes.c_int32) for name in ("B", "P", "n_int", "n_sub", "refine")),
        ("n_threads", ctypes.c_int32),
        ("gated", ctypes.c_int32),
        *(
            (name, ctypes.c_void_p)
            for name in ("y0", "drive", "w_t", "w_slow_t", "kappa", "noise", "fine", "theta")
        ),
        *(
            (name, ctypes.c_float)
            for name in (
                "h",
                "h_fine",
                "da",
                "db",
                "inv_d",
                "max_rate",
                "inv_tau_m",
                "inv_tau_a",
                "inv_tau_s",
                "inv_tau_g",
                "gamma",
                "inv_g",
                "tol",
            )
        ),
        *(
            (name, ctypes.c_void_p)
            for name in ("out", "states", "g_states", "g_y0", "g_drive", "g_w", "g_ws", "g_kappa")
        ),
        ("grad_pattern", ctypes.c_void_p),
        ("slow_grad_pattern", ctypes.c_void_p),
        ("counts", ctypes.c_void_p),
    ]


EXPRB2_TOL = 2.0**-24  # the series' early-termination tolerance in float32 (the unit roundoff)


def exprb2_theta() -> torch.Tensor:
    """theta_m (m = 1..55) of the float32 Taylor plan, the table the kernel is given:
    :data:`colenv.models.column.exprb.THETA_SINGLE` (the torch path's), as float32."""
    from colenv.models.column import exprb  # exprb uses this module: import when called

    return torch.tensor(exprb.THETA_SINGLE, dtype=torch.float32)


class _Exprb2Call:
    """The checked arguments of one exprb2 rollout (tensors kept alive here) and its C calls."""

    def __init__(self, y0, drive, w_t, kappa, c, n_points, n_sub, h, fine, refine, n_threads,
                 noise, gate):  # fmt: skip
        n_int = n_points - 1
        self.n_int, self.n_sub, self.h, self.refine = n_int, n_sub, float(h), refine
        self.drive = drive[:n_int].detach().contiguous()
        self.noise = None if noise is None else noise[:n_int].detach().contiguous()
        self.w_t = w_t.detach().contiguous()
        self.kappa = kappa.detach().contiguous()
        self.gate = gate
        self.w_slow_t = None if gate is None else gate[0].detach().contiguous()
        self.fine = torch.zeros(n_int, dtype=torch.uint8)
        if fine is not None:
            self.fine = fine[:n_int].to(torch.uint8).contiguous()
        self.theta = exprb2_theta()
        self.B, self.P = self.drive.shape[1], self.drive.shape[2]
        self.width = (3 if gate is None else 4) * self.P
        self.n_threads = n_threads or torch.get_num_threads()
        self.c = c

    def problem(self, **ptrs) -> _Exprb2Problem:
        c = self.c
        prob = _Exprb2Problem(
            B=self.B, P=self.P, n_int=self.n_int, n_sub=self.n_sub, refine=self.refine,
            n_threads=self.n_threads, gated=int(self.gate is not None),
            drive=self.drive.data_ptr(), w_t=self.w_t.data_ptr(), kappa=self.kappa.data_ptr(),
            fine=self.fine.data_ptr(), theta=self.theta.data_ptr(),
            h=self.h, h_fine=self.h / self.refine, da=c["da"], db=c["db"], inv_d=1.0 / c["d"],
            max_rate=c.get("max_rate", 0.0), inv_tau_m=1.0 / c["tau_m"],
            inv_tau_a=1.0 / c["tau_a"], inv_tau_s=1.0 / c["tau_s"], tol=EXPRB2_TOL,
        )  # fmt: skip
        if self.noise is not None:
            prob.noise = self.noise.data_ptr()
        if self.gate is not None:
            _, tau, gamma = self.gate
            prob.w_slow_t = self.w_slow_t.data_ptr()
            prob.inv_tau_g, prob.gamma = 1.0 / tau, float(gamma)
            prob.inv_g = 1.0 / (float(gamma) * float(tau))
        for name, x in ptrs.items():
            setattr(prob, name, x.data_ptr())
        return prob

    @staticmethod
    def call(fn, prob: _Exprb2Problem) -> None:
        code = fn(ctypes.byref(prob))
        # code 2: a trial's Jacobian norm was not finite (or needed more than 2^20 Taylor
        # substeps in one step): the kernel set that trial's state to NaN from that step on
        # and went on with the others, as the torch path does; the caller's finiteness
        # check (colenv.solve.check_states) names the time, trial and population
        if code and code != 2:
            raise MemoryError("native exprb2 kernel: out of memory for its scratch arrays")

    def states(self, y0: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
        """The states [n_points, B, width] from y0 [B, width]."""
        out = torch.empty(self.n_int + 1, *y0.shape, dtype=torch.float32)
        y0d = y0.detach().contiguous()
        ptrs = dict(y0=y0d, out=out) if counts is None else dict(y0=y0d, out=out, counts=counts)
        self.call(_lib_or_raise().colenv_exprb2_forward, self.problem(**ptrs))
        return out

    def set_grad_patterns(self, pattern, slow_pattern) -> None:
        """Where w_t's (w_slow_t's) gradient is needed: [P source, P target] bool, or None
        (everywhere)."""
        P = self.P
        self.patterns = []
        for name, x in (("grad_pattern", pattern), ("slow_grad_pattern", slow_pattern)):
            if x is not None and (
                not isinstance(x, torch.Tensor) or tuple(x.shape) != (P, P) or x.dtype != torch.bool
            ):
                got = (
                    f"{tuple(x.shape)} {x.dtype}"
                    if isinstance(x, torch.Tensor)
                    else type(x).__name__
                )
                raise ValueError(f"{name} must be None or a [{P}, {P}] bool tensor, got {got}")
            self.patterns.append(None if x is None else x.detach().cpu().contiguous())

    def gradients(self, states, g_states, need_drive, need_w, need_ws, need_kappa=False):
        """(g_y0, g_drive [n_int, B, P] or None, g_w or None, g_ws or None, g_kappa or None):
        the discrete adjoint from the forward's states and the loss gradients of all of them
        (weight gradients zero outside their grad patterns)."""
        g_y0 = torch.empty(self.B, self.width)
        ptrs = dict(states=states, g_states=g_states, g_y0=g_y0)
        pattern, slow_pattern = getattr(self, "patterns", (None, None))
        masks = dict(grad_pattern=pattern, slow_grad_pattern=slow_pattern)
        for name, x in masks.items():
            if x is not None:
                ptrs[name] = masks[name] = x.to(torch.uint8)
        g_drive = g_w = g_ws = None
        if need_drive:
            ptrs["g_drive"] = g_drive = torch.empty(self.n_int, self.B, self.P)
        if need_w:
            ptrs["g_w"] = g_w = torch.empty(self.P, self.P)
        if need_ws and self.gate is not None:
            ptrs["g_ws"] = g_ws = torch.empty(self.P, self.P)
        g_kappa = None
        if need_kappa:
            ptrs["g_kappa"] = g_kappa = torch.empty(self.P)
        self.call(_lib_or_raise().colenv_exprb2_backward, self.problem(**ptrs))
        if g_w is not None and pattern is not None:
            g_w.mul_(pattern)
        if g_ws is not None and slow_pattern is not None:
            g_ws.mul_(slow_pattern)
        return g_y0, g_drive, g_w, g_ws, g_kappa


def _exprb2_prepare(
    y0, drive, w_t, kappa, c, n_points, n_sub, h, fine, refine, n_threads, noise, gate
) -> _Exprb2Call:
    # exprb2 has no r filter: _check's filter weights are a placeholder of the right length
    _check(y0, drive, w_t, kappa, c, n_points, n_sub, h, (0.0,) * 3, n_threads, noise, gate)
    if isinstance(refine, bool) or not isinstance(refine, int) or refine < 1:
        raise ValueError(f"refine must be an integer >= 1, got {refine!r}")
    n_int = n_points - 1
    if fine is not None:
        if not isinstance(fine, torch.Tensor) or fine.dtype != torch.bool or fine.dim() != 1:
            got = f"{fine.dtype} {list(fine.shape)}" if isinstance(fine, torch.Tensor) else (
                type(fine).__name__)  # fmt: skip
            raise ValueError(
                f"fine must be None or a 1-d bool tensor (colenv.models.column.exprb."
                f"onset_intervals), got {got}"
            )
        if fine.shape[0] < n_int:
            raise ValueError(
                f"fine must be [>= {n_int}] (n_points - 1 grid intervals), got {list(fine.shape)}"
            )
    _lib_or_raise()
    return _Exprb2Call(
        y0, drive, w_t, kappa, c, n_points, n_sub, h, fine, refine, n_threads, noise, gate
    )


def exprb2_forward(
    y0: torch.Tensor,
    drive: torch.Tensor,
    w_t: torch.Tensor,
    kappa: torch.Tensor,
    c: dict,
    n_points: int,
    n_sub: int,
    h: float,
    fine: torch.Tensor | None = None,
    refine: int = 1,
    n_threads: int | None = None,
    noise: torch.Tensor | None = None,
    *,
    w_slow_t: torch.Tensor | None = None,
    gate_tau: float | None = None,
    gate_gamma: float | None = None,
    counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """States [n_points, B, 3P] of exprb2 from y0 [B, 3P] under drive [>= n_points - 1, B, P],
    no gradient.

    The scheme of :func:`colenv.models.column.exprb.exprb2_rollout` (exponential
    Rosenbrock-Euler, phi1(h J) F by the scaled Taylor series with the theta table
    :func:`exprb2_theta` and early termination), computed by the C kernel in float32: ``n_sub``
    steps of ``h`` seconds per grid interval; on an interval k with ``fine[k]`` (bool
    [>= n_points - 1], :func:`colenv.models.column.exprb.onset_intervals`; None: none) each
    step of h is ``refine`` steps of h / refine. With ``noise`` [>= n_points - 1, n_sub, B, P]
    each step of h (its ``refine`` steps on a fine interval) is followed by v += noise[k, i].
    w_t [P source, P target], kappa [P] and ``c`` (tau_m, tau_a, tau_s, da, db, d, max_rate)
    as in :class:`colenv.models.column.network.ColumnTerms`; gating (``w_slow_t``,
    ``gate_tau``, ``gate_gamma``) as in :func:`rk4exp_forward` (state [v, a, r, S], 4P).
    ``counts``: an int64 tensor [2] that receives the number of steps and of Jacobian
    applications (a diagnostic of the cost).


    Raises:
        ValueError: a tensor is not float32, not on the CPU, not contiguous (y0, drive, kappa)
            or of the wrong shape, or a number is out of range; the message names it.
        RuntimeError: the kernel is unavailable (check :func:`available` first).
        FloatingPointError: a step's bound of ||J||_1 is not finite (as on the torch path), or
            it needs more than 2^20 Taylor substeps: the state ran away.
    """
    gate = _gate_args(w_slow_t, gate_tau, gate_gamma)
    call = _exprb2_prepare(
        y0, drive, w_t, kappa, c, n_points, n_sub, h, fine, refine, n_threads, noise, gate
    )
    if counts is not None and (
        not isinstance(counts, torch.Tensor) or counts.dtype != torch.int64 or counts.shape != (2,)
    ):
        raise ValueError("counts must be None or an int64 tensor [2]")
    return call.states(y0, counts)


class _Exprb2Adjoint(torch.autograd.Function):
    """exprb2 on the native kernel with its discrete adjoint (exprb2.c's colenv_exprb2_backward:
    reverse mode of the float32 scheme, (m, s*) and the early stops held constant). Forward
    keeps only the grid states; backward recomputes each interval from its grid state with
    stores (memory: one interval's series terms per thread)."""

    @staticmethod
    def forward(ctx, y0, drive, w_t, kappa, w_slow_t, call: _Exprb2Call):
        states = call.states(y0)
        ctx.call, ctx.drive_shape = call, drive.shape
        ctx.save_for_backward(states)
        return states

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_states):
        (states,) = ctx.saved_tensors
        call: _Exprb2Call = ctx.call
        need = ctx.needs_input_grad
        g_y0, g_d, g_w, g_ws, g_kappa = call.gradients(
            states, g_states.contiguous().float(), need[1], need[2], need[4], need[3]
        )
        g_drive = None
        if g_d is not None:
            g_drive = torch.zeros(ctx.drive_shape)
            g_drive[: call.n_int] = g_d
        return g_y0 if need[0] else None, g_drive, g_w, g_kappa, g_ws, None


def exprb2_rollout(
    y0: torch.Tensor,
    drive: torch.Tensor,
    w_t: torch.Tensor,
    kappa: torch.Tensor,
    c: dict,
    n_points: int,
    n_sub: int,
    h: float,
    fine: torch.Tensor | None = None,
    refine: int = 1,
    *,
    n_threads: int | None = None,
    noise: torch.Tensor | None = None,
    w_slow_t: torch.Tensor | None = None,
    gate_tau: float | None = None,
    gate_gamma: float | None = None,
    grad_pattern: torch.Tensor | None = None,
    slow_grad_pattern: torch.Tensor | None = None,
) -> torch.Tensor:
    """Like :func:`exprb2_forward`, differentiable in y0, drive, w_t, kappa and w_slow_t when
    they need it (the native discrete adjoint, :class:`_Exprb2Adjoint`). w_t's gradient is dense [P, P],
    or, given ``grad_pattern`` ([P source, P target] bool: the entries whose gradient is used,
    e.g. ColumnTerms.w_pattern_t), formed on the pattern only and zero elsewhere (much cheaper
    on sparse networks); ``slow_grad_pattern`` likewise for w_slow_t. ``noise`` gets no
    gradient: the increments are constants of the rollout, so the gradient is pathwise."""
    gate = _gate_args(w_slow_t, gate_tau, gate_gamma)
    inputs = (y0, drive, w_t, kappa) + (() if w_slow_t is None else (w_slow_t,))
    call = _exprb2_prepare(
        y0, drive, w_t, kappa, c, n_points, n_sub, h, fine, refine, n_threads, noise, gate
    )
    call.set_grad_patterns(grad_pattern, slow_grad_pattern)
    if not (torch.is_grad_enabled() and any(x.requires_grad for x in inputs)):
        return call.states(y0)
    return _Exprb2Adjoint.apply(y0, drive, w_t, kappa, w_slow_t, call)


def exprb2_rate(x: torch.Tensor, c: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(phi, phi', phi'') of x (float32 CPU, any shape) as the exprb2 kernel computes them (the
    column rate of column_rate.h and its second derivative, which the adjoint needs); ``c``:
    da, db, d and max_rate (<= 0 or absent: no ceiling)."""
    _check_tensor("x", x, None)
    lib = _lib_or_raise()
    p, s, s2 = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)
    lib.colenv_exprb2_rate(
        x.numel(), x.data_ptr(), c["da"], c["db"], 1.0 / c["d"], c.get("max_rate", 0.0),
        p.data_ptr(), s.data_ptr(), s2.data_ptr(),
    )  # fmt: skip
    return p, s, s2
