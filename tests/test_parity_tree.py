"""Parity's default model: a tree of XOR modules (config/tasks/parity.toml).

Checked against the task's definition, not against the code: at its configured start (the
XOR module's trained weights, composed) the first-level modules must compute XOR of their bit
pairs and the second-level module the parity of all four bits; only the final NOT stage is
left to training, so the untrained output gets no pattern right.
"""

from __future__ import annotations

import torch

from colenv import SolverConfig, rollout
from trainers import build_model, build_task, load_config


def test_xor_modules_compose_into_odd_parity_before_training():
    config = load_config("colenv/Parity-v0", [])
    task = build_task(config)
    net = build_model(config, task, torch.device("cpu"), torch.float64)
    trial = task.sample_batch(conditions="all", seed=0, dtype=torch.float64)
    with torch.no_grad():
        out = rollout(net, trial.stimulus, trial.t_ms, SolverConfig("rk4exp", step_ms=0.5))
    rates = net.rates(out.states)[-1]  # end of the stimulus [B, P]
    index = {name: i for i, name in enumerate(net.population_names)}
    bits = trial.conditions["bits"]
    odd12 = (bits[:, 0] + bits[:, 1]) % 2 == 1
    odd34 = (bits[:, 2] + bits[:, 3]) % 2 == 1
    odd = bits.sum(dim=1) % 2 == 1
    for column, on in (("xor1[0]", odd12), ("xor1[1]", odd34), ("xor2[0]", odd)):
        rate = rates[:, index[f"{column}.L23e"]]
        assert bool((rate[on] > 15.0).all()), (column, rate[on])
        assert bool((rate[~on] < 6.0).all()), (column, rate[~on])
    assert task.evaluate(net.readout(out.states), trial)["accuracy"] == 0.0
