"""Sweep files, their checks (all before Ray starts), the ledger and the summaries: no Ray
cluster is started here (tests/test_sweep_ray.py runs sweeps)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from colenv.errors import ConfigError
from tests.conftest import SHORT_TRIALS
from trainers.study import Ledger, markdown_table, results_table, summarize, write_outputs
from trainers.sweep import claim_output, load_sweep, make_plan

ROOT = Path(__file__).resolve().parents[1]
XOR = "colenv/XOR-v0"
TINY = [*SHORT_TRIALS[XOR], "train.steps=2", "train.device='cpu'", "logging.wandb=false"]


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def sweep_text(space: str = '"train.lr" = [0.01, 0.05]', **keys) -> str:
    lines = [f'base = "{XOR}"', f"overrides = {json.dumps(TINY)}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    return "\n".join(lines) + f"\n[space]\n{space}\n"


def ray_running() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


@pytest.mark.parametrize(
    "space, keys, needle",
    [
        ('"train.lrr" = [0.1]', {}, "train.lrr"),  # unknown config key
        ('"train.lr" = [0.1, -1.0]', {}, "train.lr = -1"),  # invalid value of a point
        ('"task_kwargs.n_bits" = [2]', {}, "n_bits"),  # a task kwarg XOR does not take
        ("", {}, "space is empty"),
        ('"train.lr" = []', {}, "space.train.lr is an empty list"),
        ('"train.lr" = [0.1]', {"seeds": 0}, "seeds"),
        ('"train.lr" = [0.1]', {"seeds": []}, "seeds"),
        ('"train.lr" = [0.1]', {"concurrency": 0}, "concurrency"),
        ('"train.lr" = [0.1]', {"colour": "red"}, "unknown key 'colour'"),
        ('"train.seed" = [1, 2]', {}, "space.train.seed"),
        ('"train.lr" = {dist = "loguniform", low = 0.01, high = 0.1}', {}, "grid takes lists"),
        (
            '"train.lr" = {dist = "loguniform", low = 0.0, high = 0.1}',
            {"algorithm": "random", "samples": 2},
            "low > 0",
        ),
        (
            '"train.lr" = {dist = "gauss", low = 0.0, high = 0.1}',
            {"algorithm": "random", "samples": 2},
            "dist",
        ),
        ('"train.lr" = [0.1]', {"algorithm": "random"}, "samples >= 1"),
        ('"train.lr" = [0.1]', {"metric": "accuracyy"}, "metric = 'accuracyy' is not a metric"),
        (
            '"train.lr" = {dist = "uniform", low = -1.0, high = 0.1}',
            {"algorithm": "optuna", "samples": 2},
            "train.lr = -1",
        ),
    ],
)
def test_bad_sweeps_are_config_errors_before_ray(tmp_path, space, keys, needle):
    path = write(tmp_path, sweep_text(space, **keys))
    with pytest.raises(ConfigError) as info:
        make_plan(load_sweep(path))
    assert needle in str(info.value)
    assert not ray_running()


def test_nested_space_keys_and_every_point_checked(tmp_path):
    """Unquoted dotted keys in [space] are the same keys; a grid is every combination, each
    point preflighted with its own values."""
    path = write(tmp_path, sweep_text("train.lr = [0.01, 0.05]\ntrain.grad_clip = [0.5, 1.0, 2.0]"))
    plan = make_plan(load_sweep(path))
    assert plan.keys == ["train.lr", "train.grad_clip"]
    assert len(plan.points) == 6 and plan.seeds == [0]
    config = plan.config(plan.points[5], 7, tmp_path)
    assert (config.train.lr, config.train.grad_clip, config.train.seed) == (0.05, 2.0, 7)
    assert config.train.threads == 1 and config.logging.group == "s"
    assert Path(config.logging.run_dir) == tmp_path / "trials" and config.run_name == "p005-s7"


def test_random_points_are_seeded_and_inside_their_ranges(tmp_path):
    text = sweep_text(
        '"train.lr" = {dist = "loguniform", low = 0.001, high = 0.1}\n'
        '"train.eval_every" = {dist = "randint", low = 1, high = 3}',
        algorithm="random",
        samples=5,
        search_seed=3,
    )
    a = make_plan(load_sweep(write(tmp_path, text)))
    b = make_plan(load_sweep(write(tmp_path, text, "t.toml")))
    assert a.points == b.points and len(a.points) == 5
    assert all(0.001 <= p["train.lr"] <= 0.1 for p in a.points)
    assert all(p["train.eval_every"] in (1, 2, 3) for p in a.points)
    assert all(isinstance(p["train.eval_every"], int) for p in a.points)


@pytest.mark.parametrize("path", sorted((ROOT / "config" / "sweeps").glob("*.toml")), ids=str)
def test_shipped_sweep_files_parse_and_validate(path):
    """Every point's config parses and its task builds (the command also preflights each
    model: ``make_plan(spec)``; XOR's are fast enough to do it here too)."""
    spec = load_sweep(path)
    assert spec.name == path.stem
    plan = make_plan(spec, preflight=spec.base == XOR)
    assert plan.keys
    assert not ray_running()


def test_cli_errors_exit_2_and_name_the_key(tmp_path, capsys):
    from trainers.__main__ import main

    path = write(tmp_path, sweep_text('"train.lrr" = [0.1]'))
    assert main(["sweep", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "train.lrr" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_without_ray_the_command_says_how_to_install(tmp_path, capsys, monkeypatch):
    import trainers.sweep
    from trainers.__main__ import main

    monkeypatch.setattr(
        trainers.sweep, "ray_missing_message", lambda: "the sweep command needs ray: pip install"
    )
    path = write(tmp_path, sweep_text())
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert "the sweep command needs ray" in err
    assert main(["reproduce", "--seeds", "2"]) == 2


def test_importing_trainers_does_not_import_ray():
    code = (
        "import sys, trainers, trainers.__main__, trainers.sweep, trainers.study; "
        "assert 'ray' not in sys.modules and 'optuna' not in sys.modules, 'ray imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_output_folder_of_another_sweep_is_refused(tmp_path):
    out = tmp_path / "out"
    a = load_sweep(write(tmp_path, sweep_text()))
    b = load_sweep(write(tmp_path, sweep_text('"train.lr" = [0.02]')))
    with pytest.raises(ConfigError, match="nothing to resume"):
        claim_output(a, out, resume=True)
    assert claim_output(a, out, resume=False) is False
    assert claim_output(a, out, resume=False) is True  # the same sweep: continues
    with pytest.raises(ConfigError, match="different sweep file"):
        claim_output(b, out, resume=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "x").write_text("keep")
    with pytest.raises(ConfigError, match="not a sweep"):
        claim_output(a, other, resume=False)
    assert (other / "x").read_text() == "keep"


def row(point, seed, status="ok", value=1.0, steps=10, solved=True, wall=2.0, label="p000"):
    return {
        "point": point,
        "point_key": json.dumps(point, sort_keys=True),
        "label": label,
        "seed": seed,
        "trial": f"{label}-s{seed}",
        "status": status,
        "solved": solved,
        "metric": "accuracy",
        "value": value,
        "metrics": {} if value is None else {"accuracy": value, "rmse_hz": 2.0 * seed},
        "steps": steps,
        "steps_to_criterion": steps if solved else None,
        "wall_s": wall,
        "run_dir": f"/x/{label}-s{seed}",
        "node_id": "n",
        "error": "" if status == "ok" else "boom",
    }


def test_ledger_skips_a_torn_line_and_keeps_the_first_row(tmp_path):
    ledger = Ledger(tmp_path / "trials.jsonl")
    ledger.append(row({"a": 1}, 0))
    ledger.append(row({"a": 1}, 0, value=0.0))  # recorded twice: the first one counts
    ledger.append(row({"a": 1}, 1))
    with open(ledger.path, "a") as f:
        f.write('{"point": {"a": 1}, "point_key"')  # a kill mid-line
    rows = ledger.rows()
    assert [(r["seed"], r["value"]) for r in rows] == [(0, 1.0), (1, 1.0)]


def test_summary_statistics_by_hand(tmp_path):
    p, q = {"train.lr": 0.1}, {"train.lr": 0.01}
    rows = [
        row(p, 0, value=1.0, steps=10),
        row(p, 1, value=0.5, steps=0, solved=False),
        row(p, 2, value=1.0, steps=30),
        row(p, 3, status="error", value=None, steps=0, solved=False),
        row(q, 0, value=0.25, steps=0, solved=False, label="p001"),
    ]
    s = summarize(rows)
    assert [x["label"] for x in s] == ["p000", "p001"]
    a = s[0]
    assert (a["n"], a["solved"], a["n_error"]) == (4, 2, 1)
    assert a["success_rate"] == 0.5
    assert a["mean"] == pytest.approx(2.5 / 3)
    assert a["std"] == pytest.approx(math.sqrt(((1 / 6) ** 2 * 2 + (1 / 3) ** 2) / 2))
    assert (a["steps_median"], a["steps_min"], a["steps_max"]) == (20, 10, 30)
    assert a["metrics"]["rmse_hz"][0] == pytest.approx(2.0)  # seeds 0, 1, 2: 0, 2, 4
    assert a["best"] == "p000-s0" and a["wall_total"] == 8.0
    assert s[1]["std"] == 0.0 and s[1]["steps_median"] is None
    summary, files = write_outputs(tmp_path, ["train.lr"], rows)
    assert set(files) == {"trials.csv", "trials.md", "summary.csv", "summary.md", "summary.png"}
    md = files["summary.md"].read_text()
    assert "| p000 | 0.1 | 2/4 | accuracy 0.8333 ± 0.29 | 20 (10-30) |" in md
    assert "1 error" in md
    table = results_table(summary, {"p000": "accuracy >= 1"})
    assert "| accuracy >= 1 | 2/4 | 20 (10-30) | 2.0 s | 8.0 s |" in table


def test_results_table_names_a_toml_task_as_typed(tmp_path, monkeypatch):
    # reproduce makes TOML paths absolute for Ray's workers; the table shows them relative to
    # the folder the user ran from (an id or a path outside it stays as it is)
    monkeypatch.chdir(tmp_path)
    row = {"label": "p000", "metric": "accuracy", "n": 1, "solved": 1, "metrics": {}}
    row.update(steps_median=10, steps_min=10, steps_max=10, wall_median=1.0, wall_total=1.0)
    inside = dict(row, point={"base": str(tmp_path / "config" / "xor_noisy.toml")})
    outside = dict(row, label="p001", point={"base": "/elsewhere/t.toml"})
    ident = dict(row, label="p002", point={"base": "colenv/XOR-v0"})
    table = results_table([inside, outside, ident], {})
    assert "| config/xor_noisy.toml |" in table
    assert "| /elsewhere/t.toml |" in table and "| colenv/XOR-v0 |" in table


def test_markdown_cells_stay_on_one_line():
    text = markdown_table(["a", "b"], [["x|y", "line\nbreak"]])
    assert text.splitlines()[2] == "| x\\|y | line break |"


def test_summary_run_logs_the_table_offline(tmp_path, offline_wandb):
    from trainers.study import log_summary_to_wandb
    from trainers.wandb_logger import read_offline_run

    rows = [row({"train.lr": 0.1}, 0), row({"train.lr": 0.01}, 0, value=0.5, label="p001")]
    summary, files = write_outputs(tmp_path, ["train.lr"], rows)
    local = log_summary_to_wandb(
        tmp_path,
        "lr",
        ["train.lr"],
        summary,
        project="colenv",
        mode="offline",
        tags=["a"],
        plot=files["summary.png"],
    )
    assert local is not None and local.parent == tmp_path / "wandb"
    logged = read_offline_run(local)
    assert logged["run"]["group"] == "lr" and logged["run"]["name"] == "lr-summary"
    assert logged["run"]["tags"] == ["a"]
    assert logged["history"][0]["sweep/summary.nrows"] == 2
    assert logged["summary"]["success_rate/p001"] == 1.0


def test_summary_run_never_raises(tmp_path, offline_wandb, monkeypatch, capsys):
    """A W&B that fails to start is one warning; the tables are already written."""
    import wandb

    from trainers.study import log_summary_to_wandb

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(wandb, "init", broken)
    summary = summarize([row({"train.lr": 0.1}, 0)])
    assert (
        log_summary_to_wandb(tmp_path, "lr", ["train.lr"], summary, project="p", mode="offline")
        is None
    )
    assert "disk full" in capsys.readouterr().err


def test_toml_bases_become_absolute_paths(tmp_path, monkeypatch):
    """Trials run in Ray's workers, in other folders: a relative TOML base (the sweep's own or
    one listed in space.base, relative to the sweep file or the current folder) is resolved
    when the file is read, so every trial finds it."""
    from trainers.sweep import resolve_base

    (tmp_path / "cfgs").mkdir()
    task = tmp_path / "cfgs" / "mine.toml"
    task.write_text((ROOT / "config" / "tasks" / "xor.toml").read_text())
    text = sweep_text('base = ["cfgs/mine.toml", "colenv/XOR-v0"]').replace(
        f'base = "{XOR}"', 'base = "cfgs/mine.toml"'
    )
    spec = load_sweep(write(tmp_path, text))
    assert spec.base == str(task) and spec.space["base"] == [str(task), XOR]
    monkeypatch.chdir(tmp_path)
    assert resolve_base("cfgs/mine.toml", Path("/nonexistent")) == str(task)
