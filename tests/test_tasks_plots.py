"""Each task draws its own trials: what the figures contain, read back from the figures."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch

import colenv  # noqa: F401  (registers the ids)
import colenv.tasks.plotting as plotting

COLUMN_NAMES = [
    f"a1[{c}].{p}"
    for c in range(2)
    for p in ("L23e", "L23i", "L4e", "L4i", "L5e", "L5i", "L6e", "L6i")
]


@pytest.fixture
def figures(monkeypatch):
    """The figures the plots save, by file name (they are still written)."""
    saved = {}
    original = plotting.save

    def keep(fig, path):
        saved[path.name] = fig
        return original(fig, path)

    monkeypatch.setattr(plotting, "save", keep)
    return saved


def answers(task, trial, units: int | None = None) -> dict:
    gen = torch.Generator().manual_seed(0)
    out = {"output": trial.target + 0.5 * torch.randn(trial.target.shape, generator=gen)}
    if units:
        out["rates"] = torch.rand(trial.n_steps, trial.batch_size, units, generator=gen)
    return out


def titles(fig) -> list[str]:
    return [ax.get_title() for ax in fig.axes]


def test_xor_draws_each_pattern_against_its_target(tmp_path, figures):
    task = gym.make("colenv/XOR-v0", dt_ms=10.0).unwrapped
    trial = task.sample_batch(conditions="all", seed=0)
    out = answers(task, trial, units=16)
    out["output"][:, 3] += 10.0  # pattern 11 answered wrong
    paths = task.plot(out, trial, tmp_path, "XOR", unit_names=COLUMN_NAMES)
    assert [p.name for p in paths] == ["outputs.png", "populations.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    assert titles(figures["outputs.png"])[:4] == [
        "bits 00 -> 0 Hz: correct",
        "bits 01 -> 20 Hz: correct",
        "bits 10 -> 20 Hz: correct",
        "bits 11 -> 0 Hz: wrong",
    ]
    assert "3/4 correct" in figures["outputs.png"]._suptitle.get_text()
    # populations: one panel per column, of a pattern that must answer high
    assert titles(figures["populations.png"]) == ["a1[0]", "a1[1]"]
    assert "bits 01" in figures["populations.png"]._suptitle.get_text()


def test_parity_draws_all_patterns(tmp_path, figures):
    task = gym.make("colenv/Parity-v0", n_bits=3, dt_ms=10.0).unwrapped
    trial = task.sample_batch(conditions="all", seed=0)
    task.plot(answers(task, trial), trial, tmp_path, "Parity")
    assert len([t for t in titles(figures["outputs.png"]) if t.startswith("bits")]) == 8


def test_decision_psychometric_shows_network_and_wong_wang(tmp_path, figures):
    task = gym.make(
        "colenv/Decision-v0", pre_stimulus_ms=50.0, stimulus_ms=300.0, post_stimulus_ms=100.0
    ).unwrapped
    trial = task.sample_batch(conditions="all", seed=0)
    paths = task.plot(answers(task, trial, units=16), trial, tmp_path, "D", unit_names=COLUMN_NAMES)
    assert {p.name for p in paths} == {"outputs.png", "psychometric.png", "populations.png"}
    choice, gap = figures["psychometric.png"].axes[:2]
    labels = [line.get_label() for line in choice.get_lines()]
    assert labels == [
        "Wong-Wang",
        "network, end of stimulus",
        "network, end of trial (hold)",
    ]
    ww, net = choice.get_lines()[:2]
    assert ww.get_marker() != net.get_marker() and ww.get_linestyle() != net.get_linestyle()
    assert ww.get_markerfacecolor() == "none"  # hollow: a network point inside stays visible
    assert len(ww.get_xdata()) == trial.batch_size
    # the output follows the targets here, so the network chooses as Wong-Wang does
    assert list(net.get_ydata()) == list(ww.get_ydata())
    # a gap inside the margin is no choice (0.5), not a choice of either pool: Wong-Wang's
    # noise-free pools stay symmetric at c' = 0
    zero = list(ww.get_xdata()).index(0.0)
    assert set(ww.get_ydata()) <= {0.0, 0.5, 1.0} and ww.get_ydata()[zero] == 0.5
    # populations: the strongest pool-1 trial, winner and loser columns in separate panels
    assert titles(figures["populations.png"]) == [
        "a1[0]: output 1 (pool 1), winner",
        "a1[1]: output 2 (pool 2), loser",
    ]
    assert "51.2" in figures["populations.png"]._suptitle.get_text()


def test_decision_rates_without_unit_names_are_an_image(tmp_path, figures):
    task = gym.make("colenv/Decision-v0", stimulus_ms=200.0).unwrapped
    trial = task.sample_batch(conditions="all", seed=0)
    task.plot(answers(task, trial, units=10), trial, tmp_path, "D")
    (ax, _colorbar) = figures["populations.png"].axes
    assert ax.get_images() and ax.get_ylabel() == "unit"


def test_bifurcation_draws_phase_portraits(tmp_path, figures):
    task = gym.make("colenv/Bifurcation-v0", trial_ms=2000.0).unwrapped
    trial = task.sample_batch(conditions="all", seed=0)
    paths = task.plot(answers(task, trial), trial, tmp_path, "B")
    assert [p.name for p in paths] == ["phase_portraits.png"]
    assert titles(figures["phase_portraits.png"]) == [
        f"mu(0) = {mu:g}" for mu in (-1, -0.5, 0, 0.25, 0.5, 1)
    ]
    # mu = 1 panel: 3 trials x (learned, true, start) + the limit cycle circle
    assert len(figures["phase_portraits.png"].axes[-1].get_lines()) == 10


def test_a_task_without_its_own_plot_gets_outputs_against_targets(tmp_path, figures):
    from colenv.core import TrialTask
    from colenv.tasks.xor import XOR

    task = gym.make("colenv/XOR-v0", dt_ms=10.0).unwrapped
    trial = task.sample_batch(conditions="all", seed=0)
    paths = TrialTask.plot(task, answers(task, trial, units=3), trial, tmp_path, "T")
    assert [p.name for p in paths] == ["outputs.png", "populations.png"]
    assert XOR.plot is not TrialTask.plot
