"""ColumnNetwork: layout, masks, Dale's law, batched drift, rest state."""

import pytest
import torch

from colenv.config import parse
from colenv.models import AreaSpec, ColumnNetwork, ConfigError, ConnectionSpec, NetworkSpec
from colenv.solve import SolverConfig, rollout


def parse_network(raw: dict) -> NetworkSpec:
    """The [model.network] table of a training config as a NetworkSpec."""
    return parse(NetworkSpec, raw, where="network")


PARITY = NetworkSpec(
    areas=(AreaSpec("a1", 8), AreaSpec("a2", 4), AreaSpec("out", 1)),
    n_inputs=4,
    lateral=ConnectionSpec(enabled=True, trainable=True),
    feedforward=ConnectionSpec(trainable=True),
)


def test_layout_of_parity_network():
    net = ColumnNetwork(spec=PARITY)
    assert net.n_pop == 104 and net.state_size == 312 and net.n_outputs == 1
    assert net.population_names[0] == "a1[0].L23e"
    assert net.population_names[-1] == "out[0].L6i"
    # readout is L2/3e of the single output column
    assert net.readout_index.tolist() == [96]


def test_connection_masks_follow_the_layout():
    net = ColumnNetwork(spec=PARITY)
    rec, lat, ff = (m.mask for m in (net.recurrent, net.lateral, net.feedforward))
    # recurrent: only within columns (block diagonal)
    assert rec[0:8, 8:16].abs().sum() == 0 and rec[0:8, 0:8].sum() > 50
    # lateral: L2/3e of column 0 onto L2/3i of column 1 of the same area only
    assert lat[9, 0] == 1 and lat[1, 0] == 0 and lat[8 * 8 + 1, 0] == 0
    assert int(lat.sum()) == 8 * 7 + 4 * 3
    # feedforward: a1 L2/3e -> a2 L4e/L4i; nothing from a2 back to a1, nothing skipping an area
    a2_l4e = 8 * 8 + 2
    assert ff[a2_l4e, 0] == 1 and ff[a2_l4e + 1, 0] == 1 and ff[0, 8 * 8] == 0
    assert ff[96 + 2, 0] == 0
    # input: the 4 channels reach L4e/L4i of the first area only
    assert net.input.mask[2].sum() == 4 and net.input.mask[8 * 8 + 2].sum() == 0


def test_one_to_one_input():
    spec = NetworkSpec(areas=(AreaSpec("a", 2),), n_inputs=2, input_mode="one_to_one")
    m = ColumnNetwork(spec=spec).input.mask
    assert m[2, 0] == 1 and m[2, 1] == 0 and m[10, 1] == 1 and m[10, 0] == 0
    with pytest.raises(ConfigError, match="one_to_one"):
        NetworkSpec(areas=(AreaSpec("a", 3),), n_inputs=2, input_mode="one_to_one")


def test_projection_enforces_dale_and_masks():
    net = ColumnNetwork(spec=PARITY)
    with torch.no_grad():
        for conn in net.connections().values():
            conn.weight.normal_()
    net.project_()
    for conn in net.connections().values():
        w = conn.weight
        assert (w * (1 - conn.mask)).abs().sum() == 0
        assert (conn.sign * w >= 0).all()


def test_only_configured_entries_train():
    spec = NetworkSpec(
        areas=(AreaSpec("a", 2),),
        n_inputs=2,
        input_mode="one_to_one",
        recurrent=ConnectionSpec(trainable=(("L23e", "L23e"),)),
        lateral=ConnectionSpec(enabled=True, trainable=True),
        feedforward=ConnectionSpec(enabled=False),
    )
    net = ColumnNetwork(spec=spec)
    assert not net.input.weight.requires_grad and not net.feedforward.weight.requires_grad
    loss = net.weight_matrix().sum()
    loss.backward()
    g = net.recurrent.weight.grad
    assert g[0, 0] != 0 and g[8, 8] != 0
    assert g.abs().sum() == g[0, 0].abs() + g[8, 8].abs()


def test_spec_errors_name_the_key():
    with pytest.raises(ConfigError, match="unknown key 'network.colums'; allowed: areas, n_inputs"):
        parse_network({"colums": 3})
    with pytest.raises(ConfigError, match="n_columns = 0"):
        NetworkSpec(areas=(AreaSpec("a", 0),))
    with pytest.raises(ConfigError, match="unknown population 'L7e'"):
        NetworkSpec(readout="L7e")
    with pytest.raises(ConfigError, match="unknown key 'network.lateral.weight'; allowed: enabled"):
        parse_network({"lateral": {"weight": 1.0}})
    with pytest.raises(ConfigError, match="unknown area 'v9'"):
        ColumnNetwork(spec=NetworkSpec(areas=(AreaSpec("a", 1, "v9"),)))


def test_spec_from_a_toml_table():
    spec = parse_network(
        {
            "areas": [{"name": "a", "n_columns": 2}, {"name": "b", "n_columns": 1}],
            "n_inputs": 2,
            "lateral": {"enabled": True, "trainable": [["L23e", "L23i"]]},
        }
    )
    assert spec.n_columns == 3 and spec.lateral.trainable == (("L23e", "L23i"),)


def test_drift_is_batched_without_mixing_trials():
    net = ColumnNetwork(spec=PARITY, dtype=torch.float64)
    stim = torch.rand(5, 3, 4, dtype=torch.float64) * 20
    dyn = net.prepare(stim)
    y = net.initial_state(3) + torch.randn(3, net.state_size, dtype=torch.float64)
    full = dyn(torch.tensor(0.001), y)
    for b in range(3):
        one = net.prepare(stim[:, b : b + 1])
        assert torch.allclose(one(torch.tensor(0.001), y[b : b + 1]), full[b : b + 1])


def test_rest_state_is_a_fixed_point():
    net = ColumnNetwork(spec=PARITY, dtype=torch.float64)
    y = net.initial_state(2)
    dyn = net.prepare(torch.zeros(2, 2, 4, dtype=torch.float64))
    dy = dyn(torch.tensor(0.0), y)
    assert dy.abs().max() < 1e-6
    rates = net.rates(y)
    assert (rates >= 0).all() and (rates < 50).all()


def test_isolated_column_settles_to_steady_state():
    """Kicked away from rest, an isolated column at background drive relaxes back."""
    net = ColumnNetwork(spec=NetworkSpec(n_inputs=1), dtype=torch.float64)
    rest = net.initial_state(1)
    y0 = rest.clone()
    y0[0, :8] += torch.tensor([2.0, -1.0, 3.0, 1.0, -2.0, 2.0, 1.0, -1.0], dtype=torch.float64)
    t = torch.arange(0, 301, dtype=torch.float64)
    out = rollout(net, torch.zeros(301, 1, 1, dtype=torch.float64), t, SolverConfig(), y0=y0)
    r = net.rates(out.states)
    assert (r - net.rates(rest)).abs().max() > 0.5  # the kick moved the rates
    assert (r[-1] - net.rates(rest)).abs().max() < 1e-3
    assert (r[-1] - r[-50]).abs().max() < 1e-4  # stationary


def test_log_parametrization_keeps_dale_and_starts_at_the_same_weights():
    lin = ColumnNetwork(spec=PARITY)
    log_spec = NetworkSpec(**{**PARITY.__dict__, "parametrization": "log"})
    log = ColumnNetwork(spec=log_spec)
    assert torch.allclose(lin.weight_matrix(), log.weight_matrix())
    with torch.no_grad():
        for conn in log.connections().values():
            conn.weight.normal_(0.0, 3.0)
    log.project_()
    for conn in log.connections().values():
        w = conn.effective()
        assert (conn.sign * w >= 0).all() and (w * (1 - conn.mask)).abs().sum() == 0
    with pytest.raises(ConfigError, match="parametrization = 'exp': .*'linear' or 'log'"):
        NetworkSpec(parametrization="exp")


def test_input_trains_only_the_listed_targets():
    spec = parse_network(
        {
            "areas": [{"name": "a", "n_columns": 2}],
            "n_inputs": 2,
            "input_mode": "one_to_one",
            "input": {
                "pairs": [["input", "L4e"], ["input", "L4i"], ["input", "L23e"]],
                "trainable": [["input", "L23e"]],
            },
        }
    )
    net = ColumnNetwork(spec=spec)
    net.input.effective().sum().backward()
    g = net.input.weight.grad
    assert g[0, 0] != 0 and g[8, 1] != 0  # L2/3e of each column from its own channel
    assert g[2].abs().sum() == 0 and g[3].abs().sum() == 0  # L4e, L4i fixed


def test_rate_ceiling_bounds_a_runaway():
    from colenv.models import load_params

    spec = NetworkSpec(areas=(AreaSpec("a", 1),), n_inputs=1)
    params = load_params(overrides={"transfer.max_rate_hz": 500.0})
    net = ColumnNetwork(params, spec, dtype=torch.float64)
    with torch.no_grad():
        net.recurrent.weight[0:8:2, 0:8:2] *= 50.0  # runaway excitation
    stim = torch.zeros(201, 1, 1, dtype=torch.float64)
    t = torch.arange(201, dtype=torch.float64)
    y0 = torch.zeros(1, net.state_size, dtype=torch.float64)
    out = rollout(net, stim, t, SolverConfig("rk4exp", step_ms=0.5), y0=y0)
    r = net.rates(out.states)
    assert torch.isfinite(r).all() and r.max() <= 500.0 and r.max() > 400.0


@pytest.mark.parametrize("parametrization", ["linear", "log"])
def test_init_jitter_breaks_symmetry_reproducibly_on_trainable_entries_only(parametrization):
    def build(**kw):
        spec = NetworkSpec(
            areas=(AreaSpec("pd2014", 3),),
            n_inputs=1,
            lateral=ConnectionSpec(enabled=True, trainable=True),
            feedforward=ConnectionSpec(enabled=False),
            parametrization=parametrization,
            **kw,
        )
        return ColumnNetwork(spec=spec, dtype=torch.float64)

    plain, a, b, other = (
        build(init_jitter=0.0),
        build(init_jitter=0.2),
        build(init_jitter=0.2),
        build(init_jitter=0.2, init_seed=1),
    )
    lat = a.lateral.effective().detach()
    assert torch.equal(lat, b.lateral.effective().detach())  # same seed, same network
    assert not torch.equal(lat, other.lateral.effective().detach())
    # the three columns' lateral weights no longer coincide ...
    base = plain.lateral.effective().detach()
    on = a.lateral.train_mask.bool()
    ratio = lat[on] / base[on]
    assert float(ratio.log().std()) == pytest.approx(0.2, rel=0.5)
    # ... while fixed kinds (recurrent) and Dale signs are untouched
    assert torch.equal(a.recurrent.effective(), plain.recurrent.effective())
    assert bool((lat * base >= 0).all())


def test_init_jitter_errors_name_the_key():
    with pytest.raises(ConfigError, match="init_jitter"):
        NetworkSpec(init_jitter=-0.1)
    with pytest.raises(ConfigError, match="init_seed"):
        NetworkSpec(init_seed=1.5)


# ----------------------------------------------------------------------------- explicit edges
TWO_AREAS = {
    "n_inputs": 2,
    "areas": [{"name": "a", "n_columns": 2, "sizes": "pd2014"}, {"name": "b", "n_columns": 1}],
}


def _names(net):
    return {name: i for i, name in enumerate(net.population_names)}


def test_edges_wire_exactly_the_listed_entries_with_dale_signs():
    spec = dict(
        TWO_AREAS,
        input={"edges": [["input[1]", "a[1].L4e", 30.0]]},
        lateral={
            "enabled": True,
            "edges": [["a[0].L4e", "a[1].L5i", 2.5], ["a[1].L23i", "a[0].L23e", 4.0]],
        },
        feedforward={"trainable": True, "edges": [["a[1].L5e", "b[0].L23e", 7.0]]},
        parametrization="log",
    )
    net = ColumnNetwork(spec=spec, dtype=torch.float64)
    n = _names(net)
    lat, ff, inp = (c.effective().detach() for c in (net.lateral, net.feedforward, net.input))
    assert lat[n["a[1].L5i"], n["a[0].L4e"]] == pytest.approx(2.5)
    assert lat[n["a[0].L23e"], n["a[1].L23i"]] == pytest.approx(-4.0)  # inhibitory source
    assert ff[n["b[0].L23e"], n["a[1].L5e"]] == pytest.approx(7.0)
    assert inp[n["a[1].L4e"], 1] == pytest.approx(30.0)
    assert int((lat != 0).sum()) == 2 and int((ff != 0).sum()) == 1 and int((inp != 0).sum()) == 1
    assert net.feedforward.mask.sum() == 1 and net.feedforward.train_mask.sum() == 1
    assert net.lateral.train_mask.sum() == 0  # trainable defaults to False


@pytest.mark.parametrize(
    ("kind", "edge", "message"),
    [
        (
            "feedforward",
            ["a[0].L5e", "a[1].L4e", 1.0],
            "from a population of area n to one of area n + 1",
        ),
        ("feedforward", ["b[0].L5e", "a[0].L4e", 1.0], "area n to one of area n + 1"),
        ("lateral", ["a[0].L4e", "a[0].L5i", 1.0], "between different columns of the same area"),
        ("lateral", ["a[0].L4e", "b[0].L5i", 1.0], "between different columns of the same area"),
        ("input", ["input[0]", "b[0].L4e", 1.0], "to a population of the first area"),
        ("input", ["input[2]", "a[0].L4e", 1.0], "unknown population 'input[2]'"),
        ("feedforward", ["a[0].L7e", "b[0].L4e", 1.0], "unknown population 'a[0].L7e'"),
        ("feedforward", ["a[0].L5e", "b[0].L4e", 0.0], "> 0"),
        ("feedforward", ["a[0].L5e", "b[0].L4e", -2.0], "> 0"),
        ("feedforward", ["a[0].L5e", "b[0].L4e", "big"], "valid number"),
        ("feedforward", ["a[0].L5e", "b[0].L4e"], "[source, target, weight_nA]"),
    ],
)
def test_bad_edges_are_errors_that_name_the_edge(kind, edge, message):
    spec = dict(TWO_AREAS, **{kind: {"enabled": True, "edges": [edge]}})
    with pytest.raises(ConfigError, match="network." + kind + r"\.edges") as err:
        ColumnNetwork(spec=spec)
    assert message in str(err.value)


def test_edges_listed_twice_or_mixed_with_pairs_are_errors():
    twice = [["a[0].L5e", "b[0].L4e", 1.0], ["a[0].L5e", "b[0].L4e", 2.0]]
    with pytest.raises(ConfigError, match="listed twice"):
        ColumnNetwork(spec=dict(TWO_AREAS, feedforward={"edges": twice}))
    with pytest.raises(ConfigError, match="either edges or pairs"):
        parse_network(dict(TWO_AREAS, feedforward={"edges": twice[:1], "pairs": [["L5e", "L4e"]]}))
    with pytest.raises(ConfigError, match="network.recurrent: explicit edges are for lateral"):
        parse_network(dict(TWO_AREAS, recurrent={"edges": twice[:1]}))


def test_edges_with_pairs_in_python_is_an_error():
    with pytest.raises(ConfigError, match="either edges or pairs"):
        ConnectionSpec(pairs=(("L5e", "L4e"),), edges=(("a[0].L5e", "b[0].L4e", 1.0),))
