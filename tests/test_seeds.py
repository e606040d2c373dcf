"""``train.seed`` drives every random choice of a run, the initial weights of every model kind
included: the same seed gives a bit-identical run, two seeds give different initial weights and
different runs; the column jitter that makes seeds matter keeps the columns' resting rates."""

from __future__ import annotations

import pytest
import torch

import colenv.models.registry as registry
from colenv.config import parse
from colenv.models import CTRNN, ColumnNetwork
from colenv.models.column.spec import AreaSpec, ConnectionSpec, NetworkSpec
from trainers import build_model, build_task, load_config, train

# (config, task id for the short-trial overrides of tests/conftest.py): one per model kind
KINDS = {
    "columns": ("colenv/XOR-v0", "colenv/XOR-v0"),
    "columns-decision": ("colenv/Decision-v0", "colenv/Decision-v0"),
    "hopf_mlp": ("colenv/Bifurcation-v0", "colenv/Bifurcation-v0"),
    "ctrnn": ("config/tasks/xor_ctrnn.toml", "colenv/XOR-v0"),
}

# Spontaneous rates (Hz) of the full-scale spiking microcircuit (Potjans & Diesmann 2014,
# reference implementation), L2/3e ... L6i; docs/science.md "What the defaults reproduce": one
# anatomical P&D column rests within a factor 1.31 of them.
PD2014_RATES_HZ = torch.tensor(
    [0.90, 2.97, 4.41, 5.88, 7.57, 8.63, 1.11, 7.83], dtype=torch.float64
)


def initial_params(source: str, seed: int) -> dict[str, torch.Tensor]:
    config = load_config(source, [f"train.seed={seed}", "train.device='cpu'"])
    model = build_model(config, build_task(config), torch.device("cpu"), torch.float32)
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("kind", list(KINDS))
def test_seed_sets_the_initial_weights_of_every_kind(kind):
    source, _ = KINDS[kind]
    a, again, b = (initial_params(source, s) for s in (0, 0, 1))
    assert a.keys() == again.keys() == b.keys()
    assert all(torch.equal(a[k], again[k]) for k in a)  # same seed, same network
    assert any(not torch.equal(a[k], b[k]) for k in a)  # another seed, another one


@pytest.mark.parametrize("kind", list(KINDS))
def test_same_seed_same_run_other_seed_other_run(kind, tiny):
    source, task = KINDS[kind]

    def run(seed: int, name: str):
        result = train(load_config(source, tiny(task, f"train.seed={seed}", f"run_name={name}")))
        assert not result.diverged, result.message
        weights = torch.load(result.checkpoint, weights_only=True)["state_dict"]
        return result.history, weights

    history, weights = run(0, "a")
    history_again, weights_again = run(0, "b")
    history_other, weights_other = run(1, "c")
    assert history == history_again  # every metric of every evaluation, to the bit
    assert weights.keys() == weights_again.keys()
    assert all(torch.equal(weights[k], weights_again[k]) for k in weights)
    assert any(not torch.equal(weights[k], weights_other[k]) for k in weights)
    first, other = history[-1], history_other[-1]
    assert first["loss"] != other["loss"], (first, other)


@pytest.mark.parametrize("task", ["colenv/XOR-v0", "colenv/Decision-v0"])
def test_column_task_configs_jitter_by_default_seeded_by_the_run(task):
    network = load_config(task).model.options.network
    assert network.init_jitter > 0
    assert network.init_seed is None  # the run's seed, no second knob


def test_init_seed_is_an_explicit_override_of_the_run_seed():
    fixed = "model.network.init_seed=7"
    a, b = (initial_params_with("colenv/XOR-v0", s, fixed) for s in (0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = initial_params("colenv/XOR-v0", 7)  # init_seed 7 is the network of train.seed 7
    assert all(torch.equal(a[k], c[k]) for k in a)


def initial_params_with(source: str, seed: int, *extra: str) -> dict[str, torch.Tensor]:
    config = load_config(source, [f"train.seed={seed}", "train.device='cpu'", *extra])
    model = build_model(config, build_task(config), torch.device("cpu"), torch.float32)
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_a_user_kind_gets_the_run_seed(monkeypatch):
    seen: list[int] = []

    class Mine(CTRNN):
        @classmethod
        def from_config(cls, config, *, n_inputs, n_outputs, seed, device=None, dtype=None):
            seen.append(seed)
            return super().from_config(
                config, n_inputs=n_inputs, n_outputs=n_outputs, seed=seed, device=device
            )

    monkeypatch.setitem(registry._REGISTRY, "mine", Mine)
    config = load_config("config/tasks/xor_ctrnn.toml", ["model.kind='mine'", "train.seed=5"])
    build_model(config, build_task(config), torch.device("cpu"), torch.float32)
    assert seen == [5]


def _jittered_pd_column(jitter: float, seed: int) -> ColumnNetwork:
    """One P&D-sized column whose every recurrent weight trains, so every one is jittered."""
    spec = NetworkSpec(
        areas=(AreaSpec("a", 1, "pd2014"),),
        n_inputs=1,
        recurrent=ConnectionSpec(trainable=True),
        parametrization="log",
        init_jitter=jitter,
    )
    return ColumnNetwork(spec=spec, seed=seed, dtype=torch.float64)


def test_default_jitter_keeps_the_p_and_d_resting_rates():
    jitter = NetworkSpec().init_jitter
    anatomical = _jittered_pd_column(0.0, 0)
    rest0 = anatomical.rest_state()[16:]
    assert float((rest0 / PD2014_RATES_HZ).log().abs().max()) < torch.tensor(1.31).log()
    for seed in range(10):
        net = _jittered_pd_column(jitter, seed)
        change = (net.recurrent.effective() / anatomical.recurrent.effective()).detach()
        on = anatomical.recurrent.mask.bool()
        assert float(change[on].log().std()) > 0.5 * jitter  # the weights did move ...
        rest = net.rest_state()[16:]  # ... the resting rates did not
        assert torch.allclose(rest, rest0, rtol=1e-5)
        assert float((rest / PD2014_RATES_HZ).log().abs().max()) < torch.tensor(1.31).log()


def test_untilted_jitter_would_leave_the_p_and_d_rest_state():
    """What the tilt guards against: a plain 5 % log-normal jitter of the recurrent weights
    (the same factors with the tilt taken out) moves some resting rate by more than 1.5x."""
    anatomical = _jittered_pd_column(0.0, 0)
    rest0 = anatomical.rest_state()[16:]
    moved = 0
    for seed in range(3):
        net = _jittered_pd_column(0.0, 0)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            noise = torch.randn(net.recurrent.weight.shape, generator=gen, dtype=torch.float64)
            net.recurrent.weight.add_(0.05 * noise * net.recurrent.train_mask)
        try:
            rest = net.rest_state()[16:]
        except Exception:  # no rest state at all
            moved += 1
            continue
        moved += int(float((rest / rest0).log().abs().max()) > torch.tensor(1.5).log())
    assert moved >= 2


@pytest.mark.parametrize("task", ["colenv/XOR-v0", "colenv/Decision-v0"])
def test_task_networks_keep_their_rest_state_under_the_default_jitter(task):
    raw = load_config(task).model.options.network.model_dump()
    anatomical = ColumnNetwork(
        spec=parse(NetworkSpec, {**raw, "init_jitter": 0.0}), dtype=torch.float64
    )
    rest0 = anatomical.rest_state()
    for seed in range(3):
        net = ColumnNetwork(spec=parse(NetworkSpec, raw), seed=seed, dtype=torch.float64)
        params = dict(net.named_parameters())
        assert any(
            not torch.equal(params[k], p) for k, p in anatomical.named_parameters()
        )  # jittered ...
        assert torch.allclose(net.rest_state(), rest0, rtol=1e-5, atol=1e-9)  # ... same rest
