"""Bifurcation task: Hopf targets, constant-mu grid, start points."""

import math

import pytest
import torch

from colenv import Bifurcation
from colenv.reference.hopf import radius_constant_mu


def test_defaults_and_shapes():
    task = Bifurcation()
    assert task.dt_ms == 50.0 and task.periods_ms == {"trial": 25000.0} and task.n_steps == 500
    trial = task.sample_batch(4, seed=0)
    assert trial.stimulus.shape == (500, 4, 1) and trial.target.shape == (500, 4, 2)
    assert trial.mask.all()
    x0 = trial.conditions["x0"]
    assert x0.shape == (4, 2) and torch.all(x0.abs() <= 2)
    assert torch.allclose(trial.target[0], x0)
    t_s = trial.t_ms.double() / 1000
    phase = trial.conditions["mu_phase"].double()
    mu = torch.sin(0.25 * t_s[:, None] + phase)
    assert torch.allclose(trial.stimulus[:, :, 0].double(), mu, atol=1e-6)


def test_grid_spirals_in_or_settles_on_sqrt_mu():
    task = Bifurcation()
    trial = task.sample_batch(conditions="all", dtype=torch.float64)
    mu = trial.conditions["mu_offset"]
    assert trial.batch_size == 18 and torch.all(trial.conditions["mu_amplitude"] == 0)
    assert torch.allclose(trial.stimulus[:, :, 0], mu.expand(500, -1))
    r = trial.target.norm(dim=-1)
    exact = radius_constant_mu(trial.t_ms / 1000, mu, trial.conditions["x0"].norm(dim=1))
    assert (r - exact).abs().max() < 1e-5
    end = r[-1]
    assert torch.all(end[mu < 0] < 1e-4) and torch.all(end[mu == 0] < 0.15)
    pos = mu > 0
    assert torch.allclose(end[pos], mu[pos].sqrt(), atol=1e-3)


def test_evaluate():
    task = Bifurcation(trial_ms=1000.0)
    trial = task.sample_batch(8, seed=0)
    perfect = task.evaluate(trial.target, trial)
    assert perfect["rmse"] == 0 and perfect["accuracy"] == 1.0
    worse = task.evaluate(trial.target + 0.3, trial)
    assert worse["rmse"] == pytest.approx(0.3, rel=1e-5) and worse["accuracy"] == 0.0


def test_action_scale_covers_largest_radius():
    task = Bifurcation()
    assert task.action_scale >= 2 * math.sqrt(2)
    assert task.action_space.low[0] == -1 and task.action_space.high[0] == 1


def test_kwargs_validation():
    with pytest.raises(ValueError, match="dt_ms=30"):
        Bifurcation(dt_ms=30.0, trial_ms=1000.0)
    with pytest.raises(ValueError, match="x0_range"):
        Bifurcation(x0_range=0)
    with pytest.raises(TypeError, match="allowed"):
        Bifurcation(omega=2.0)


def test_asymptotic_metrics_of_the_true_trajectories():
    """The normal form's own trajectories sit on radius sqrt(mu) for mu > 0 and spiral to
    0 for mu < 0 by the end of 25 s, so the targets pass their own attractor checks."""
    task = Bifurcation()
    trial = task.sample_batch(conditions="all")
    m = task.evaluate(trial.target, trial)
    assert m["limit_cycle_max_rel_error"] < 0.01
    assert m["spiral_in_max_radius"] < 0.01
    shrunk = task.evaluate(trial.target * 0.8, trial)
    assert shrunk["limit_cycle_max_rel_error"] == pytest.approx(0.2, abs=0.01)


def test_targets_match_rk4_integration_of_the_cartesian_system():
    """The polar-solution targets against an independent RK4 integration of (x, y)."""
    from colenv.reference.hopf import integrate, sine_mu

    task = Bifurcation()
    for conditions in (None, "all"):
        trial = task.sample_batch(
            6 if conditions is None else None, seed=3, conditions=conditions, dtype=torch.float64
        )
        c = trial.conditions
        t_s = trial.t_ms / 1000.0
        rk4 = integrate(
            c["x0"],
            t_s,
            lambda t, c=c: sine_mu(t, c["mu_amplitude"], 0.25, c["mu_phase"], c["mu_offset"]),
            omega=1.0,
            max_step_s=0.005,
        )
        assert (trial.target - rk4).abs().max() < 1e-6


def test_criterion_needs_trajectories_and_attractors():
    task = Bifurcation()
    trial = task.sample_batch(conditions="all")
    assert task.evaluate(trial.target, trial)["criterion_met"] == 1.0
    shrunk = task.evaluate(trial.target * 0.85, trial)  # radius 15 % short: limit cycles off
    assert shrunk["accuracy"] == 1.0 and shrunk["criterion_met"] == 0.0
