"""rollout(): exact solutions, convergence orders, batching, gradients, SDE, guards."""

import bisect
import math
import sys

import pytest
import torch
from torch import nn

from colenv import (
    AdaptiveOptions,
    DivergenceError,
    FastOptions,
    SolverConfig,
    TorchsdeOptions,
    rollout,
)
from colenv.config import parse
from colenv.errors import ConfigError
from colenv.models import AreaSpec, ColumnNetwork, ConnectionSpec, NetworkSpec

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class LinearNetwork(nn.Module):
    """dy/dt = A y + B u(t), u piecewise constant: a linear rate network with an exact solution."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.a = nn.Parameter(a)
        self.b = nn.Parameter(b)

    def initial_state(self, batch):
        return torch.ones(batch, self.a.shape[0], dtype=self.a.dtype)

    def describe_state_index(self, i):
        return f"y{i}"

    def prepare(self, stimulus):
        return _LinearDynamics(self, stimulus @ self.b.t())

    def exact(self, y0, stimulus, dt_s):
        """y_{k+1} = exp(M dt) [y_k; 1] with M = [[A, B u_k], [0, 0]] (matrix exponential)."""
        n = self.a.shape[0]
        ys = [y0]
        y = y0
        with torch.no_grad():
            for k in range(stimulus.shape[0] - 1):
                out = []
                for bi in range(y.shape[0]):
                    m = torch.zeros(n + 1, n + 1, dtype=y.dtype)
                    m[:n, :n] = self.a
                    m[:n, n] = self.b @ stimulus[k, bi]
                    e = torch.linalg.matrix_exp(m * dt_s)
                    out.append(e[:n, :n] @ y[bi] + e[:n, n])
                y = torch.stack(out)
                ys.append(y)
        return torch.stack(ys)


class _LinearDynamics(nn.Module):
    noise_type, sde_type = "diagonal", "ito"

    def __init__(self, net, drive):
        super().__init__()
        self.net, self.drive, self.nfe = net, drive, 0

    def set_grid(self, t_s):
        self.grid = t_s.tolist()

    def forward(self, t, y):
        self.nfe += 1
        k = min(
            max(bisect.bisect_right(self.grid, float(torch.as_tensor(t).detach())) - 1, 0),
            len(self.drive) - 1,
        )
        return y @ self.net.a.t() + self.drive[k]


def linear_problem(batch=3, dtype=torch.float64):
    a = torch.tensor([[-50.0, 0.0, 0.0], [0.0, -5.0, -20.0], [0.0, 20.0, -5.0]], dtype=dtype)
    b = torch.tensor([[40.0, 0.0], [0.0, 10.0], [5.0, 5.0]], dtype=dtype)
    net = LinearNetwork(a, b)
    T = 101  # 400 ms on a 4 ms grid, input switching on the grid
    gen = torch.Generator().manual_seed(0)
    stim = torch.rand(T, batch, 2, generator=gen, dtype=dtype)
    t_ms = torch.arange(T, dtype=dtype) * 4.0
    y0 = net.initial_state(batch)
    return net, stim, t_ms, net.exact(y0, stim, 4e-3)


TIGHT = AdaptiveOptions(rtol=1e-10, atol=1e-10)
ORDERS = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}


@pytest.mark.parametrize("method", sorted(ORDERS))
def test_fixed_step_convergence_order(method):
    net, stim, t_ms, exact = linear_problem()
    errors = []
    for step in (2.0, 1.0, 0.5):
        out = rollout(net, stim, t_ms, SolverConfig(method, step_ms=step))
        errors.append(float((out.states.detach() - exact).abs().max()))
    order = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(abs(o - ORDERS[method]) < 0.3 for o in order), (errors, order)


def test_dopri5_against_exact_solution():
    net, stim, t_ms, exact = linear_problem()
    out = rollout(net, stim, t_ms, SolverConfig("dopri5", adaptive=TIGHT))
    assert (out.states - exact).abs().max() < 1e-7
    assert out.stats.nfe > 0 and out.stats.steps is None


def test_adjoint_gradients_equal_direct_gradients():
    net, stim, t_ms, _ = linear_problem()
    grads = []
    for adjoint in (False, True):
        net.zero_grad()
        cfg = SolverConfig("dopri5", adaptive=TIGHT, adjoint=adjoint)
        out = rollout(net, stim, t_ms, cfg)
        out.states[-20:].pow(2).sum().backward()
        grads.append(torch.cat([net.a.grad.flatten(), net.b.grad.flatten()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-8)


def small_column_net(dtype=torch.float64, noise_std=0.0):
    spec = NetworkSpec(
        areas=(AreaSpec("a", 2), AreaSpec("b", 1)),
        n_inputs=2,
        input_mode="one_to_one",
        lateral=ConnectionSpec(enabled=True, trainable=True),
        feedforward=ConnectionSpec(trainable=True),
        noise_std=noise_std,
    )
    return ColumnNetwork(spec=spec, dtype=dtype)


def column_trial(batch=4, T=61, dtype=torch.float64):
    stim = torch.zeros(T, batch, 2, dtype=dtype)
    stim[20:, :, 0] = torch.tensor([0.0, 20.0, 0.0, 20.0][:batch], dtype=dtype)
    stim[20:, :, 1] = torch.tensor([0.0, 0.0, 20.0, 20.0][:batch], dtype=dtype)
    return stim, torch.arange(T, dtype=dtype)


@pytest.mark.parametrize("method", ["rk4", "dopri5", "rk4exp"])
def test_batched_rollout_equals_per_trial(method):
    net = small_column_net()
    stim, t = column_trial()
    tight = {"adaptive": AdaptiveOptions(rtol=1e-9, atol=1e-9)} if method == "dopri5" else {}
    cfg = SolverConfig(method, step_ms=0.5, **tight)
    full = rollout(net, stim, t, cfg).states
    for b in range(stim.shape[1]):
        one = rollout(net, stim[:, b : b + 1], t, cfg).states
        assert torch.allclose(one[:, 0], full[:, b], rtol=1e-7, atol=1e-7)


def test_gradients_match_finite_differences():
    net = small_column_net()
    stim, t = column_trial(T=41)
    y0 = net.initial_state(4)
    cfg = SolverConfig("rk4", step_ms=0.5)

    def loss():
        return net.readout(rollout(net, stim, t, cfg, y0=y0).states)[-10:].sum()

    loss().backward()
    for conn, (i, j) in [
        (net.feedforward, (16 + 2, 0)),
        (net.lateral, (9, 0)),
        (net.lateral, (1, 8)),
    ]:
        g = float(conn.weight.grad[i, j])
        eps = 1e-4 * max(1.0, abs(float(conn.weight[i, j].detach())))
        with torch.no_grad():
            conn.weight[i, j] += eps
            up = float(loss())
            conn.weight[i, j] -= 2 * eps
            down = float(loss())
            conn.weight[i, j] += eps
        fd = (up - down) / (2 * eps)
        assert g != 0 and math.isclose(g, fd, rel_tol=1e-4, abs_tol=1e-9), (g, fd)


def test_sde_with_zero_noise_equals_ode():
    net = small_column_net(noise_std=0.0)
    stim, t = column_trial()
    ode = rollout(net, stim, t, SolverConfig("euler", step_ms=0.25)).states
    sde = rollout(net, stim, t, SolverConfig("euler", step_ms=0.25, sde=True), seed=1).states
    assert torch.allclose(ode, sde, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", ["euler", "milstein", "srk"])
def test_sde_is_seeded(method):
    net = small_column_net(noise_std=2.0)
    stim, t = column_trial(T=21)
    cfg = SolverConfig(method, step_ms=0.5, sde=True)
    a = rollout(net, stim, t, cfg, seed=3).states
    b = rollout(net, stim, t, cfg, seed=3).states
    c = rollout(net, stim, t, cfg, seed=4).states
    assert torch.equal(a, b) and not torch.allclose(a, c)
    with pytest.raises(ValueError, match="seed= or generator="):
        rollout(net, stim, t, cfg)


def test_divergence_guard_names_time_and_population():
    net = small_column_net()
    with torch.no_grad():
        net.recurrent.weight[0:8:2, 0:8:2] *= 50.0  # runaway excitation in column a[0]
    stim, t = column_trial(T=200)
    y0 = torch.zeros(4, net.state_size, dtype=torch.float64)
    # the rate bound (default 1e4 Hz) stops it first, naming the population
    with pytest.raises(
        DivergenceError, match=r"rate of a\[0\]\.L\w+ in trial \d+ is .* Hz at t = .* 10000"
    ):
        rollout(net, stim, t, SolverConfig("euler", step_ms=1.0), y0=y0)
    # with the bound out of reach, the first NaN/inf state is named
    cfg = SolverConfig("euler", step_ms=1.0, max_rate_hz=sys.float_info.max)
    with pytest.raises(
        DivergenceError, match=r"state a\[0\]\.L\w+ [var] of trial \d+ is .* at t = "
    ):
        rollout(net, stim, t, cfg, y0=y0)
    raw = rollout(net, stim, t, SolverConfig("euler", step_ms=1.0, check_finite=False), y0=y0)
    assert not torch.isfinite(raw.states).all()


def test_check_finite_is_not_fooled_by_an_overflowing_sum():
    """check_finite sums the states first; a sum that overflows on finite states is no error,
    and one NaN among them still is."""
    from colenv.solve import check_finite

    net = small_column_net()
    t = torch.arange(3, dtype=torch.float64)
    states = torch.full((3, 2, net.state_size), 3e38, dtype=torch.float32)
    assert not torch.isfinite(states.sum())
    check_finite(states, t, net)
    states[1, 0, 5] = float("nan")
    with pytest.raises(DivergenceError, match="trial 0 is nan at t = 1.000 ms"):
        check_finite(states, t, net)


def test_bad_solver_config_lists_allowed_values():
    with pytest.raises(
        ConfigError, match="solver.method = 'rk5': unknown method 'rk5'; allowed: euler"
    ):
        SolverConfig("rk5")
    with pytest.raises(
        ConfigError, match="method 'dopri5' is an ODE method; with sde=true allowed: .*milstein"
    ):
        SolverConfig("dopri5", sde=True)
    with pytest.raises(ConfigError, match="'milstein' is an SDE method"):
        SolverConfig("milstein")
    with pytest.raises(
        ConfigError, match="unknown key 'solver.stepsize'; allowed: method, step_ms"
    ):
        parse(SolverConfig, {"stepsize": 1.0}, where="solver")
    with pytest.raises(ConfigError, match="solver.step_ms = 0: .*greater than 0"):
        SolverConfig(step_ms=0)
    with pytest.raises(ConfigError, match="solver.adaptive.rtol = -1"):
        SolverConfig("dopri5", adaptive={"rtol": -1})
    net = small_column_net()
    stim, t = column_trial(T=5)
    with pytest.raises(ValueError, match="step_ms=0.3 must divide"):
        rollout(net, stim, t, SolverConfig("rk4", step_ms=0.3))
    with pytest.raises(ValueError, match="stimulus must be"):
        rollout(net, stim[..., :1], t, SolverConfig())


def test_positional_method_and_parse_build_the_same_config():
    cfg = SolverConfig("rk4exp", step_ms=0.25, fast=FastOptions(compile=True))
    raw = {"method": "rk4exp", "step_ms": 0.25, "fast": {"compile": True}}
    assert parse(SolverConfig, raw, where="solver") == cfg
    assert SolverConfig(**cfg.model_dump()) == cfg
    with pytest.raises(ConfigError, match="got method twice"):
        SolverConfig("rk4", method="rk4exp")
    with pytest.raises(ConfigError, match="takes 1 positional"):
        SolverConfig("rk4", 0.5)


@pytest.mark.parametrize(
    "method, sde, tables",
    [
        ("rk4", False, ()),
        ("euler", False, ()),
        ("dopri5", False, ("adaptive",)),
        ("rk4exp", False, ("fast",)),
        ("exprk2", True, ("fast",)),
        ("euler", True, ("torchsde",)),
        ("srk", True, ("torchsde",)),
    ],
)
def test_families_name_the_option_tables_of_a_method(method, sde, tables):
    assert SolverConfig.families(method, sde) == tables


def test_families_of_an_unknown_method_list_the_allowed():
    with pytest.raises(ConfigError, match="unknown ODE method 'rk5'; allowed: euler, .*rk4exp"):
        SolverConfig.families("rk5", False)
    with pytest.raises(ConfigError, match="unknown SDE method 'dopri5' .*allowed: euler, milstein"):
        SolverConfig.families("dopri5", True)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"method": "rk4", "fast": {"compile": True}},
            "solver.fast applies to the fast methods .* not method 'rk4'",
        ),
        (
            {"method": "rk4exp", "adaptive": {"rtol": 1e-3}},
            "solver.adaptive applies to torchdiffeq's adaptive methods .* not method 'rk4exp'",
        ),
        (
            {"method": "dopri5", "torchsde": {"adaptive": True}},
            "solver.torchsde applies to torchsde's methods",
        ),
        (
            {"method": "euler", "sde": True, "adaptive": {"atol": 1e-3}},
            "solver.adaptive applies .* not method 'euler' with sde=true",
        ),
        (
            {"method": "rk4exp", "sde": True, "torchsde": {"rtol": 1e-3}},
            "solver.torchsde applies .* not method 'rk4exp' with sde=true",
        ),
    ],
)
def test_option_table_that_does_not_apply_is_an_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SolverConfig(**kwargs)
    with pytest.raises(ConfigError, match=message):
        parse(SolverConfig, kwargs, where="solver")


def test_default_option_tables_are_allowed_for_every_method():
    for method in ("rk4", "dopri5", "rk4exp"):
        cfg = SolverConfig(method, adaptive={}, fast=FastOptions(), torchsde=TorchsdeOptions())
        assert cfg.method == method
    assert SolverConfig("euler", sde=True, torchsde={"adaptive": True}).torchsde.adaptive


@pytest.mark.parametrize(
    "key, value, moved",
    [
        ("compile", True, "solver.fast.compile"),
        ("checkpoint_every", 5, "solver.fast.checkpoint_every"),
        ("backward", "autograd", "solver.fast.backward"),
        ("unroll", 2, "solver.fast.unroll"),
        ("kernel", "torch", "solver.fast.kernel"),
        ("max_steps", 10, "solver.adaptive.max_steps"),
        ("rtol", 1e-3, "solver.adaptive.rtol"),
    ],
)
def test_old_flat_keys_say_where_they_moved(key, value, moved):
    raw = {"method": "rk4exp" if "fast" in moved else "dopri5", key: value}
    with pytest.raises(ConfigError, match=f"solver.{key} moved to {moved}"):
        SolverConfig(**raw)
    with pytest.raises(ConfigError, match=f"solver.{key} moved to {moved}"):
        parse(SolverConfig, raw, where="solver")


def test_moved_tolerance_names_both_tables_where_the_method_reads_neither():
    with pytest.raises(
        ConfigError, match="solver.rtol moved to solver.adaptive.rtol or solver.torchsde.rtol"
    ):
        SolverConfig("rk4exp", rtol=1e-3)


def test_old_sde_keys_say_where_they_moved():
    with pytest.raises(ConfigError, match="solver.atol moved to solver.torchsde.atol"):
        SolverConfig("euler", sde=True, atol=1e-3)
    with pytest.raises(ConfigError, match="solver.adaptive .* moved to solver.torchsde.adaptive"):
        parse(SolverConfig, {"method": "euler", "sde": True, "adaptive": True}, where="solver")


def test_replace_validates_and_merges_option_tables():
    cfg = SolverConfig("rk4exp", fast=FastOptions(compile=True, unroll=2, kernel="torch"))
    half = cfg.replace(step_ms=0.25, fast={"compile": False})
    assert half.step_ms == 0.25 and half.fast == FastOptions(unroll=2, kernel="torch")
    with pytest.raises(ConfigError, match="solver.fast applies"):
        cfg.replace(method="rk4")


def test_fast_method_on_a_model_without_a_fast_scheme_is_a_config_error():
    net, stim, t_ms, _ = linear_problem()
    with pytest.raises(
        ConfigError,
        match=r"solver method 'rk4exp' needs a model that provides its own fast scheme "
        r"\(Dynamics.fast_rollout\); LinearNetwork provides none; use one of euler, .*dopri5",
    ):
        rollout(net, stim, t_ms, SolverConfig("rk4exp"))


def test_sde_on_dynamics_without_diffusion_is_a_config_error():
    net, stim, t_ms, _ = linear_problem()
    with pytest.raises(ConfigError, match=r"sde=true needs dynamics with a diffusion .* lack f, g"):
        rollout(net, stim, t_ms, SolverConfig("euler", sde=True), seed=0)


def test_model_without_describe_state_index_still_reports_divergence():
    """describe_state_index is optional: the divergence error then gives the state's index."""
    a, b = torch.eye(3, dtype=torch.float64) * 1e6, torch.ones(3, 2, dtype=torch.float64)
    linear = LinearNetwork(a, b)  # grows 1e6 / s: overflows within the trial

    class Unnamed(nn.Module):
        def initial_state(self, batch):
            return linear.initial_state(batch)

        def prepare(self, stimulus):
            return linear.prepare(stimulus)

    _, stim, t_ms, _ = linear_problem()
    assert not hasattr(Unnamed(), "describe_state_index")
    with pytest.raises(DivergenceError, match=r"state \d of trial \d is"):
        rollout(Unnamed(), stim, t_ms, SolverConfig("euler", step_ms=4.0))


def test_checkpoint_every_is_validated():
    cfg = SolverConfig("rk4exp", fast=FastOptions(checkpoint_every=50))
    assert cfg.fast.checkpoint_every == 50
    with pytest.raises(ConfigError, match="solver.fast applies to the fast methods"):
        SolverConfig("rk4", fast={"checkpoint_every": 50})
    with pytest.raises(ConfigError, match="solver.fast.checkpoint_every = -1"):
        SolverConfig("rk4exp", fast={"checkpoint_every": -1})
    with pytest.raises(ConfigError, match="checkpoint_every = 5: with sde=true it needs"):
        SolverConfig("exprk2", sde=True, fast={"checkpoint_every": 5})
