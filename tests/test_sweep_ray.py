"""Sweeps on Ray Tune: a local grid sweep (tables, plot, W&B summary, run folders), a trial
that raises, a two-node cluster, and a driver killed with SIGKILL then resumed.

Every Ray process a test starts lives under its own short temp dir (RAY_TMPDIR or
``--temp-dir``) and is killed by pid at the end; ``ray stop`` (global) is never called.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import SHORT_TRIALS

pytest.importorskip("ray")
pytest.importorskip("optuna")

ROOT = Path(__file__).resolve().parents[1]
XOR = "colenv/XOR-v0"
TINY = [
    *SHORT_TRIALS[XOR],
    "train.eval_every=1",
    "train.device='cpu'",
    "success.stop_on_success=false",
    "logging.wandb=false",
    "logging.plots=false",
    "checkpoint.every=1",
]


class Boom:
    """A trainer that raises in the middle of a sweep (after preflight passed)."""

    def fit(self, model, task, config, callbacks):
        raise RuntimeError("boom: this trainer always fails")


def _pids_under(path: str) -> list[int]:
    """Processes whose command line names ``path`` (the Ray processes of one test)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if path in cmdline:
            pids.append(int(entry.name))
    return pids


def _kill_under(path: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _pids_under(path)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if pids and sig == signal.SIGTERM:
            time.sleep(1.0)


@pytest.fixture
def ray_tmp(monkeypatch):
    """A short temp dir for Ray's sockets and session files (RAY_TMPDIR); every process
    under it is killed afterwards."""
    path = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    try:
        yield path
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        _kill_under(path)
        shutil.rmtree(path, ignore_errors=True)


def sweep_file(tmp_path: Path, space: str, name: str = "s", **keys) -> Path:
    lines = [f'name = "{name}"', f'base = "{XOR}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    path = tmp_path / f"{name}.toml"
    path.write_text("\n".join(lines) + f"\n[space]\n{space}\n")
    return path


def test_local_grid_sweep_writes_tables_plot_wandb_and_run_folders(
    tmp_path, ray_tmp, offline_wandb
):
    from trainers.wandb_logger import read_offline_run

    path = sweep_file(
        tmp_path,
        '"train.lr" = [0.01, 0.05]',
        overrides=[*TINY, "train.steps=2"],
        seeds=2,
        concurrency=2,
        tags=["t1"],
    )
    out = tmp_path / "out"
    # in its own process, as a user runs it: the local Ray it starts and stops leaves nothing
    # behind in this one (the cluster test below connects to another Ray from here)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "trainers", "sweep", str(path), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout
    assert "| p000 | 0.01 | 0/2 |" in printed or "| p000 | 0.01 |" in printed
    rows = [json.loads(x) for x in (out / "trials.jsonl").read_text().splitlines()]
    assert sorted((r["point"]["train.lr"], r["seed"]) for r in rows) == [
        (0.01, 0),
        (0.01, 1),
        (0.05, 0),
        (0.05, 1),
    ]
    for r in rows:
        assert r["status"] == "ok" and r["steps"] == 2 and r["node_id"]
        run = Path(r["run_dir"])
        assert run.parent == out / "trials" and run.name == r["trial"]
        assert (run / "checkpoints" / "last.pt").is_file()
        metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert metrics[-1]["eval/accuracy"] == r["metrics"]["accuracy"]
    # the seed reached each run: its checkpointed config says so
    import torch

    ckpt = torch.load(out / "trials" / "p001-s1" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["config"]["train"]["seed"] == 1 and ckpt["config"]["train"]["lr"] == 0.05
    assert ckpt["config"]["logging"]["group"] == "s" and ckpt["config"]["logging"]["tags"] == ["t1"]
    trials_csv = (out / "trials.csv").read_text().splitlines()
    assert trials_csv[0].startswith("trial,train.lr,seed,status,solved,metric,value,steps")
    assert [line.split(",")[0] for line in trials_csv[1:]] == [
        "p000-s0",
        "p000-s1",
        "p001-s0",
        "p001-s1",
    ]
    summary_csv = (out / "summary.csv").read_text().splitlines()
    assert len(summary_csv) == 3 and summary_csv[1].startswith("p000,0.01,2,")
    assert "| p001-s1 | 0.05 | 1 | ok |" in (out / "trials.md").read_text()
    assert (out / "summary.png").stat().st_size > 1000
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    logged = read_offline_run(runs[0])
    assert logged["run"]["group"] == "s" and logged["run"]["name"] == "s-summary"
    assert logged["history"][0]["sweep/summary.nrows"] == 2


def test_two_node_cluster_runs_trials_on_both_nodes_and_records_a_failing_trial(
    tmp_path, ray_tmp, capsys, monkeypatch
):
    """``ray start --head`` and a second ``ray start --address`` (1 CPU each), the sweep
    connects with --address; two trials at once must use both nodes. The point whose
    trainer raises is recorded with its message; the others finish."""
    from trainers.__main__ import main

    ray_bin = Path(sys.executable).parent / "ray"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # a loopback-only test cluster: no token authentication (it would need the same token
    # file for the head, the worker and the driver, shared with every other Ray user here)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    common = ["--num-cpus=1", "--disable-usage-stats"]
    head = [str(ray_bin), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1"]
    head += ["--include-dashboard=false", f"--temp-dir={ray_tmp}/ray", *common]
    worker = [str(ray_bin), "start", f"--address=127.0.0.1:{port}", *common]
    worker += ["--node-ip-address=127.0.0.1"]
    for cmd in (head, worker):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout}\n{done.stderr}"

    path = sweep_file(
        tmp_path,
        f'trainer = ["supervised", "{__name__}:Boom"]',
        name="cluster",
        overrides=[*TINY, "train.steps=3"],
        seeds=2,
        concurrency=2,
        wandb=False,
    )
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--address", f"127.0.0.1:{port}"]) == 0
    rows = [json.loads(x) for x in (out / "trials.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    assert len({r["node_id"] for r in rows}) == 2, [r["node_id"] for r in rows]
    failed = [r for r in rows if r["point"]["trainer"] != "supervised"]
    assert [r["status"] for r in failed] == ["error", "error"]
    assert all("boom: this trainer always fails" in r["error"] for r in failed)
    ok = [r for r in rows if r["point"]["trainer"] == "supervised"]
    assert [(r["status"], r["steps"]) for r in ok] == [("ok", 3), ("ok", 3)]
    assert "2 error" in (out / "summary.md").read_text()
    assert [line.split(",")[0] for line in (out / "trials.csv").read_text().splitlines()[1:]] == [
        "p000-s0",
        "p000-s1",
        "p001-s0",
        "p001-s1",
    ]
    for r in ok:
        assert (Path(r["run_dir"]) / "checkpoints" / "last.pt").is_file()


def test_a_killed_sweep_resumes_without_rerunning_finished_trials(tmp_path, ray_tmp):
    """kill -9 of the driver after its first recorded trial; the same command continues:
    recorded trials keep their ledger lines and run folders, the rest run once each."""
    path = sweep_file(
        tmp_path,
        '"train.lr" = [0.01, 0.05]',
        overrides=[*TINY, "train.steps=40"],
        seeds=2,
        concurrency=1,
        wandb=False,
    )
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "trainers", "sweep", str(path), "--out", str(out)]
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    ledger = out / "trials.jsonl"
    try:
        deadline = time.monotonic() + 240
        while not (ledger.is_file() and ledger.read_text().count("\n") >= 1):
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()
            assert time.monotonic() < deadline, "no trial finished in 240 s"
            time.sleep(0.2)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
    _kill_under(ray_tmp)  # whatever of the killed driver's Ray is left
    before = ledger.read_text()
    first = [json.loads(x) for x in before.splitlines()]
    assert 1 <= len(first) < 4
    kept = {r["trial"]: (Path(r["run_dir"]) / "metrics.jsonl").read_bytes() for r in first}

    result = subprocess.run(
        [*cmd, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    after = ledger.read_text()
    assert after.startswith(before)  # the recorded lines untouched
    rows = [json.loads(x) for x in after.splitlines()]
    assert len(rows) == 4 and len({(r["point_key"], r["seed"]) for r in rows}) == 4
    for r in first:
        assert (Path(r["run_dir"]) / "metrics.jsonl").read_bytes() == kept[r["trial"]]
    assert f"continuing {out}: {len(first)} of 4 trials recorded" in result.stdout
    assert len((out / "trials.csv").read_text().splitlines()) == 5


@pytest.mark.slow  # two local Ray starts: ~60 s on 2 shared cores
def test_optuna_sweep_resumes_from_a_cut_ledger_without_retraining(tmp_path, ray_tmp):
    """Optuna over a range, 2 points x 2 seeds; the ledger then loses its last line (as if
    the driver died before that trial finished): the resumed sweep trains only that one
    trial, replays the recorded seed of its point, and ends with every pair once."""
    from trainers.sweep import load_sweep, make_plan, run_sweep

    path = sweep_file(
        tmp_path,
        '"train.lr" = {dist = "loguniform", low = 0.01, high = 0.1}',
        overrides=[*TINY, "train.steps=2"],
        algorithm="optuna",
        samples=2,
        seeds=2,
        concurrency=2,
        metric="rmse_hz",
        wandb=False,
    )
    out = tmp_path / "out"
    plan = make_plan(load_sweep(path))
    first = run_sweep(plan, out, quiet=True)
    assert first.missing == 0 and len(first.rows) == 4
    assert len({r["point_key"] for r in first.rows}) == 2
    assert all(r["status"] == "ok" and 0.01 <= r["point"]["train.lr"] <= 0.1 for r in first.rows)
    ledger = out / "trials.jsonl"
    lines = ledger.read_text().splitlines(keepends=True)
    ledger.write_text("".join(lines[:3]))
    cut = json.loads(lines[3])
    again = run_sweep(plan, out, quiet=True)
    assert again.ran == 1 and again.missing == 0
    rows = again.rows
    assert len(rows) == 4 and {(r["point_key"], r["seed"]) for r in rows} == {
        (r["point_key"], r["seed"]) for r in first.rows
    }
    assert json.loads(ledger.read_text().splitlines()[3])["trial"] == cut["trial"]
    assert (out / "trials" / ".stale").is_dir()  # the cut trial's folder, moved aside
