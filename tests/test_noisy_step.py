"""analysis/noisy_step.py: runaway counts and window means of noisy rollouts per solver."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from colenv.errors import ConfigError
from trainers.bench import build_network

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ns():
    spec = importlib.util.spec_from_file_location("noisy_step", ROOT / "analysis" / "noisy_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def xor_net():
    return build_network("colenv/XOR-v0", ["model.network.noise_std=0.5"], device="cpu")


@pytest.mark.parametrize("text", ["rk4exp", "rk4exp:0", "rk4exp:-1", "rk4exp:nan", "dopri5:0.5"])
def test_solver_spec_errors_name_the_value(ns, text):
    with pytest.raises(ConfigError, match=rf"--solvers '{text}'.*METHOD:STEP_MS"):
        ns.parse_solver(text)


def test_solver_is_the_method_at_the_step_with_noise_and_no_runaway_check(ns):
    s = ns.solver_for("exprb2", 1.0)
    assert (s.method, s.step_ms, s.sde, s.check_finite) == ("exprb2", 1.0, True, False)


def test_window_means_average_inside_the_mask_only(ns):
    out = torch.arange(12.0).reshape(4, 3, 1)  # t, trial, output
    mask = torch.zeros(4, 3, 1, dtype=torch.bool)
    mask[2:, :, 0] = True  # the last two samples
    means = ns.window_means(out, mask)
    assert means[:, 0].tolist() == [(6 + 9) / 2, (7 + 10) / 2, (8 + 11) / 2]


def test_runaways_are_counted_and_the_seed_decides_the_noise(ns, xor_net):
    solver = ns.solver_for("rk4exp", 0.5)
    grid = xor_net.trial(None, torch.float32).batch_size
    calm = ns.measure(xor_net, solver, 2, 0, 1e4)
    assert calm["trials"] == 2 * grid and calm["runaways"] == 0
    assert 0 < calm["peak_hz"] < 1e4 and set(calm["metrics"]) >= {"accuracy"}
    # a bound below the resting rates: every trial is a runaway and none is left to average
    low = ns.measure(xor_net, solver, 2, 0, 1e-3)
    assert low["runaways"] == 2 * grid and math.isnan(low["peak_hz"])
    assert bool(low["mean"].isnan().all())
    again = ns.measure(xor_net, solver, 2, 0, 1e4)
    other = ns.measure(xor_net, solver, 2, 1, 1e4)
    assert torch.equal(again["mean"], calm["mean"])
    assert not torch.equal(other["mean"], calm["mean"])
    assert bool((calm["sem"] > 0).all())


def test_the_command_line_reports_bad_arguments_in_one_line(ns):
    with pytest.raises(SystemExit, match=r"^error: --solvers 'rk4exp:0'"):
        ns.main(["colenv/XOR-v0", "--solvers", "rk4exp:0"])
    with pytest.raises(SystemExit, match=r"^error: --draws 0: must be >= 1"):
        ns.main(["colenv/XOR-v0", "--draws", "0", "--solvers", "rk4exp:0.5"])
    with pytest.raises(SystemExit, match=r"unknown key 'solver.bogus'"):
        ns.main(["colenv/XOR-v0", "solver.bogus=1", "--solvers", "rk4exp:0.5"])
