"""Smoke runs: every task trains a couple of steps with a tiny budget, in process."""

from __future__ import annotations

import pytest
import torch

from trainers import build_model, build_task, evaluate_checkpoint, load_config, train
from trainers.__main__ import main
from trainers.wandb_logger import read_metrics

TASKS = ["colenv/XOR-v0", "colenv/Parity-v0", "colenv/Decision-v0", "colenv/Bifurcation-v0"]
PLOTS = {
    "colenv/XOR-v0": {"outputs.png", "populations.png"},
    "colenv/Parity-v0": {"outputs.png", "populations.png"},
    "colenv/Decision-v0": {"outputs.png", "populations.png", "psychometric.png"},
    "colenv/Bifurcation-v0": {"phase_portraits.png"},
}


@pytest.mark.parametrize("task", TASKS)
def test_each_task_trains_and_writes_checkpoint_and_plots(task, tmp_path, tiny):
    result = train(load_config(task, tiny(task, "logging.plots=true")))
    assert result.steps == 2 and not result.diverged
    assert [h["step"] for h in result.history] == [1, 2]
    assert set(result.metrics) >= {"accuracy", "loss"}
    ckpt = torch.load(result.checkpoint, weights_only=True)  # tensors and plain values only
    assert ckpt["step"] == 2 and ckpt["task"] == task and ckpt["config"]["task"] == task
    plots = {p.name for p in (tmp_path / result.run_dir.split("/")[-1] / "plots").iterdir()}
    assert plots == PLOTS[task]
    # the local metrics record is kept without W&B too (tiny runs turn W&B off)
    rows = read_metrics(result.run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[-1]["eval/accuracy"] == result.metrics["accuracy"]


def test_weights_change_and_constraints_hold(tiny):
    task = "colenv/XOR-v0"
    config = load_config(
        task,
        tiny(
            task,
            "train.lr=1.0",
            "train.schedule=constant",
            "model.network.parametrization='linear'",
            "model.network.input={trainable=true}",
        ),
    )
    before = build_model(config, build_task(config), torch.device("cpu"), torch.float32)
    result = train(config)
    after = torch.load(result.checkpoint, weights_only=True)["state_dict"]
    assert not torch.equal(before.input.weight, after["input.weight"])
    # Dale: input and feedforward (excitatory sources) stay >= 0, masked entries stay 0
    for name in ("input", "feedforward"):
        w, mask = after[f"{name}.weight"], after[f"{name}.mask"]
        assert (w >= 0).all() and (w[mask == 0] == 0).all()


def test_cli_train_evaluate_resume_list_reproduce(tmp_path, tiny, capsys):
    task = "colenv/XOR-v0"
    assert main(["train", task, *tiny(task, "logging.plots=true"), "run_name=cli"]) == 0
    out = capsys.readouterr().out
    run_dir = tmp_path / "cli"
    assert str(run_dir) in out and "last.pt" in out and "plots" in out

    assert main(["evaluate", str(run_dir)]) == 0
    table = capsys.readouterr().out
    assert "accuracy" in table and "rmse_hz" in table
    assert evaluate_checkpoint(str(run_dir / "checkpoints" / "last.pt"))["step"] == 2
    threads = torch.get_num_threads()
    try:  # evaluate runs at the configured thread count, as train does
        evaluate_checkpoint(str(run_dir), ["train.threads=3"])
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)

    assert main(["resume", str(run_dir), "train.steps=3"]) == 0
    assert "steps       3" in capsys.readouterr().out

    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    for name in ("colenv/Parity-v0", "supervised", "rk4exp", "ctrnn", "hopf_mlp", "columns"):
        assert name in listed

    out_md = tmp_path / "results.md"
    assert main(["reproduce", "--tasks", task, "--out", str(out_md), *tiny(task)]) == 0
    text = out_md.read_text()
    assert "| colenv/XOR-v0 | accuracy >= 1 |" in text and "| task | criterion |" in text


def test_evaluate_a_run_without_last_pt_uses_best_and_says_so(tmp_path, tiny, capsys):
    task = "colenv/XOR-v0"
    assert main(["train", task, *tiny(task, "run_name=b")]) == 0
    (tmp_path / "b" / "checkpoints" / "last.pt").unlink()
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "no checkpoints/last.pt there; using best.pt" in out and "accuracy" in out


def test_config_subcommand_prints_every_key(capsys):
    assert main(["config", "colenv/XOR-v0", "train.lr=0.02"]) == 0
    out = capsys.readouterr().out
    assert "train.lr" in out and "0.02" in out and "solver.method" in out


def test_train_help_points_at_the_config_command(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "python -m trainers config" in capsys.readouterr().out


def test_cuda_without_cuda_is_an_error_before_any_work(tmp_path, tiny, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    task = "colenv/XOR-v0"
    code = main(["train", task, *tiny(task), "train.device=cuda"])
    err = capsys.readouterr().err
    assert code == 2
    assert "train.device = 'cuda' but CUDA is not available here; allowed: auto, cpu" in err
    assert not any(tmp_path.iterdir())  # no run folder


def test_unregistered_task_versions_are_errors(tiny, capsys):
    code = main(["train", "colenv/XOR-v0", *tiny("colenv/XOR-v0"), "task=colenv/XOR-v7"])
    err = capsys.readouterr().err
    assert code == 2 and "colenv/XOR-v7" in err and "colenv/Parity-v0" in err


def test_mismatched_network_is_a_clear_error(tiny, capsys):
    task = "colenv/XOR-v0"
    code = main(["train", task, *tiny(task), "task_kwargs.n_bits=3"])
    assert code == 2 and "n_bits" in capsys.readouterr().err
    code = main(["train", "colenv/Parity-v0", *tiny("colenv/Parity-v0"), "task_kwargs.n_bits=3"])
    assert code == 2 and "model.network.n_inputs = 4" in capsys.readouterr().err


def test_train_task_kwargs_change_the_training_trials_only(tiny, monkeypatch, capsys):
    """train.task_kwargs: training batches from a variant of the task (here shorter trials
    from a smaller box of start points), evaluation on the grid of the task of task_kwargs."""
    from colenv.tasks.bifurcation import Bifurcation

    drawn = []
    original = Bifurcation.sample_batch

    def spy(self, *args, **kwargs):
        trial = original(self, *args, **kwargs)
        if kwargs.get("dtype") != torch.float64:  # not the preflight's float64 data check
            drawn.append((kwargs.get("conditions"), trial))
        return trial

    monkeypatch.setattr(Bifurcation, "sample_batch", spy)
    task = "colenv/Bifurcation-v0"
    overrides = tiny(task, "train.task_kwargs={trial_ms = 200.0, x0_range = 0.5}")
    result = train(load_config(task, overrides))
    assert result.steps == 2 and result.history[-1]["n_trials"] == 18
    evals = [trial for conditions, trial in drawn if conditions == "all"]
    batches = [trial for conditions, trial in drawn if conditions is None]
    assert len(evals) == 1 and evals[0].t_ms[-1] > 200.0  # the grid: trial_ms of task_kwargs
    assert len(batches) == 2
    for trial in batches:
        assert trial.t_ms[-1] <= 200.0 and trial.batch_size == 4
        assert trial.conditions["x0"].abs().max() <= 0.5  # the variant's start points

    code = main(["train", task, *tiny(task), "train.task_kwargs.trial_ms=-5.0"])
    assert code == 2 and "train.task_kwargs" in capsys.readouterr().err


def test_bench_subcommand_is_trainers_bench(capsys):
    with pytest.raises(SystemExit) as done:
        main(["bench", "--help"])
    assert done.value.code == 0
    assert "usage: python -m trainers.bench" in capsys.readouterr().out


def test_solved_needs_the_criterion_at_patience_evaluations_in_a_row(tiny):
    """success.patience = 2: a run whose criterion held at only its last evaluation (here a
    rmse criterion met from step 2 on) is not solved; one more evaluation that meets it makes
    it solved. Counted from the history, so it survives resume."""
    from trainers.callbacks import criterion_streak

    task = "colenv/XOR-v0"
    criterion = ["success.metric=rmse_hz", "success.patience=2"]
    first = train(load_config(task, tiny(task, *criterion, "success.threshold=1e9", steps=1)))
    assert [h["step"] for h in first.history] == [1] and not first.solved
    two = train(load_config(task, tiny(task, *criterion, "success.threshold=1e9", steps=2)))
    assert two.solved
    never = train(load_config(task, tiny(task, *criterion, "success.threshold=1e-9", steps=2)))
    assert not never.solved

    class State:  # a history with a break: only the evaluations after it count
        config = load_config(task, criterion)
        threshold = 1.0
        history = [{"step": 1, "rmse_hz": 0.5}, {"step": 2, "rmse_hz": 3.0}]
        history += [{"step": 3, "rmse_hz": 0.5}, {"step": 3, "rmse_hz": 0.5}]

    assert criterion_streak(State()) == 1  # step 3 evaluated twice counts once
