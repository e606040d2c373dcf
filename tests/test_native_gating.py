"""The native kernel with the slow gating synapse (state [v, a, r, S]; docs/science.md "Slow
gating synapse"): forward and discrete adjoint against an independent float64 reference (a
plain eager RK4 loop of the equations, differentiated by autograd) and against the torch
path, on a Decision-like network of two columns with gated recurrent (dense 8 x 8 blocks) and
gated lateral (CSR) entries, with and without noise increments; without gating nothing of it
runs (a gated call with no gated weight gives the ungated kernel's v, a and r bit for bit)."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest
import torch

from colenv import SolverConfig, rollout
from colenv.errors import ConfigError
from colenv.models import ColumnNetwork
from colenv.models.column import native
from colenv.models.column.integrators import _filter_weights, noise_increments
from colenv.models.column.transfer import rate_function

pytestmark = [
    pytest.mark.usefixtures("one_thread"),  # the float64 reference: many small ops
    pytest.mark.skipif(
        not native.available(), reason=f"native kernel unavailable: {native.unavailable_reason()}"
    ),
]

ROOT = Path(__file__).resolve().parents[1]
RECURRENT = {"pairs": [["L23e", "L23e"]], "kinds": ["recurrent"]}
WITH_LATERAL = {"pairs": [["L23e", "L23e"], ["L23e", "L23i"]], "kinds": ["recurrent", "lateral"]}
H = 0.25e-3  # step (s): 4 steps per 1 ms grid interval
N_SUB = 4


def decision_net(gating: dict | None, noise_std: float = 0.0) -> ColumnNetwork:
    """config/tasks/decision.toml's network (2 MT columns, lateral L2/3e -> L2/3i), gated."""
    with open(ROOT / "config/tasks/decision.toml", "rb") as fh:
        spec = tomllib.load(fh)["model"]["network"]
    spec = {**spec, "gating": gating, "noise_std": noise_std}
    torch.manual_seed(0)
    return ColumnNetwork(spec=spec)


def stimulus(net: ColumnNetwork, batch: int, T: int, seed: int = 0):
    """(stimulus [T, B, 2], t_ms [T]): coherent-like inputs (0-40 Hz) from a fifth of the trial."""
    gen = torch.Generator().manual_seed(seed)
    stim = torch.zeros(T, batch, net.n_inputs)
    stim[T // 5 :] = 40.0 * torch.rand(batch, net.n_inputs, generator=gen)
    return stim, torch.arange(T, dtype=torch.float32)


def setup(gating=WITH_LATERAL, batch=3, T=41, noise_std=0.0, seed=0):
    """(net, terms, y0 [B, 4P] off rest: S and v perturbed, noise [T - 1, N_SUB, B, P] or None)."""
    net = decision_net(gating, noise_std)
    stim, _ = stimulus(net, batch, T, seed)
    with torch.no_grad():
        terms = net.prepare(stim).terms
        y0 = net.initial_state(batch).clone()
    P = net.n_pop
    gen = torch.Generator().manual_seed(seed + 1)
    y0[:, 3 * P :] = 0.6 * torch.rand(batch, P, generator=gen)  # S away from its rest value
    y0[:, :P] += 2.0 * torch.randn(batch, P, generator=gen)
    noise = None
    if noise_std:
        noise = noise_increments(terms, T - 1, N_SUB, H, y0[:, :P], gen)
    return net, terms, y0, noise


def reference(y0, drive, w_t, kappa, c, n_points, n_sub, h, w_slow_t, tau, gamma, noise=None):
    """The spec's equations by a plain eager loop (float64 in, float64 out; autograd through it):
    classical RK4 on (v, a, S) with
        dv = phi @ w_t + (S / (gamma tau)) @ w_slow_t - v / tau_m + drive
        da = (kappa phi - a) / tau_a,   dS = -S / tau + gamma (1 - S) phi,   phi = f(v - a),
    r filtered exactly against the quadratic through the stage rates, noise[k, i] added to v
    after step i of interval k."""
    P = w_t.shape[0]
    phi_of = rate_function(c, "autograd")
    e_r = math.exp(-h / c["tau_s"])
    w0, wm, w1 = _filter_weights(c["tau_s"], h)

    def f(v, a, s, d):
        phi = phi_of(v - a)
        dv = phi @ w_t + (s / (gamma * tau)) @ w_slow_t - v / c["tau_m"] + d
        da = (kappa * phi - a) / c["tau_a"]
        ds = -s / tau + gamma * (1.0 - s) * phi
        return phi, dv, da, ds

    v, a, r, s = (y0[:, i * P : (i + 1) * P] for i in range(4))
    out = [y0]
    for k in range(n_points - 1):
        d = drive[k]
        for i in range(n_sub):
            p1, v1, a1, s1 = f(v, a, s, d)
            p2, v2, a2, s2 = f(v + h / 2 * v1, a + h / 2 * a1, s + h / 2 * s1, d)
            p3, v3, a3, s3 = f(v + h / 2 * v2, a + h / 2 * a2, s + h / 2 * s2, d)
            p4, v4, a4, s4 = f(v + h * v3, a + h * a3, s + h * s3, d)
            v = v + h / 6 * (v1 + 2 * v2 + 2 * v3 + v4)
            a = a + h / 6 * (a1 + 2 * a2 + 2 * a3 + a4)
            s = s + h / 6 * (s1 + 2 * s2 + 2 * s3 + s4)
            r = e_r * r + w0 * p1 + wm * (p2 + p3) + w1 * p4
            if noise is not None:
                v = v + noise[k, i]
        out.append(torch.cat([v, a, r, s], dim=-1))
    return torch.stack(out)


def native_args(terms, n_points):
    c = terms.constants
    return (terms.drive.detach(), terms.w_t.detach(), terms.kappa.detach(), c, n_points, N_SUB,
            H, _filter_weights(c["tau_s"], H))  # fmt: skip


def gate_kw(terms) -> dict:
    return dict(w_slow_t=terms.w_slow_t.detach(), gate_tau=terms.gate_tau,
                gate_gamma=terms.gate_gamma)  # fmt: skip


def close(got, want, rtol, atol_rel):
    torch.testing.assert_close(got, want.to(got.dtype), rtol=rtol,
                               atol=atol_rel * float(want.abs().max()))  # fmt: skip


def test_decision_gating_puts_entries_in_blocks_and_csr():
    """The fixtures exercise both weight paths of the slow product: the gated recurrent
    L2/3e -> L2/3e and L2/3e -> L2/3i entries sit in the dense column blocks' positions, the
    gated lateral L2/3e -> L2/3i entries outside them (CSR)."""
    _, terms, _, _ = setup()
    ws = terms.w_slow_t.detach()
    inside = torch.block_diag(*[torch.ones(8, 8, dtype=torch.bool)] * 2)
    assert int((ws[inside] != 0).sum()) == 4 and int((ws[~inside] != 0).sum()) == 2
    assert torch.count_nonzero(terms.w_t.detach()[ws != 0]) == 0  # w_t has them zeroed


@pytest.mark.parametrize("noisy", [False, True])
@pytest.mark.parametrize("batch", [1, 5, 17])  # tile widths 1, 8 and 16 (last tile padded)
def test_forward_equals_float64_reference(batch, noisy):
    net, terms, y0, noise = setup(batch=batch, noise_std=1.0 if noisy else 0.0)
    T = 41
    got = native.rk4exp_forward(y0, *native_args(terms, T), None, noise, **gate_kw(terms))
    d64 = [x.double() for x in native_args(terms, T)[:3]]
    ref = reference(y0.double(), *d64, terms.constants, T, N_SUB, H,
                    terms.w_slow_t.double(), terms.gate_tau, terms.gate_gamma,
                    None if noise is None else noise.double())  # fmt: skip
    assert got.shape == (T, batch, 4 * net.n_pop) and torch.equal(got[0], y0)
    P = net.n_pop
    s = got[..., 3 * P :]
    assert float((s[-1] - s[0]).abs().max()) > 0.05  # S moved
    close(got, ref, rtol=1e-4, atol_rel=2e-5)


@pytest.mark.parametrize(("noisy", "segment"), [(False, 25), (True, 7)])
def test_adjoint_equals_float64_autograd(noisy, segment):
    """Gradients for y0 (S included), the drive, w_t and w_slow_t: those of autograd through
    the float64 reference, to float32 rounding; any backward segment length."""
    net, terms, y0, noise = setup(batch=5, noise_std=1.0 if noisy else 0.0)
    T, P = 41, net.n_pop
    gy = torch.randn(T, 5, 4 * P, generator=torch.Generator().manual_seed(3))
    drive, w_t, kappa, c, *rest = native_args(terms, T)
    ins = [x.clone().requires_grad_() for x in (y0, drive, w_t, terms.w_slow_t.detach())]
    out = native.rk4exp_rollout(ins[0], ins[1], ins[2], kappa, c, *rest, segment=segment,
                                noise=noise, w_slow_t=ins[3], gate_tau=terms.gate_tau,
                                gate_gamma=terms.gate_gamma)  # fmt: skip
    got = torch.autograd.grad((out * gy).sum(), ins)
    ins64 = [x.detach().double().requires_grad_() for x in ins]
    ref = reference(ins64[0], ins64[1], ins64[2], kappa.double(), c, T, N_SUB, H, ins64[3],
                    terms.gate_tau, terms.gate_gamma,
                    None if noise is None else noise.double())  # fmt: skip
    want = torch.autograd.grad((ref * gy.double()).sum(), ins64)
    for name, g, w in zip(("y0", "drive", "w_t", "w_slow_t"), got, want, strict=True):
        assert float(w.abs().max()) > 0, name
        close(g, w, rtol=1e-3, atol_rel=1e-4)
    assert float(want[0][:, 3 * P :].abs().max()) > 0  # S0's gradient is part of the check


def test_slow_gradient_on_pattern_equals_dense_there():
    """slow_grad_pattern (the gated entries, ColumnTerms.w_slow_pattern_t) gives w_slow_t's
    dense gradient there, gated entries at exactly zero weight included, and zero elsewhere."""
    _, terms, y0, _ = setup(batch=3, T=21)
    drive, w_t, kappa, c, *rest = native_args(terms, 21)
    ws = terms.w_slow_t.detach().clone()
    zeroed = ws.nonzero()[0].tolist()
    ws[zeroed[0], zeroed[1]] = 0.0  # a gated weight at exactly zero still gets its gradient
    pattern = terms.w_slow_pattern_t
    assert int(pattern.sum()) == 6

    def grad(pat):
        w = ws.clone().requires_grad_()
        out = native.rk4exp_rollout(y0, drive, w_t, kappa, c, *rest, w_slow_t=w,
                                    gate_tau=terms.gate_tau, gate_gamma=terms.gate_gamma,
                                    slow_grad_pattern=pat)  # fmt: skip
        out[..., : 3 * 16].sum().backward()
        return w.grad

    dense, on = grad(None), grad(pattern)
    close(on[pattern], dense[pattern], rtol=1e-4, atol_rel=1e-6)
    assert on[zeroed[0], zeroed[1]] != 0 and torch.count_nonzero(on[~pattern]) == 0


def test_without_gated_weights_v_a_r_are_the_ungated_kernel_bit_for_bit():
    """A gated call whose w_slow_t is all zero adds nothing to dv (its CSR is empty): v, a, r
    equal the ungated kernel's bit for bit, and S follows its own equation."""
    net, terms, y0, _ = setup(gating=RECURRENT, batch=5)
    P, T = net.n_pop, 41
    args = native_args(terms, T)
    w_all = (terms.w_t + terms.w_slow_t).detach()
    plain = native.rk4exp_forward(y0[:, : 3 * P].contiguous(), args[0], w_all, *args[2:])
    gated = native.rk4exp_forward(y0, args[0], w_all, *args[2:], w_slow_t=torch.zeros(P, P),
                                  gate_tau=terms.gate_tau, gate_gamma=terms.gate_gamma)  # fmt: skip
    assert torch.equal(gated[..., : 3 * P], plain)
    assert float((gated[-1, :, 3 * P :] - y0[:, 3 * P :]).abs().max()) > 0.05


def test_csr_only_path_equals_blocks(monkeypatch):
    """BLOCK = 0 (P not a multiple of 8: every entry in the CSR) gives the same gated states and
    gradients as the block path."""
    _, terms, y0, _ = setup(batch=5, T=21)
    drive, w_t, kappa, c, *rest = native_args(terms, 21)

    def run():
        ins = [x.clone().requires_grad_() for x in (y0, drive, w_t, terms.w_slow_t.detach())]
        out = native.rk4exp_rollout(ins[0], ins[1], ins[2], kappa, c, *rest, w_slow_t=ins[3],
                                    gate_tau=terms.gate_tau, gate_gamma=terms.gate_gamma)  # fmt: skip
        return out.detach(), torch.autograd.grad(out.square().sum(), ins)

    blocks = run()
    monkeypatch.setattr(native, "BLOCK", 0)
    csr = run()
    close(csr[0], blocks[0], rtol=1e-5, atol_rel=1e-6)
    for a, b in zip(csr[1], blocks[1], strict=True):
        close(a, b, rtol=1e-4, atol_rel=1e-5)


def _rollout_grads(net, stim, t, y0, cfg, seed=None):
    y0 = y0.detach().clone().requires_grad_()
    stim = stim.detach().clone().requires_grad_()
    params = [p for p in net.parameters() if p.requires_grad]
    gy = torch.randn(len(t), stim.shape[1], net.state_size,
                     generator=torch.Generator().manual_seed(7))  # fmt: skip
    states = rollout(net, stim, t, cfg, y0=y0, seed=seed).states
    return states.detach(), torch.autograd.grad((states * gy).sum(), [y0, stim, *params])


@pytest.mark.parametrize("sde", [False, True])
def test_rollout_native_equals_torch_path(sde):
    """Through :func:`colenv.rollout`: the native kernel and the torch path (its own gated
    discrete adjoint) give the same states and gradients for y0, the stimulus and every
    trainable parameter (the lateral and L2/3e recurrent weights reach both w_t and
    w_slow_t), ODE and SDE under the same seed."""
    net = decision_net(WITH_LATERAL, noise_std=1.0 if sde else 0.0)
    stim, t = stimulus(net, 5, 31)
    y0 = net.initial_state(5)

    def cfg(kernel):
        return SolverConfig("rk4exp", step_ms=0.25, sde=sde, fast={"kernel": kernel})

    s_nat, g_nat = _rollout_grads(net, stim, t, y0, cfg("native"), seed=3)
    s_tor, g_tor = _rollout_grads(net, stim, t, y0, cfg("torch"), seed=3)
    close(s_nat, s_tor, rtol=1e-4, atol_rel=1e-5)
    assert len(g_nat) == len(g_tor) >= 5
    for got, want in zip(g_nat, g_tor, strict=True):
        assert float(want.abs().max()) > 0
        close(got, want, rtol=1e-3, atol_rel=1e-4)


def test_auto_runs_gated_networks_native(monkeypatch):
    """kernel "auto" takes the native kernel for a gated float32 CPU rk4exp rollout (forward and
    gradient); kappa's gradient and float64 take the torch path."""
    net = decision_net(RECURRENT)
    stim, t = stimulus(net, 2, 11)
    calls = []
    real = native.rk4exp_rollout
    monkeypatch.setattr(native, "rk4exp_rollout", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        rollout(net, stim, t, SolverConfig("rk4exp"))
    states = rollout(net, stim, t, SolverConfig("rk4exp")).states
    assert states.grad_fn.name().endswith("_AdjointBackward") and len(calls) == 2
    net.kappa.requires_grad_(True)
    rollout(net, stim, t, SolverConfig("rk4exp"))
    with pytest.raises(ConfigError, match="kappa requires grad: True"):
        rollout(net, stim, t, SolverConfig("rk4exp", fast={"kernel": "native"}))
    assert len(calls) == 2


def test_gate_arguments_are_checked():
    net, terms, y0, _ = setup(gating=RECURRENT, batch=2, T=5)
    args = native_args(terms, 5)
    kw = gate_kw(terms)
    P = net.n_pop
    with pytest.raises(ValueError, match=r"y0 must be \[B, 4P\] \(v, a, r and S"):
        native.rk4exp_forward(y0[:, :-1].contiguous(), *args, **kw)
    with pytest.raises(ValueError, match=r"y0 must be \[B, 3P\] \(v, a and r"):
        native.rk4exp_forward(y0, *args)  # 4P wide without w_slow_t
    for name, bad in (("gate_tau", 0.0), ("gate_gamma", float("nan")), ("gate_tau", None)):
        with pytest.raises(ValueError, match=rf"{name} must be a finite number > 0 .*{bad}"):
            native.rk4exp_forward(y0, *args, **{**kw, name: bad})
    with pytest.raises(ValueError, match=r"w_slow_t must be \[16, 16\], got \[15, 16\]"):
        native.rk4exp_forward(y0, *args, **{**kw, "w_slow_t": kw["w_slow_t"][:-1]})
    with pytest.raises(ValueError, match="w_slow_t must be float32"):
        native.rk4exp_forward(y0, *args, **{**kw, "w_slow_t": kw["w_slow_t"].double()})
    with pytest.raises(ValueError, match="gate_tau and gate_gamma apply with w_slow_t only"):
        native.rk4exp_forward(y0[:, : 3 * P].contiguous(), *args, gate_tau=0.1)
