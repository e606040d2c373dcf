"""The wheel installs anywhere: build it, install it into a fresh virtual environment, and
train Parity one step from a folder outside the repository (the shipped configs come from the
package data ``colenv._config``, nothing from the source tree).

Marked ``wheel`` (deselected in the unit run; CI runs it as its own step:
``python -m pytest -m wheel tests/test_wheel.py``): it needs pip's package index or cache for
the dependencies and takes a minute or two. torch is installed first from a local wheel only
(``torch==<this torch's version>`` with ``--no-index``, found through pip's find-links): a
plain ``pip install torch`` would pull the multi-GB CUDA build. Without a local torch wheel
the test skips and says so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.wheel
LEFT_OUT = (
    ".git",
    ".venv*",
    "build",
    "dist",
    "*.egg-info",
    "runs",
    "wandb",
    "__pycache__",
    ".*cache",
)


def run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: float = 900):
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    )
    return out


def test_wheel_installs_and_trains_outside_the_repo(tmp_path):
    t0 = time.perf_counter()
    # build from a copy: setuptools writes build/ and *.egg-info next to the sources, and a
    # stale build/lib would put deleted modules into the wheel
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*LEFT_OUT))
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", str(src), "-w", str(dist), "--no-deps", "-q"], src)
    (wheel,) = dist.glob("colenv-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {
        f"colenv/_config/{p.relative_to(ROOT / 'config')}"
        for p in (ROOT / "config").rglob("*.toml")
    }
    assert "colenv/_config/model.toml" in shipped and shipped <= names, shipped - names
    assert not any(n.startswith(("tests/", "analysis/")) for n in names)
    built = time.perf_counter()

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    py = str(venv / "bin" / "python")
    torch_version = torch.__version__.split("+")[0]
    local = subprocess.run(
        [py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", f"torch=={torch_version}"],
        capture_output=True,
        text=True,
    )
    if local.returncode:
        pytest.skip(
            f"no local torch=={torch_version} wheel in pip's find-links; not downloading the "
            f"CUDA build:\n{local.stderr[-500:]}"
        )
    run([py, "-m", "pip", "install", "-q", str(wheel)], tmp_path)
    installed = time.perf_counter()

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", PYTHONPATH="")
    probe = run(
        [
            py,
            "-c",
            "import colenv, torch; from colenv.models import load_params; load_params();"
            "print(colenv.__file__); print(torch.version.cuda)",
        ],
        work,
        env,
    )
    where, cuda = probe.stdout.split()[-2:]
    assert str(venv) in where and str(ROOT) not in where, where  # the installed copy
    assert cuda == "None", f"the fresh venv got a CUDA torch ({cuda})"
    out = run(
        [
            py,
            "-m",
            "trainers",
            "train",
            "colenv/Parity-v0",
            "train.steps=1",
            "logging.wandb=false",
            f"logging.run_dir={work / 'runs'}",
        ],
        work,
        env,
    )
    assert list((work / "runs").glob("*/checkpoints/last.pt")), out.stdout[-2000:]
    done = time.perf_counter()
    print(
        f"wheel {built - t0:.0f} s, fresh venv + install {installed - built:.0f} s, "
        f"load + one Parity step {done - installed:.0f} s"
    )
