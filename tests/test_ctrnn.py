"""The rate RNN with Dale's law: signs and masks held, seeding, noise, and XOR solved from the
shipped config."""

from __future__ import annotations

import math

import pytest
import torch

from colenv import SolverConfig, rollout
from colenv.errors import ConfigError
from colenv.models import CTRNN, CTRNNConfig, build_model


def make(seed: int = 0, **options) -> CTRNN:
    return build_model("ctrnn", options, n_inputs=2, n_outputs=1, seed=seed)


def scramble_(model: CTRNN) -> None:
    """A large optimizer step: every weight gets a random sign."""
    opt = torch.optim.SGD(model.parameters(), lr=10.0)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()


def test_dale_signs_hold_after_project():
    model = make(n_hidden=20, excitatory_fraction=0.75)
    n_e = model.n_excitatory
    assert n_e == 15
    w = model.recurrent_weight()
    assert (w[:, :n_e] >= 0).all() and (w[:, n_e:] <= 0).all()
    assert (w[:, :n_e] > 0).any() and (w[:, n_e:] < 0).any()
    scramble_(model)
    assert (model.w_rec[:, n_e:] > 0).any()  # the step broke Dale's law ...
    model.project_()  # ... and project_ restores it
    w = model.recurrent_weight()
    assert (w[:, :n_e] >= 0).all() and (w[:, n_e:] <= 0).all()
    assert (model.w_in >= 0).all() and (model.w_out >= 0).all()
    assert model.w_out.shape == (1, n_e)  # the readout sees the excitatory units only


def test_without_dale_signs_are_free():
    model = make(n_hidden=10, dale=False)
    scramble_(model)
    model.project_()
    assert (model.w_rec < 0).any() and (model.w_rec > 0).any() and (model.w_in < 0).any()
    assert model.w_out.shape == (1, 10)


def test_connection_mask_is_kept_and_has_no_gradient():
    model = make(n_hidden=40, connection_prob=0.3)
    mask = model.mask
    assert bool((mask.diagonal() == 0).all())  # no autapses by default
    assert 0.2 < float(mask.mean()) < 0.4
    trial_u = torch.full((5, 3, 2), 20.0)
    out = model.readout(
        rollout(model, trial_u, torch.arange(5.0) * 10, SolverConfig("euler", step_ms=10.0)).states
    )
    out.sum().backward()
    assert bool((model.w_rec.grad[mask == 0] == 0).all())
    scramble_(model)
    model.project_()
    assert bool((model.w_rec[mask == 0] == 0).all())
    assert bool((make(n_hidden=6, autapses=True, connection_prob=1.0).mask == 1).all())


def test_same_seed_same_network_other_seed_other_network():
    a, b, c = make(seed=1), make(seed=1), make(seed=2)
    for name, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[name]), name
    assert not torch.equal(a.w_rec, c.w_rec) and not torch.equal(a.w_in, c.w_in)
    masked = make(seed=1, connection_prob=0.5), make(seed=2, connection_prob=0.5)
    assert not torch.equal(masked[0].mask, masked[1].mask)


def test_initial_weights_follow_the_config():
    model = make(n_hidden=50, spectral_radius=0.8)
    w = model.recurrent_weight().detach()
    radius = float(torch.linalg.eigvals(w.double()).abs().max())
    assert radius == pytest.approx(0.8, rel=1e-4)
    e_in = w[:, : model.n_excitatory].sum(dim=1).mean()
    i_in = w[:, model.n_excitatory :].sum(dim=1).mean()
    assert float(e_in + i_in) == pytest.approx(0.0, abs=0.3 * float(e_in))  # balanced on average


def test_dynamics_relax_to_the_input_drive():
    """With W_rec = 0 (spectral radius 0), x relaxes to W_in u with time constant tau."""
    model = make(n_hidden=4, spectral_radius=0.0, tau_ms=50.0)
    u = torch.full((101, 1, 2), 10.0)
    t = torch.arange(101.0) * 1.0  # 100 ms, 1 ms grid
    states = rollout(model, u, t, SolverConfig("rk4", step_ms=1.0)).states
    drive = (u[0] @ model.w_in.t()).detach()
    expected = drive * (1 - math.exp(-100.0 / 50.0))
    assert torch.allclose(states[-1].detach(), expected, rtol=1e-4)
    assert (
        model.describe_state_index(0) == "x[0] (E)" and model.describe_state_index(3) == "x[3] (I)"
    )


def test_noise_has_the_configured_stationary_std():
    model = make(n_hidden=100, spectral_radius=0.0, input_std=0.0, noise_std=2.0, tau_ms=20.0)
    u = torch.zeros(201, 4, 2)
    t = torch.arange(201.0)  # 200 ms = 10 tau
    with torch.no_grad():
        states = rollout(model, u, t, SolverConfig("euler", step_ms=1.0, sde=True), seed=0).states
    assert float(states[100:].std()) == pytest.approx(2.0, rel=0.1)


def test_bad_options_are_errors_naming_them():
    with pytest.raises(ConfigError, match="excitatory_fraction"):
        make(n_hidden=2, excitatory_fraction=0.99)
    with pytest.raises(ConfigError, match="model.activation"):
        make(activation="tanh")
    with pytest.raises(ConfigError, match="unknown key 'model.hidden'"):
        make(hidden=3)
    assert make(activation="softplus").rates(torch.zeros(1, 64)).min() > 0


def test_no_fast_scheme():
    model = make()
    with pytest.raises(ConfigError, match="rk4exp"):
        rollout(model, torch.zeros(3, 1, 2), torch.arange(3.0), SolverConfig("rk4exp", step_ms=0.5))


def test_config_round_trips():
    model = make(n_hidden=12, connection_prob=0.5)
    assert isinstance(model.config, CTRNNConfig)
    again = build_model(
        "ctrnn", model.config.model_dump(mode="json"), n_inputs=2, n_outputs=1, seed=0
    )
    for name, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[name])


def test_xor_ctrnn_config_solves_xor(tmp_path):
    """The shipped config/tasks/xor_ctrnn.toml reaches accuracy 1 (seed 0: step 20, ~3 s)."""
    from trainers import load_config, train

    config = load_config(
        "config/tasks/xor_ctrnn.toml",
        [f"logging.run_dir='{tmp_path}'", "logging.wandb=false", "logging.plots=false"],
    )
    result = train(config)
    assert result.solved and result.metrics["accuracy"] == 1.0, result.message
    assert result.steps <= 100
