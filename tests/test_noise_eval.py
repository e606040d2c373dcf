"""Noise-aware evaluation: ``eval.noise_draws`` noisy trials per condition, reproducible from
``train.seed`` and the step, scored by the window-averaged rate; bad noise settings rejected."""

import math

import pytest
import torch

from colenv.errors import ConfigError
from trainers.build import build_model, build_task
from trainers.config import load_config
from trainers.supervised import eval_seed, evaluate, noise_draws, step_seed

SHORT = [  # a short XOR trial: 40 ms settling, 60 ms stimulus, 40 ms scored
    "task_kwargs.pre_stimulus_ms=40.0",
    "task_kwargs.stimulus_ms=60.0",
    "task_kwargs.response_ms=40.0",
    "solver.fast.compile=false",
    "solver.step_ms=0.5",
]


def setup(overrides):
    config = load_config("colenv/XOR-v0", SHORT + overrides)
    task = build_task(config)
    model = build_model(config, task, torch.device("cpu"), torch.float32)
    trial = task.sample_batch(conditions="all", seed=config.train.seed)
    return config, task, model, trial


@pytest.mark.parametrize("bad", ["0", "-3", "1.5", "true", '"4"'])
def test_noise_draws_below_one_or_not_an_int_is_a_config_error_naming_the_key(bad):
    with pytest.raises(ConfigError, match=r"eval\.noise_draws"):
        load_config("colenv/XOR-v0", [f"eval.noise_draws={bad}"])


@pytest.mark.parametrize("bad", ["-0.5", "nan", "inf", "-inf", '"loud"'])
def test_negative_or_non_finite_noise_amplitude_is_a_config_error_naming_the_key(bad):
    with pytest.raises(ConfigError, match=r"model\.network\.noise_std"):
        load_config("colenv/XOR-v0", [f"model.network.noise_std={bad}"])


def test_noise_draws_count_only_with_sde():
    sde = load_config("colenv/XOR-v0", ["solver.sde=true", "eval.noise_draws=5"])
    ode = load_config("colenv/XOR-v0", ["eval.noise_draws=5"])
    assert noise_draws(sde, sde.solver) == 5 and noise_draws(ode, ode.solver) == 1
    assert load_config("colenv/XOR-v0").eval.noise_draws == 1


def test_eval_seeds_never_meet_a_training_step_seed():
    train = {step_seed(s, k) for s in range(3) for k in range(2000)}
    evals = {eval_seed(s, k) for s in range(3) for k in range(2000)}
    assert not train & evals and len(evals) == 6000
    assert eval_seed(0, 0) == step_seed(0, -1)  # the seed evaluation used before noise draws


def test_noisy_evaluation_scores_every_draw_and_is_reproducible():
    config, task, model, trial = setup(
        ["solver.sde=true", "eval.noise_draws=3", "model.network.noise_std=2.0"]
    )
    metrics, output, rates = evaluate(model, task, config, trial, config.solver, step=10)
    assert metrics["n_trials"] == 3 * trial.batch_size and metrics["noise_draws"] == 3
    assert math.isclose(metrics["accuracy"] * 12, metrics["n_correct"])
    assert output.shape == trial.target.shape  # the first draw, aligned with the grid
    assert rates.shape[:2] == (trial.n_steps, trial.batch_size)
    again, output_again, _ = evaluate(model, task, config, trial, config.solver, step=10)
    assert again == metrics and torch.equal(output, output_again)
    later, output_later, _ = evaluate(model, task, config, trial, config.solver, step=20)
    assert not torch.equal(output, output_later)  # another step, other noise
    assert later["loss"] != metrics["loss"]


def test_the_draws_are_independent_noise():
    config, task, model, trial = setup(
        ["solver.sde=true", "eval.noise_draws=2", "model.network.noise_std=2.0"]
    )
    one = config.model_copy(update={"eval": config.eval.model_copy(update={"noise_draws": 1})})
    _, first, _ = evaluate(model, task, one, trial, config.solver, step=3)
    metrics, both, _ = evaluate(model, task, config, trial, config.solver, step=3)
    assert both.shape == first.shape and metrics["n_trials"] == 2 * trial.batch_size
    # two draws of the same condition differ: the metrics see more than one copy of a trace
    grid = trial.batch_size
    batch = trial[torch.arange(2 * grid) % grid]
    from trainers.supervised import forward

    with torch.no_grad():
        out, _, _ = forward(model, batch, config, config.solver, eval_seed(0, 3))
    assert not torch.allclose(out[:, :grid], out[:, grid:])


def test_without_sde_noise_draws_is_ignored():
    config, task, model, trial = setup(["eval.noise_draws=4"])
    metrics, output, _ = evaluate(model, task, config, trial, config.solver)
    assert metrics["n_trials"] == trial.batch_size and "noise_draws" not in metrics
    assert output.shape == trial.target.shape
