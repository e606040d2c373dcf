"""Checkpoints: atomic writes, safe loading, clear errors, divergence keeps the last good one,
resume is exact."""

from __future__ import annotations

import math
import os
import re

import pytest
import torch

import trainers.checkpoint as checkpoint_module
import trainers.run
from trainers import Callback, CheckpointCallback, load_config, train
from trainers.__main__ import main
from trainers.checkpoint import CheckpointError, read_checkpoint
from trainers.run import default_callbacks, evaluate_checkpoint, resume_config

TASK = "colenv/XOR-v0"


class StopAt(Callback):
    """Interrupts training after ``step`` steps (like a killed job after its checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state):
        return state.step < self.step


class Poison(Callback):
    """Makes the weights NaN after ``step`` steps, so the next rollout diverges."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state):
        if state.step == self.step:
            with torch.no_grad():
                state.model.feedforward.weight.fill_(math.nan)


@pytest.mark.parametrize("conditions", ["all", "random"])
def test_resume_is_exact(tmp_path, tiny, conditions):
    extra = ["train.lr=0.5", f"train.conditions={conditions}", "train.batch_size=3"]
    full = train(load_config(TASK, tiny(TASK, *extra, "run_name=full", steps=4)))

    config = load_config(TASK, tiny(TASK, *extra, "run_name=split", steps=4))
    first = train(config, callbacks=[CheckpointCallback(every=0), StopAt(2)])
    assert first.steps == 2
    start = read_checkpoint(first.checkpoint)["state_dict"]["feedforward.weight"]
    second = train(resume_config(str(tmp_path / "split"), []))
    assert second.steps == 4

    a = read_checkpoint(full.checkpoint)
    b = read_checkpoint(second.checkpoint)
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert a["optimizer"]["state"][0]["exp_avg"].equal(b["optimizer"]["state"][0]["exp_avg"])
    assert [h["loss"] for h in full.history] == [h["loss"] for h in second.history]
    # the weights moved after the interruption, so equality is not trivial
    assert not torch.equal(start, a["state_dict"]["feedforward.weight"])


def test_checkpoint_records_what_rebuilds_the_model(tiny):
    result = train(load_config(TASK, tiny(TASK)))
    ckpt = torch.load(result.checkpoint, weights_only=True)
    assert ckpt["format"] == "colenv-checkpoint" and ckpt["version"] == 1
    model = ckpt["model"]
    assert model["kind"] == "columns" and model["n_inputs"] == 2 and model["n_outputs"] == 1
    assert model["options"]["network"]["areas"][0]["name"] == "a1"
    assert model["shapes"]["feedforward.weight"] == list(
        ckpt["state_dict"]["feedforward.weight"].shape
    )


def test_checkpoint_write_is_atomic(tmp_path, tiny, monkeypatch):
    result = train(load_config(TASK, tiny(TASK, "run_name=atomic")))
    path = tmp_path / "atomic" / "checkpoints" / "last.pt"
    good = path.read_bytes()

    def crash_mid_write(obj, fh, *args, **kwargs):
        fh.write(b"half a checkpoint")
        raise OSError("disk full")

    state = _state_like(result, tmp_path)
    monkeypatch.setattr(checkpoint_module.torch, "save", crash_mid_write)
    with pytest.raises(OSError, match="disk full"):
        checkpoint_module.save_checkpoint(state, path)
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert read_checkpoint(path)["step"] == 2
    assert set(os.listdir(path.parent)) == {"best.pt", "last.pt"}  # no temp file left


def _state_like(result, tmp_path):
    from trainers import build_model, build_task
    from trainers.types import TrainState

    config = load_config(TASK)
    task = build_task(config)
    model = build_model(config, task, torch.device("cpu"), torch.float32)
    return TrainState(config=config, task=task, model=model, run_dir=tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty (0 bytes)"),
        (b"\x00garbage, not a zip archive", "cannot be read: it is damaged or not a torch"),
        (None, "is not a colenv checkpoint"),
    ],
)
def test_a_damaged_empty_or_foreign_file_is_one_clear_error(tmp_path, capsys, content, message):
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save({"model": {"w": torch.zeros(2)}}, path)  # a foreign (plain torch) file
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(message)) as err:
        read_checkpoint(path)
    assert str(path) in str(err.value)
    assert main(["evaluate", str(path)]) == 2
    printed = capsys.readouterr().err
    assert printed.count("\n") == 1 and str(path) in printed and message in printed


def test_a_truncated_checkpoint_is_a_clear_error(tmp_path, tiny):
    result = train(load_config(TASK, tiny(TASK)))
    data = open(result.checkpoint, "rb").read()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot be read"):
        read_checkpoint(path)


def test_missing_checkpoint_names_what_was_looked_for(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint in run folder"):
        read_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        read_checkpoint(tmp_path / "nope.pt")


def test_a_checkpoint_that_does_not_fit_the_config_is_an_error_naming_it(tmp_path, tiny):
    result = train(load_config(TASK, tiny(TASK, "run_name=fit")))
    with pytest.raises(
        CheckpointError, match="trained on task 'colenv/XOR-v0'.*'colenv/Parity-v0'"
    ):
        evaluate_checkpoint(result.checkpoint, ["task=colenv/Parity-v0", "task_kwargs={}"])
    three_areas = "[{name='a1', n_columns=2}, {name='a2', n_columns=2}, {name='a3', n_columns=1}]"
    with pytest.raises(CheckpointError, match=r"does not fit the model: \S+ is \[24"):
        evaluate_checkpoint(result.checkpoint, [f"model.network.areas={three_areas}"])
    ctrnn = train(load_config("config/tasks/xor_ctrnn.toml", tiny(TASK, "run_name=rnn")))
    with pytest.raises(CheckpointError) as err:
        evaluate_checkpoint(ctrnn.checkpoint, ["model.n_hidden=32"])
    assert "bias is [64] in the checkpoint and [32] in the model" in str(err.value)
    assert "model.n_hidden = 64 in the checkpoint, 32 in the config" in str(err.value)
    ckpt = read_checkpoint(ctrnn.checkpoint)
    from trainers.checkpoint import check_compatible

    config = load_config(TASK, tiny(TASK))
    with pytest.raises(
        CheckpointError, match="model.kind = 'ctrnn' but the config builds 'columns'"
    ):
        check_compatible(ckpt, config, torch.nn.Linear(1, 1), ctrnn.checkpoint)


def test_nan_stops_with_message_and_keeps_last_good_checkpoint(tmp_path, tiny):
    config = load_config(TASK, tiny(TASK, "run_name=diverge", steps=6))
    result = train(config, callbacks=[CheckpointCallback(every=1), Poison(3)])
    assert result.diverged and result.steps == 3
    last = str(tmp_path / "diverge" / "checkpoints" / "last.pt")
    assert "step 4" in result.message and last in result.message
    assert "half the step" not in result.message  # NaN weights: a smaller step does not help
    assert result.checkpoint == last
    ckpt = read_checkpoint(last)
    assert ckpt["step"] == 3
    assert all(
        torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point()
    )
    # and the run resumes from it
    resumed = train(resume_config(last, ["train.steps=4"]))
    assert resumed.steps == 4 and not resumed.diverged


def test_cli_exits_nonzero_on_divergence(tiny, monkeypatch, capsys):
    monkeypatch.setattr(
        trainers.run, "default_callbacks", lambda c: [*default_callbacks(c), Poison(1)]
    )
    code = main(["train", TASK, *tiny(TASK, steps=3)])
    assert code == 1
    assert "diverged at step 2" in capsys.readouterr().err


def test_diverged_step_is_rolled_back_with_half_the_learning_rate(tiny, capsys):
    """NaN weights after step 2: step 3 is rejected, weights roll back to before step 2's
    update and step 2 is redone at half the lr; the poison strikes again each time, so after
    max_rejections the run stops with the divergence message and a finite last checkpoint."""
    config = load_config(TASK, tiny(TASK, "train.lr=0.1", "train.max_rejections=3", steps=4))
    result = train(config, callbacks=[CheckpointCallback(every=1), Poison(2)])
    out = capsys.readouterr().out
    assert out.count("step 3 rejected") == 3 and "learning rate halved" in out
    lrs = [float(line.rsplit(" ", 1)[1]) for line in out.splitlines() if "rejected" in line]
    assert lrs[1] == pytest.approx(lrs[0] / 2, rel=0.01)
    assert lrs[2] == pytest.approx(lrs[1] / 2, rel=0.01)
    assert not result.solved and result.steps == 2
    # the weights restored are those before step 2's update (after step 1), not NaN ones
    final = read_checkpoint(result.checkpoint)["state_dict"]["feedforward.weight"]
    assert torch.isfinite(final).all()


def test_divergence_before_any_last_checkpoint_names_best(tmp_path, tiny):
    """No periodic last.pt yet, but an evaluation wrote best.pt: the message points there."""
    config = load_config(TASK, tiny(TASK, "run_name=early", "checkpoint.every=0", steps=6))
    result = train(config, callbacks=[CheckpointCallback(every=0), Poison(2)])
    best = tmp_path / "early" / "checkpoints" / "best.pt"
    assert result.diverged and best.is_file()
    assert not (tmp_path / "early" / "checkpoints" / "last.pt").exists()
    assert f"The last good checkpoint is {best};" in result.message


def test_a_runaway_from_too_large_a_step_says_so(tiny):
    """Decision's columns at 1 ms with rk4exp: the rollout runs away numerically (the float64 reference
    stays below 17 Hz, tests/test_solver_accuracy.py) while 0.5 ms stays finite; the message
    names the step, not only the learning rate."""
    task = "colenv/Decision-v0"
    # without the seed's jitter: with it, even 0.5 ms may run away at the first step
    overrides = [
        "solver.method=rk4exp",  # the explicit step (the shipped config's exprb2 holds 1 ms)
        "solver.step_ms=1.0",
        "train.runaway_hz=1000.0",
        "model.network.init_jitter=0",
    ]
    config = load_config(task, tiny(task, *overrides))
    result = train(config)
    assert result.diverged  # the runaway guard ("rates reached") or the solver ("ran away")
    assert "rates reached" in result.message or "ran away" in result.message
    assert (
        "At step 1, the same rollout at half the step (solver.step_ms=0.5) stayed within"
        in result.message
    )
    assert "try solver.step_ms=0.5" in result.message


class FailFirstDraw:
    """A forward that diverges on the first draw of step index ``index`` only (and on the
    draws in ``also``, (index, draw) pairs): a failure that belongs to the draw (as a rare
    noise excursion does), not to the weights."""

    def __init__(self, forward, index: int, seed: int, also=()) -> None:
        from trainers.supervised import step_seed

        self.forward = forward
        self.bad_seeds = {step_seed(seed, index)} | {step_seed(seed, *x) for x in also}
        self.seeds: list[int] = []

    def __call__(self, model, trial, config, solver, noise_seed):
        from colenv.errors import DivergenceError

        self.seeds.append(noise_seed)
        if noise_seed in self.bad_seeds:
            raise DivergenceError("rates reached 1e9 Hz (a bad draw)")
        return self.forward(model, trial, config, solver, noise_seed)


class StopAfterRedo(Callback):
    """Interrupts training at ``step`` steps once a step has been redone (the checkpoint then
    holds a step still to run on its second draw)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state):
        return not (state.step == self.step and state.redraws)


def test_a_rejected_step_runs_again_on_a_fresh_draw(tiny, monkeypatch, capsys):
    """Step 3's first draw diverges whatever the weights: retried on the same draw it would
    fail max_rejections times and stop; on a fresh draw it passes and training goes on."""
    import trainers.supervised as supervised

    fake = FailFirstDraw(supervised.forward, index=2, seed=0)
    monkeypatch.setattr(supervised, "forward", fake)
    extra = ["train.lr=0.1", "train.max_rejections=1", "train.conditions=random"]
    result = train(load_config(TASK, tiny(TASK, *extra, steps=4)))
    out = capsys.readouterr().out
    assert out.count("step 3 rejected") == 1
    assert "steps 2-3 run again on fresh trials and noise" in out
    assert not result.diverged and result.steps == 4
    assert read_checkpoint(result.checkpoint)["redraws"] == {1: 1, 2: 1}
    # steps 2 and 3 ran again on seeds of their own, every other step on its first draw
    s = supervised.step_seed
    training = {s(0, k, d) for k in range(4) for d in range(3)}  # not the evaluations' seeds
    seen = [x for x in fake.seeds if x in training]  # (checks rerun a step's own draw)
    seen = [x for i, x in enumerate(seen) if i == 0 or x != seen[i - 1]]
    assert seen == [s(0, 0), s(0, 1), s(0, 2), s(0, 1, 1), s(0, 2, 1), s(0, 3)]


def test_a_redone_step_that_fails_too_rolls_back_one_update_further(tiny, monkeypatch, capsys):
    """Step 3 fails; step 2, run again on the weights before its update, fails as well: those
    weights are bad too, so the guard goes one update further back (to before step 1's) and
    steps 1-2 run again, each on a fresh draw; training goes on with the step count and the
    schedule in line."""
    import trainers.supervised as supervised

    fake = FailFirstDraw(supervised.forward, index=2, seed=0, also=[(1, 1)])
    monkeypatch.setattr(supervised, "forward", fake)
    extra = ["train.lr=0.1", "train.max_rejections=2", "train.conditions=random"]
    result = train(load_config(TASK, tiny(TASK, *extra, steps=4)))
    out = capsys.readouterr().out
    assert "step 3 rejected" in out and "steps 2-3 run again" in out
    assert "step 2 rejected" in out and "steps 1-2 run again" in out
    assert not result.diverged and result.steps == 4
    assert result.history[-1]["step"] == 4  # (evaluations of redone steps repeat)
    s = supervised.step_seed
    training = {s(0, k, d) for k in range(4) for d in range(4)}
    seen = [x for x in fake.seeds if x in training]
    seen = [x for i, x in enumerate(seen) if i == 0 or x != seen[i - 1]]
    expected = [s(0, 0), s(0, 1), s(0, 2), s(0, 1, 1), s(0, 0, 1), s(0, 1, 2), s(0, 2, 1)]
    assert seen == [*expected, s(0, 3)]
    ckpt = read_checkpoint(result.checkpoint)
    assert ckpt["redraws"] == {0: 1, 1: 2, 2: 1}


def test_resume_after_a_redo_draws_what_the_uninterrupted_run_drew(tmp_path, tiny, monkeypatch):
    """Interrupted right after the redo of step 2, the checkpoint must carry step 3's redraw:
    the resumed run ends bit for bit where the uninterrupted one did (on step 3's first draw it
    would diverge again, with no snapshot to roll back to)."""
    import trainers.supervised as supervised

    monkeypatch.setattr(supervised, "forward", FailFirstDraw(supervised.forward, 2, 0))
    extra = ["train.lr=0.1", "train.max_rejections=1", "train.conditions=random"]
    full = train(load_config(TASK, tiny(TASK, *extra, "run_name=full", steps=4)))
    config = load_config(TASK, tiny(TASK, *extra, "run_name=split", steps=4))
    first = train(config, callbacks=[CheckpointCallback(every=0), StopAfterRedo(2)])
    assert first.steps == 2 and read_checkpoint(first.checkpoint)["redraws"] == {1: 1, 2: 1}
    second = train(resume_config(str(tmp_path / "split"), []))
    assert not second.diverged and second.steps == 4
    a, b = read_checkpoint(full.checkpoint), read_checkpoint(second.checkpoint)
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert [h["loss"] for h in full.history] == [h["loss"] for h in second.history]


def test_resume_just_before_a_rejected_step_rolls_back_as_the_uninterrupted_run(
    tmp_path, tiny, monkeypatch, capsys
):
    """Stopped after step 2, the run's next step fails on its first draw: the guard must roll
    back to the snapshot taken before step 2's update, which only the checkpoint can carry
    (without it the resumed run has nothing to roll back to and stops as diverged)."""
    import trainers.supervised as supervised

    monkeypatch.setattr(supervised, "forward", FailFirstDraw(supervised.forward, 2, 0))
    extra = ["train.lr=0.1", "train.max_rejections=1", "train.conditions=random"]
    full = train(load_config(TASK, tiny(TASK, *extra, "run_name=full", steps=4)))
    config = load_config(TASK, tiny(TASK, *extra, "run_name=split", steps=4))
    first = train(config, callbacks=[CheckpointCallback(every=0), StopAt(2)])
    assert first.steps == 2 and read_checkpoint(first.checkpoint)["redraws"] == {}
    saved = read_checkpoint(first.checkpoint)["guard"]["saved"]
    assert [entry[0] for entry in saved] == [0, 1]  # before the updates of steps 1 and 2
    capsys.readouterr()
    second = train(resume_config(str(tmp_path / "split"), []))
    assert "steps 2-3 run again" in capsys.readouterr().out
    assert not full.diverged and not second.diverged and second.steps == 4
    a, b = read_checkpoint(full.checkpoint), read_checkpoint(second.checkpoint)
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert a["redraws"] == b["redraws"] == {1: 1, 2: 1}
    assert [h["loss"] for h in full.history] == [h["loss"] for h in second.history]


def test_a_resume_that_changes_the_schedule_starts_the_guard_afresh(tmp_path, tiny, capsys):
    result = train(load_config(TASK, tiny(TASK, "run_name=r", "train.max_rejections=2", steps=2)))
    assert len(read_checkpoint(result.checkpoint)["guard"]["saved"]) == 2
    capsys.readouterr()
    train(resume_config(str(tmp_path / "r"), ["train.steps=3", "train.lr=0.01"]))
    assert (
        "the runaway guard starts without snapshots: train.lr, train.steps changed"
        in capsys.readouterr().out
    )


@pytest.mark.parametrize(
    "bad", [[1], {"saved": [[0, [torch.zeros(3)], {}, {}]], "rejections": 0, "rejected_at": -1}]
)
def test_a_damaged_guard_entry_is_a_checkpoint_error(tmp_path, tiny, bad):
    result = train(load_config(TASK, tiny(TASK, "run_name=r", "train.max_rejections=1", steps=1)))
    ckpt = torch.load(result.checkpoint, weights_only=True)
    ckpt["guard"] = bad
    torch.save(ckpt, result.checkpoint)
    with pytest.raises(CheckpointError, match="guard"):
        train(resume_config(str(tmp_path / "r"), []))


def test_step_seeds_first_draws_unchanged_and_redraws_distinct():
    from trainers.supervised import eval_seed, step_seed

    assert step_seed(3, 5) == 3 * 1_000_003 + 5  # the first draw: runs before redraws repeat
    firsts = {step_seed(s, k) for s in range(4) for k in range(-50, 200)}
    firsts |= {eval_seed(s, k) for s in range(4) for k in range(200)}
    redraws = {step_seed(s, k, d) for s in range(4) for k in range(200) for d in (1, 2, 3)}
    assert len(redraws) == 4 * 200 * 3 and not redraws & firsts
    assert all(0 <= x < 2**62 for x in redraws)


@pytest.mark.parametrize("bad", [[1, 2], {"1": 1}, {1: 0}, {1: 1.5}])
def test_a_damaged_redraws_entry_is_a_checkpoint_error(tmp_path, tiny, bad):
    result = train(load_config(TASK, tiny(TASK, "run_name=r", steps=1)))
    ckpt = torch.load(result.checkpoint, weights_only=True)
    ckpt["redraws"] = bad
    torch.save(ckpt, result.checkpoint)
    with pytest.raises(CheckpointError, match="redraws"):
        train(resume_config(str(tmp_path / "r"), ["train.steps=2"]))


class _Two(torch.nn.Module):
    def __init__(self, a, b) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.zeros_like(a))
        self.b = torch.nn.Parameter(torch.zeros_like(b))
        self.a.grad, self.b.grad = a.clone(), b.clone()


def test_an_exploding_but_finite_gradient_is_clipped_not_a_failure():
    """float32 gradients of ~1e25 (finite; their norm overflows float32) are scaled to
    grad_clip along their own direction; a NaN or inf gradient still fails the step, and
    without clipping an overflowing norm is a failure that says how to clip."""
    from trainers.supervised import clip_gradients

    a, b = torch.tensor([3e25, -4e25]), torch.tensor([[1e25, 0.0], [0.0, 2e24]])
    m = _Two(a, b)
    assert clip_gradients(m, list(m.parameters()), 1.0, loss=1.0) is None
    flat = torch.cat([m.a.grad.double(), m.b.grad.double().flatten()])
    expected = torch.cat([a.double(), b.double().flatten()])
    assert flat.norm().item() == pytest.approx(1.0, rel=1e-6)
    assert torch.allclose(flat, expected / expected.norm(), rtol=1e-5, atol=1e-12)

    m = _Two(a, b)
    message = clip_gradients(m, list(m.parameters()), 0.0, loss=2.0)
    assert "beyond float32" in message and "train.grad_clip > 0" in message

    m = _Two(torch.tensor([1.0, math.nan]), b)
    message = clip_gradients(m, list(m.parameters()), 1.0, loss=3.0)
    assert "non-finite in a" in message and "at loss 3" in message


def test_ordinary_gradients_are_clipped_exactly_as_torch_does():
    from trainers.supervised import clip_gradients

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, generator=g) * 3, torch.randn(2, 3, generator=g)
    for clip in (0.0, 0.5, 100.0):
        m, ref = _Two(a, b), _Two(a, b)
        assert clip_gradients(m, list(m.parameters()), clip, loss=0.0) is None
        torch.nn.utils.clip_grad_norm_(list(ref.parameters()), clip if clip > 0 else math.inf)
        assert torch.equal(m.a.grad, ref.a.grad) and torch.equal(m.b.grad, ref.b.grad)
