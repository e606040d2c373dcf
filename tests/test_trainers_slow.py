"""Full trainings to criterion with each task's default config (run on demand: -m slow)."""

from __future__ import annotations

import pytest
import torch

from trainers import build_model, build_task, load_config, read_checkpoint, train

TASKS = [
    "colenv/XOR-v0",  # P&D-sized columns with cross-inhibition: solved at step 20
    "colenv/Parity-v0",  # a tree of XOR modules started from the XOR module's weights
    "colenv/Decision-v0",  # the choice at the end of the stimulus, 0.1 ms steps: solved at step 75
    "colenv/Bifurcation-v0",  # 5 s training windows: solved in ~500-650 steps, about a minute
    "config/tasks/xor_ctrnn.toml",  # the rate RNN on XOR: solved at step 20 (a few seconds)
]


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_task_trains_to_criterion(task, tmp_path):
    config = load_config(task, [f"logging.run_dir='{tmp_path}'", "logging.wandb=false"])
    result = train(config)
    task = config.task
    assert not result.diverged, result.message
    assert result.solved, f"{task}: {result.message}; final metrics {result.metrics}"
    if task == "colenv/Bifurcation-v0":  # the attractors, not only the trajectories
        assert result.metrics["limit_cycle_max_rel_error"] <= 0.10
        assert result.metrics["spiral_in_max_radius"] <= 0.10
    if task == "colenv/Decision-v0":  # a rollout that ran away would show in the error
        assert result.metrics["rmse_hz"] < 6.0


@pytest.mark.slow
def test_parity_starts_from_the_weights_xor_training_finds(tmp_path):
    """parity.toml copies the XOR module's trained weights (its comments say from which run):
    train XOR from its default config and compare, within 1 %."""
    config = load_config("colenv/XOR-v0", [f"logging.run_dir='{tmp_path}'", "logging.wandb=false"])
    result = train(config)
    assert result.solved
    net = build_model(config, build_task(config), torch.device("cpu"), torch.float64)
    net.load_state_dict(read_checkpoint(result.checkpoint)["state_dict"])
    n = {name: i for i, name in enumerate(net.population_names)}  # A = a1[0], B = a1[1], C = a2[0]
    ff = net.feedforward.effective().detach()
    xor = {
        "input": float(net.input.effective().detach()[n["a1[0].L4e"], 0])
        * 20.0
        / 15.0,  # 20 vs 15 Hz bits
        "lateral": float(net.lateral.effective().detach()[n["a1[1].L5i"], n["a1[0].L4e"]]),
        **{
            pop: float(ff[n[f"a2[0].{pop}"], n["a1[0].L5e"]])
            for pop in ("L23e", "L4i", "L5i", "L6i")
        },
    }
    parity = load_config("colenv/Parity-v0", []).to_dict()["model"]["network"]
    edges = {
        kind: {(s, t): w for s, t, w in parity[kind]["edges"]}
        for kind in ("input", "lateral", "feedforward")
    }
    copied = {
        "input": edges["input"][("input[0]", "bits[0].L4e")],
        "lateral": edges["lateral"][("bits[0].L4e", "bits[1].L5i")],
        **{
            pop: edges["feedforward"][("bits[0].L5e", f"xor1[0].{pop}")]
            for pop in ("L23e", "L4i", "L5i", "L6i")
        },
    }
    for key, value in xor.items():
        assert copied[key] == pytest.approx(value, rel=0.01), (key, copied[key], value)
