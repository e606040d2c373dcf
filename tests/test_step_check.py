"""The half-step check at a run's first evaluation: a step that is stable but too coarse for
the network is named, with the step to use; an accurate step and adaptive solvers say nothing."""

from __future__ import annotations

import math
import warnings

import pytest

from colenv.errors import ConfigError
from trainers import load_config, train
from trainers.callbacks import StepCheck, StepSizeWarning
from trainers.run import default_callbacks


def _check_of(config) -> StepCheck:
    found = [cb for cb in default_callbacks(config) if isinstance(cb, StepCheck)]
    assert len(found) == 1
    return found[0]


def _train(task, tiny, *extra):
    config = load_config(task, tiny(task, *extra, steps=1))
    check = _check_of(config)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(config, [check])
    return check, [w for w in caught if issubclass(w.category, StepSizeWarning)]


def test_decision_at_half_a_millisecond_warns_and_names_the_step_to_use(tiny):
    """Decision's MT columns need 0.1-0.25 ms with rk4exp: at 0.5 ms the rollout leaves its own
    half-step twin by several Hz (a stable but wrong trace that training would fit to)."""
    check, caught = _train(
        "colenv/Decision-v0",
        tiny,
        "solver.method=rk4exp",
        "solver.step_ms=0.5",
        "model.network.init_jitter=0",
    )
    assert len(caught) == 1, [str(w.message) for w in caught]
    text = str(caught[0].message)
    assert "solver.step_ms = 0.5 is too large" in text
    assert "train.step_check = 0.5" in text
    assert check.report["diff"] > 0.5
    suggest = check.report["suggest_ms"]
    assert suggest is not None and suggest < 0.5
    assert f"use solver.step_ms = {suggest:g}" in text


def test_decision_shipped_stiff_step_says_nothing(tiny):
    """The shipped Decision config steps 0.5 ms with exprb2 (exponential Rosenbrock): the
    same network and step that warns with rk4exp above agrees with its own half step."""
    check, caught = _train("colenv/Decision-v0", tiny, "model.network.init_jitter=0")
    assert not caught, [str(w.message) for w in caught]
    assert check.report is not None and check.report["diff"] <= 0.5


def test_step_check_every_repeats_the_check_and_warns_each_time(tiny):
    # every evaluation (eval_every 1, step_check_every 1) is checked, and the too-large step
    # warns at each, naming the training step; with the default (0) only the first is checked
    extra = ("solver.method=rk4exp", "solver.step_ms=0.5", "model.network.init_jitter=0")
    config = load_config(
        "colenv/Decision-v0",
        tiny("colenv/Decision-v0", *extra, "train.eval_every=1", "train.step_check_every=1",
             steps=2),
    )  # fmt: skip
    check = _check_of(config)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(config, [check])
    found = [str(w.message) for w in caught if issubclass(w.category, StepSizeWarning)]
    evals = len(check.reports)
    assert evals >= 2 and len(found) == evals
    assert [r["step"] for r in check.reports] == sorted({r["step"] for r in check.reports})
    assert all(f"at step {r['step']} " in m for r, m in zip(check.reports, found, strict=True))
    once = _check_of(load_config("colenv/Decision-v0", tiny("colenv/Decision-v0", *extra)))
    assert once.every == 0
    with pytest.raises(ConfigError, match="train.step_check_every"):
        load_config("colenv/XOR-v0", ["train.step_check_every=-1"])


def test_an_accurate_step_says_nothing(tiny):
    check, caught = _train("colenv/XOR-v0", tiny)
    assert not caught
    assert check.report is not None and check.report["diff"] <= 0.5


def test_adaptive_solvers_are_not_checked(tiny):
    check, caught = _train("colenv/XOR-v0", tiny, "solver.method=dopri5")
    assert not caught and check.report is None


def test_step_check_zero_turns_it_off_and_bad_values_are_named(tiny):
    config = load_config("colenv/XOR-v0", tiny("colenv/XOR-v0", "train.step_check=0"))
    assert not any(isinstance(cb, StepCheck) for cb in default_callbacks(config))
    for bad in ("-1", "nan", "inf"):
        with pytest.raises(ConfigError, match="train.step_check"):
            load_config("colenv/XOR-v0", [f"train.step_check={bad}"])


def test_a_runaway_half_step_is_reported_as_infinite():
    from trainers.callbacks import _max_diff

    assert math.isinf(_max_diff(None, None))
