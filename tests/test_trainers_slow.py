"""Full trainings to criterion with each task's default config (run on demand: -m slow)."""

from __future__ import annotations

import pytest
import torch

from trainers import load_config, train
from trainers.callbacks import read_checkpoint

NOT_YET = pytest.mark.xfail(
    reason="issue 4: the Decision config does not reach the criterion yet (README Results)",
    strict=False,
)
TASKS = [
    "colenv/XOR-v0",  # P&D-sized columns with cross-inhibition: solved at step 20
    "colenv/Parity-v0",  # a tree of XOR modules started from the XOR module's weights
    pytest.param("colenv/Decision-v0", marks=NOT_YET),
    "colenv/Bifurcation-v0",  # 5 s training windows: solved in ~500-650 steps, about a minute
]


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_task_trains_to_criterion(task, tmp_path):
    config = load_config(task, [f"logging.run_dir='{tmp_path}'", "logging.wandb=false"])
    result = train(config)
    assert not result.diverged, result.message
    assert result.solved, f"{task}: {result.message}; final metrics {result.metrics}"
    if task == "colenv/Bifurcation-v0":  # the attractors, not only the trajectories
        assert result.metrics["limit_cycle_max_rel_error"] <= 0.10
        assert result.metrics["spiral_in_max_radius"] <= 0.10


@pytest.mark.slow
def test_parity_starts_from_the_weights_xor_training_finds(tmp_path):
    """parity.toml copies the XOR module's trained weights (its comments say from which run):
    train XOR from its default config and compare, within 1 %."""
    result = train(
        load_config("colenv/XOR-v0", [f"logging.run_dir='{tmp_path}'", "logging.wandb=false"])
    )
    assert result.solved
    model = read_checkpoint(result.checkpoint)["model"]

    def effective(kind):  # log parametrisation: sign * exp(weight) * scale * mask
        w = model[f"{kind}.weight"].double()
        return model[f"{kind}.sign"] * torch.exp(w) * model[f"{kind}.scale"] * model[f"{kind}.mask"]

    net = load_config("colenv/XOR-v0", []).model.network
    assert net["parametrization"] == "log"
    # populations of the XOR network: A = 0..7, B = 8..15, C = 16..23 (L2/3e, L2/3i, L4e, ...)
    xor = {
        "input": float(effective("input")[2, 0]) * 20.0 / 15.0,  # 20 Hz bits there, 15 Hz here
        "lateral": float(effective("lateral")[13, 2]),  # A.L4e -> B.L5i
        "L23e": float(effective("feedforward")[16, 4]),  # A.L5e -> C.L2/3e
        "L4i": float(effective("feedforward")[19, 4]),
        "L5i": float(effective("feedforward")[21, 4]),
        "L6i": float(effective("feedforward")[23, 4]),
    }
    parity = load_config("colenv/Parity-v0", []).model.network
    edges = {(s, t): w for s, t, w in parity["feedforward"]["edges"]}
    copied = {
        "input": dict(((s, t), w) for s, t, w in parity["input"]["edges"])[
            ("input[0]", "bits[0].L4e")
        ],
        "lateral": dict(((s, t), w) for s, t, w in parity["lateral"]["edges"])[
            ("bits[0].L4e", "bits[1].L5i")
        ],
        **{pop: edges[("bits[0].L5e", f"xor1[0].{pop}")] for pop in ("L23e", "L4i", "L5i", "L6i")},
    }
    for key, value in xor.items():
        assert copied[key] == pytest.approx(value, rel=0.01), (key, copied[key], value)
