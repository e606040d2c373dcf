"""Run folders: one folder belongs to one run, and two processes never train into it at once.

    run = RunFolder.open(root, name, task=config.task, resuming=False)   # claims, locks
    ...                                                                   # train
    run.close()                                                           # releases the lock

A run folder ``<logging.run_dir>/<run_name>/`` holds ``run.json`` (the run's id, task and
creation time), ``checkpoints/``, ``plots/`` and ``wandb/``, and, while a process trains into
it, an OS-level lock on ``.lock`` (``fcntl.flock``; the kernel releases it when the process
exits, however it exits, so a killed run never blocks its resume).

- A new run refuses a folder that already holds files: it names the folder and says how to
  continue that run (``resume``) or to choose another ``run_name``.
- A resume continues in the folder it was given (a copied folder included).
- A second process asking for a locked folder is refused at once.
- The folder, and ``checkpoints/`` in it, must be writable before any work starts.
- Temporary files of a checkpoint write that was killed (``checkpoints/.*.tmp``) are removed.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from colenv.errors import ConfigError

try:  # POSIX; elsewhere folders are not locked (the other guarantees hold)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_FILE", "RUN_FILE", "RunFolder", "check_run_name", "fresh_run_name"]

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
TEMP_GLOB = ".*.tmp"
"""Name pattern of the temporary files of atomic checkpoint writes (in ``checkpoints/``)."""


def check_run_name(name: str) -> str:
    """``name`` if it is one plain folder name (what ``run_name`` must be), else ValueError:
    no path separators, not ``.`` or ``..``, not absolute, no control characters."""
    problem = None
    if not isinstance(name, str):
        problem = "must be a string"
    elif name in (".", ".."):
        problem = f"{name!r} is not a folder name of its own"
    elif "/" in name or "\\" in name or os.sep in name:
        problem = "contains a path separator"
    elif any(ord(c) < 32 for c in name):
        problem = "contains a control character"
    elif name != name.strip():
        problem = "starts or ends with white space"
    elif len(name.encode()) > 200:
        problem = f"is {len(name.encode())} bytes long (at most 200)"
    if problem:
        raise ValueError(
            f"{problem}; run_name is one plain folder name under logging.run_dir (letters, "
            "digits, '-', '_', '.'), e.g. run_name=xor-lr01; empty = <task>-<timestamp>"
        )
    return name


def fresh_run_name(root: Path, task: str) -> str:
    """``<task>-<timestamp>`` (``-2``, ``-3``, ... when taken), its folder created atomically
    so that two runs started in the same second never share one."""
    root = Path(root)
    _mkdir(root, "logging.run_dir")
    base = f"{task.split('/')[-1].lower()}-{time.strftime('%Y%m%d-%H%M%S')}"
    for i in itertools.count(1):
        name = base if i == 1 else f"{base}-{i}"
        try:
            (root / name).mkdir()
        except FileExistsError:
            continue
        except OSError as err:
            raise _not_writable(root, err, "logging.run_dir") from None
        return name
    raise AssertionError("unreachable")


def _mkdir(path: Path, what: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{what}: {path} exists and is not a folder") from None
    except OSError as err:
        raise _not_writable(path, err, what) from None


def _not_writable(path: Path, err: OSError, what: str) -> ConfigError:
    reason = err.strerror or type(err).__name__
    return ConfigError(
        f"{what}: cannot write into {path} ({reason}); nothing was trained. Make it writable, "
        "or choose another logging.run_dir (or run_name)"
    )


class RunFolder:
    """The folder of one run, claimed and locked by this process (see the module doc)."""

    def __init__(self, path: Path, run_id: str, lock_fd: int | None) -> None:
        self.path = path
        self.run_id = run_id
        self._lock_fd = lock_fd
        self.removed_temp: list[Path] = []
        """temporary files of interrupted checkpoint writes, removed when opened"""

    @classmethod
    def open(cls, root: str | Path, name: str, *, task: str, resuming: bool) -> RunFolder:
        """Claim ``<root>/<name>`` for a run of ``task``.

        Args:
            resuming: the run continues the one in this folder (its checkpoints are there);
                otherwise the folder must be new or empty.

        Raises:
            ConfigError: a bad name; a folder that holds another run (new runs); a folder of
                another task's run (resumes); a folder locked by another process; a folder
                that cannot be written. Each names the folder and what to do.
        """
        try:
            check_run_name(name)
        except ValueError as err:
            raise ConfigError(f"run_name = {name!r}: {err}") from None
        root = Path(root)
        path = root / name
        if not resuming and path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise ConfigError(
                f"run folder {path} already holds a run; a new run never overwrites another. "
                f"Continue that one with `python -m trainers resume {path}` (or resume={path}), "
                "or choose another run_name (or leave it empty for <task>-<timestamp>)"
            )
        if resuming and not path.is_dir():
            raise ConfigError(f"cannot resume in {path}: no such run folder")
        _mkdir(path, "run folder")
        lock_fd = _lock(path)
        try:
            if not resuming and any(p.name != LOCK_FILE for p in path.iterdir()):
                raise ConfigError(  # another new run claimed it between the check and the lock
                    f"run folder {path} already holds a run; a new run never overwrites "
                    f"another. Continue that one with `python -m trainers resume {path}`, or "
                    "choose another run_name"
                )
            _mkdir(path / "checkpoints", "run folder")
            for folder in (path, path / "checkpoints"):
                _probe_write(folder)
            removed = _remove_temp_files(path / "checkpoints")
            run_id = _claim_record(path, task, resuming)
        except BaseException:
            _unlock(lock_fd)
            raise
        run = cls(path, run_id, lock_fd)
        run.removed_temp = removed
        return run

    def close(self) -> None:
        """Release the lock (idempotent); the folder and its files stay."""
        fd, self._lock_fd = self._lock_fd, None
        _unlock(fd)

    @property
    def locked(self) -> bool:
        return self._lock_fd is not None

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _lock(path: Path) -> int | None:
    lock_path = path / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise _not_writable(path, err, "run folder") from None
    if fcntl is None:  # pragma: no cover
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _read_pid(fd)
        os.close(fd)
        by = f" (process {holder})" if holder else ""
        raise ConfigError(
            f"run folder {path} is in use: another training{by} is writing into it right now. "
            "Wait for it to finish (then resume it), or choose another run_name"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _read_pid(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 32).decode(errors="replace").strip()
    except OSError:
        return ""


def _unlock(fd: int | None) -> None:
    if fd is None:
        return
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _probe_write(folder: Path) -> None:
    """Create and remove a file in ``folder``: a folder that cannot take a checkpoint is an
    error now, not after the first steps of training."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe.", suffix=".tmp")
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise _not_writable(folder, err, "run folder") from None


def _remove_temp_files(folder: Path) -> list[Path]:
    removed = []
    for leftover in sorted(folder.glob(TEMP_GLOB)):
        if leftover.is_file():
            leftover.unlink()
            removed.append(leftover)
    return removed


def _claim_record(path: Path, task: str, resuming: bool) -> str:
    """``run.json``: written for a new run (or an old folder without one); for a resume, its
    task must be the one resumed."""
    record_path = path / RUN_FILE
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text())
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as err:
            raise ConfigError(f"{record_path} is damaged ({err}); it is not a run record") from None
        if record.get("task") not in (None, task):
            raise ConfigError(
                f"run folder {path} holds a run of {record.get('task')!r} ({record_path}); "
                f"this run trains {task!r}. Choose another run_name"
            )
        if "run_id" in record:
            return str(record["run_id"])
    record = {
        "run_id": uuid.uuid4().hex,
        "task": task,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "resumed": resuming,
    }
    tmp = path / f".{RUN_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, record_path)
    return record["run_id"]


def append_line(path: Path, line: str) -> None:
    """Append ``line`` (ending in a newline) to ``path``, flushed and fsync'd before returning
    (and the folder fsync'd when the file is new), so a kill -9 right after keeps it. Raises
    OSError as ``open`` does."""
    new = not path.exists()
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    if new:
        try:
            fd = os.open(path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
