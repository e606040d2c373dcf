"""config/model.toml loading: every bad value is an error naming the key; P&D facts hold."""

import math
import tomllib

import pytest
import torch
from pydantic import ValidationError

from colenv.config import describe, parse
from colenv.models import (
    AreaSpec,
    ColumnNetwork,
    ColumnParams,
    ConfigError,
    NetworkSpec,
    load_params,
)
from colenv.resources import model_config_path


def raw():
    with model_config_path().open("rb") as fh:
        return tomllib.load(fh)


def test_default_file_loads():
    p = load_params()
    assert p.neuron.tau_s_ms == 0.5 and p.background.nu_bg_hz == 8.0
    assert set(p.population_sizes) >= {"v1", "mt", "pd2014"}
    assert p.neuron.kappa == (1.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    assert len(p.connectivity.p) == 8 and all(len(row) == 8 for row in p.connectivity.p)


def test_every_parameter_has_a_description():
    rows = list(describe(load_params()))
    assert {key for key, *_ in rows} >= {"neuron.tau_m_ms", "connectivity.p", "synapses.j_na"}
    assert all(description for *_, description in rows), [r[0] for r in rows if not r[3]]


ALLOWED_NEURON = "allowed: tau_s_ms, tau_m_ms, tau_a_ms, capacitance, kappa"


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda r: r["neuron"].pop("tau_m_ms"), "missing key 'neuron.tau_m_ms'"),
        (lambda r: r.pop("connectivity"), "missing key 'connectivity'"),
        (
            lambda r: r["neuron"].update(tau_x_ms=1.0),
            f"unknown key 'neuron.tau_x_ms'; {ALLOWED_NEURON}",
        ),
        (lambda r: r.update(extra={}), "unknown key 'extra'; allowed: neuron, transfer, synapses"),
        (lambda r: r["neuron"].update(kappa=[1.5, 0, 0]), r"neuron.kappa = .*list of 8 numbers"),
        (lambda r: r["background"].update(k_bg=[1] * 9), r"background.k_bg = .*list of 8 numbers"),
        (lambda r: r["connectivity"]["p"].pop(), r"connectivity.p = .*8x8 matrix"),
        (lambda r: r["connectivity"]["p"][3].append(0.1), r"connectivity.p = .*8x8 matrix"),
        (
            lambda r: r["connectivity"]["p"][2].__setitem__(5, 1.2),
            r"entry \[2\]\[5\] \(L5i -> L4e\) must be a probability in \[0, 1\]",
        ),
        (lambda r: r["connectivity"]["p"][0].__setitem__(0, -0.1), r"entry \[0\]\[0\]"),
        (lambda r: r["neuron"].update(tau_s_ms=0.0), "neuron.tau_s_ms = 0.0: .*greater than 0"),
        (lambda r: r["neuron"].update(tau_a_ms=-1.0), "neuron.tau_a_ms = -1.0: .*greater than 0"),
        (
            lambda r: r["population_sizes"]["mt"].__setitem__(1, 0),
            r"population_sizes.mt = .*entry 1 \(L23i\) must be > 0",
        ),
        (lambda r: r.update(population_sizes={}), "population_sizes = {}"),
        (
            lambda r: r["synapses"].update(inhibitory_scale="big"),
            "synapses.inhibitory_scale = 'big': must be 'layer_ratio' or a number > 0",
        ),
        (
            lambda r: r["synapses"].update(l4e_to_l23e_doubles="both"),
            "synapses.l4e_to_l23e_doubles = 'both': .*'probability' or 'weight'",
        ),
        (lambda r: r["neuron"].update(tau_m_ms="10"), "neuron.tau_m_ms = '10': .*valid number"),
        (lambda r: r["transfer"].update(a=float("nan")), "transfer.a = nan: .*finite number"),
        (lambda r: r["neuron"].update(kappa=[True] * 8), r"neuron.kappa\[0\] = True"),
        (
            lambda r: r["synapses"].update(
                l4e_to_l23e_doubles="probability", l4e_to_l23e_factor=30.0
            ),
            "l4e_to_l23e_factor makes the L4e -> L2/3e probability",
        ),
    ],
)
def test_bad_config_is_an_error_naming_the_key(mutate, match):
    r = raw()
    mutate(r)
    with pytest.raises(ConfigError, match=match):
        parse(ColumnParams, r)


def test_bad_config_file(tmp_path):
    path = tmp_path / "model.toml"
    path.write_text("[neuron\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_params(path)
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "missing.toml")


def test_overrides_are_validated():
    assert load_params(overrides={"neuron.tau_m_ms": 20.0}).neuron.tau_m_ms == 20.0
    nested = load_params(overrides={"neuron": {"tau_m_ms": 20.0}, "transfer.max_rate_hz": 5.0})
    assert nested.neuron.tau_m_ms == 20.0 and nested.transfer.max_rate_hz == 5.0
    with pytest.raises(ConfigError, match=f"unknown key 'neuron.tau'; {ALLOWED_NEURON}"):
        load_params(overrides={"neuron.tau": 1.0})
    with pytest.raises(ConfigError, match="unknown key 'nerve'; allowed: neuron, transfer"):
        load_params(overrides={"nerve.tau_m_ms": 1.0})
    with pytest.raises(ConfigError, match="neuron.tau_m_ms = -5: .*greater than 0"):
        load_params(overrides={"neuron.tau_m_ms": -5})
    with pytest.raises(ConfigError, match="must look like 'section.key'"):
        load_params(overrides={"tau_m_ms": 20.0})


def test_params_are_immutable():
    p = load_params()
    with pytest.raises(ValidationError, match="frozen"):
        p.neuron.tau_m_ms = 1.0


def test_in_degree_formula_matches_small_p_limit():
    """K = ln(1-p)/ln(1-1/(N_i N_j))/N_i -> p N_j for small p (P&D 2014, eq. 1)."""
    p = load_params(overrides={"synapses.l4e_to_l23e_factor": 1.0})
    w = p.recurrent_weights("pd2014")
    n = p.sizes("pd2014")
    k = w / p.synapses.j_na
    k[:, 1::2] /= -4.0  # undo g = 4 for inhibitory sources
    pm = torch.tensor(p.connectivity.p, dtype=torch.float64)
    approx = -torch.log1p(-pm) * n[None, :]  # ln(1-1/x) ~ -1/x for huge N_i N_j
    assert torch.allclose(k, approx, rtol=1e-6)
    # e.g. L4e -> L2/3e: p = 0.0437, N_src = 21915 -> about 979 synapses per L2/3e neuron
    assert math.isclose(float(k[0, 2]), -math.log(1 - 0.0437) * 21915, rel_tol=1e-6)


def test_dale_signs_and_doubling():
    p = load_params()
    w = p.recurrent_weights("pd2014")
    assert (w[:, 0::2] >= 0).all() and (w[:, 1::2] <= 0).all()
    single = load_params(overrides={"synapses.l4e_to_l23e_factor": 1.0}).recurrent_weights("pd2014")
    assert math.isclose(float(w[0, 2] / single[0, 2]), 2.0, rel_tol=1e-9)


# Published spontaneous rates of the full-scale P&D 2014 microcircuit (INM-6 reference
# implementation), Hz, order L2/3e ... L6i (docs/science.md, section 1).
PD_RATES = torch.tensor([0.90, 2.97, 4.41, 5.88, 7.57, 8.63, 1.11, 7.83], dtype=torch.float64)


def test_resting_rates_near_published_microcircuit():
    """Isolated column, P&D sizes, background only: within a factor 1.35 of P&D 2014."""
    net = ColumnNetwork(
        spec=NetworkSpec(areas=(AreaSpec("pd", 1, "pd2014"),), n_inputs=1), dtype=torch.float64
    )
    rates = net.rest_state()[16:]
    ratio = rates / PD_RATES
    assert (ratio < 1.35).all() and (ratio > 1 / 1.35).all(), ratio


def test_predecessor_tau_m_loses_deep_layers():
    """With tau_m = 20 ms L5e and L6e fall far below P&D (docs/science.md): the reason for 10 ms."""
    params = load_params(overrides={"neuron.tau_m_ms": 20.0})
    net = ColumnNetwork(
        params, NetworkSpec(areas=(AreaSpec("pd", 1, "pd2014"),), n_inputs=1), dtype=torch.float64
    )
    rates = net.rest_state()[16:]
    assert rates[4] < 0.5 * PD_RATES[4] and rates[6] < 0.1 * PD_RATES[6]
