"""SDE rollouts fail loudly: runaways raise DivergenceError naming the time and population on
every path (torchdiffeq, torchsde, the fast torch schemes, the native kernel), and bad noise
settings or SDE methods a model cannot run are ConfigErrors naming the key, before any work."""

import re
from pathlib import Path

import pytest
import torch

from colenv import DivergenceError, SolverConfig, rollout
from colenv.errors import ConfigError
from colenv.models import AreaSpec, ColumnNetwork, ConnectionSpec, NetworkSpec
from colenv.models.column import integrators, native
from colenv.solve import MAX_RATE_HZ

TASKS = Path(__file__).resolve().parents[1] / "config" / "tasks"
RAN_AWAY = (
    r"rollout ran away: the rate of (?P<pop>\w+\[\d\]\.L\w+) in trial \d+ is (?P<hz>\S+) Hz at "
    r"t = (?P<t>\d+\.\d+) ms, beyond solver\.max_rate_hz = 10000 .*"
)


pytestmark = pytest.mark.usefixtures("one_thread")  # many small ops


def noisy_parity(noise_std: float = 2.0) -> ColumnNetwork:
    """A user-built 13-column chain (8 -> 4 -> 1, lateral on) with noise_std 2."""
    spec = NetworkSpec(
        areas=(AreaSpec("a", 8), AreaSpec("b", 4), AreaSpec("c", 1)),
        n_inputs=4,
        lateral=ConnectionSpec(enabled=True),
        noise_std=noise_std,
    )
    return ColumnNetwork(spec=spec)


@pytest.mark.parametrize("method", ["euler", "milstein"])
def test_torchsde_runaway_at_half_ms_is_an_error(method):
    """Euler-Maruyama (and Milstein, the same scheme for additive noise) at 0.5 ms leaves the
    stability region of the network's fast E-I modes once the stimulus is on and returns finite
    rates of 10^4-10^8 Hz; the rollout must raise, naming when and which population."""
    torch.manual_seed(0)
    net = noisy_parity()
    T, B = 141, 4
    stim = torch.zeros(T, B, 4)
    stim[100:] = 15.0
    t = torch.arange(T, dtype=torch.float32)
    with torch.no_grad(), pytest.raises(DivergenceError) as err:
        rollout(net, stim, t, SolverConfig(method, sde=True, step_ms=0.5), seed=0)
    found = re.fullmatch(RAN_AWAY, str(err.value))
    assert found, str(err.value)
    assert float(found.group("t")) > 100.0  # after the stimulus came on
    assert float(found.group("hz")) > MAX_RATE_HZ


def test_fast_sde_stays_physiological_on_the_same_network():
    """The exponential scheme with the same noise at the same step does not run away."""
    torch.manual_seed(0)
    net = noisy_parity()
    T, B = 141, 4
    stim = torch.zeros(T, B, 4)
    stim[100:] = 15.0
    t = torch.arange(T, dtype=torch.float32)
    with torch.no_grad():
        states = rollout(net, stim, t, SolverConfig("rk4exp", sde=True), seed=0).states
    assert float(net.rates(states).max()) < 2000.0


def runaway_xor():
    """An XOR-like network with its input weights x 1e6 and noise: the driven populations
    climb to 1e7 Hz and beyond within a few ms, all finite."""
    spec = NetworkSpec(
        areas=(AreaSpec("ab", 2), AreaSpec("c", 1)),
        n_inputs=2,
        input_mode="one_to_one",
        noise_std=1.0,
    )
    net = ColumnNetwork(spec=spec)
    y0 = net.initial_state(2)
    with torch.no_grad():
        net.input.weight.mul_(1e6)
    return net, y0


NATIVE = pytest.mark.skipif(not native.available(), reason="native kernel unavailable")
RUNAWAY = [
    pytest.param(SolverConfig("rk4"), id="torchdiffeq-rk4"),
    pytest.param(SolverConfig("euler", sde=True, step_ms=0.25), id="torchsde-euler"),
    pytest.param(SolverConfig("milstein", sde=True, step_ms=0.25), id="torchsde-milstein"),
    pytest.param(SolverConfig("expeuler", sde=True), id="fast-sde-expeuler"),
    pytest.param(SolverConfig("rk4exp", sde=True, fast={"kernel": "torch"}), id="fast-sde-torch"),
    pytest.param(
        SolverConfig("rk4exp", sde=True, fast={"kernel": "native"}), id="native-sde", marks=NATIVE
    ),
]


@pytest.mark.parametrize("solver", RUNAWAY)
def test_runaway_raises_on_every_noisy_path(solver):
    net, y0 = runaway_xor()
    stim = torch.full((6, 2, 2), 20.0)
    t = torch.arange(6, dtype=torch.float32)
    with torch.no_grad(), pytest.raises(DivergenceError) as err:
        rollout(net, stim, t, solver, y0=y0, seed=0)
    found = re.fullmatch(RAN_AWAY, str(err.value))
    assert found, str(err.value)
    assert found.group("pop").startswith(("ab[", "c["))


def test_native_sde_runaway_with_gradient_is_named_too():
    """The native adjoint path (a gradient is needed) checks the same way."""
    net, y0 = runaway_xor()
    stim = torch.full((6, 2, 2), 20.0)
    t = torch.arange(6, dtype=torch.float32)
    cfg = SolverConfig("rk4exp", sde=True)
    with pytest.raises(DivergenceError, match=r"ran away: the rate of .* at t = \d"):
        rollout(net, stim, t, cfg, y0=y0, seed=0)


@pytest.mark.parametrize(
    ("value", "why"),
    [(-1.0, "greater than or equal to 0"), (float("nan"), "finite"), (float("inf"), "finite")],
)
def test_bad_noise_std_is_a_config_error_naming_the_key(value, why):
    with pytest.raises(ConfigError, match=rf"network\.noise_std = {value}: .*{why}"):
        ColumnNetwork(spec={"noise_std": value})
    from trainers.config import load_config

    with pytest.raises(ConfigError, match=rf"model\.network\.noise_std = {value}: .*{why}"):
        load_config(TASKS / "xor.toml", [f"model.network.noise_std={value}"])


@pytest.mark.parametrize("config", ["bifurcation.toml", "xor_ctrnn.toml"])
def test_fast_sde_on_a_model_without_a_fast_scheme_fails_in_preflight(config):
    """hopf_mlp and ctrnn have no fast scheme: sde with rk4exp is refused by the preflight
    (before a run folder or any training), naming the method and what the model allows."""
    from trainers.config import load_config
    from trainers.run import preflight

    cfg = load_config(TASKS / config, ["solver.method=rk4exp", "solver.sde=true"])
    with pytest.raises(ConfigError, match=r"solver method 'rk4exp' needs .* sde=true euler, "):
        preflight(cfg)


def test_torchsde_method_on_dynamics_without_a_diffusion_is_refused():
    """A model whose dynamics have no g: a ConfigError naming what is missing, before a step."""

    class Drift(torch.nn.Module):
        nfe = 0

        def forward(self, t, y):
            return -y

        def set_grid(self, t_s):
            pass

    class Model(torch.nn.Module):
        def prepare(self, stimulus):
            return Drift()

        def initial_state(self, batch):
            return torch.ones(batch, 3)

    stim = torch.zeros(5, 2, 1)
    t = torch.arange(5, dtype=torch.float32)
    with pytest.raises(ConfigError, match=r"sde=true needs dynamics with a diffusion .* lack f, g"):
        rollout(Model(), stim, t, SolverConfig("euler", sde=True), seed=0)


def test_shipped_config_with_compile_and_sde_runs_native_without_compiling(monkeypatch):
    """xor.toml's [solver.fast] compile = true with solver.sde = true: the preflight (a real
    rollout) goes to the native kernel on CPU, and nothing is compiled."""
    if not native.available():
        pytest.skip("native kernel unavailable")
    from trainers.config import load_config
    from trainers.run import preflight

    calls = []
    real = native.rk4exp_rollout

    def spy(*args, **kw):
        calls.append(kw.get("noise") is not None)
        return real(*args, **kw)

    monkeypatch.setattr(native, "rk4exp_rollout", spy)
    before = len(integrators._INTERVAL_CACHE)
    cfg = load_config(TASKS / "xor.toml", ["solver.sde=true", "train.device=cpu"])
    assert cfg.solver.fast.compile and cfg.solver.sde
    preflight(cfg)
    assert calls and all(calls)
    assert len(integrators._INTERVAL_CACHE) == before
