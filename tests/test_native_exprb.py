"""The native exprb2 kernel (colenv/models/column/native/exprb2.c): forward and discrete adjoint.

References, none of them the kernel itself: the torch path of the same scheme
(colenv.models.column.exprb.exprb2_rollout with kernel "torch"; float32 for the forward,
float64 autograd for the gradients), finite differences of the kernel's own forward, and
torch's double backward of the transfer function for the second derivative the adjoint needs.
"""

from __future__ import annotations

import pytest
import torch

from colenv.models import ColumnNetwork
from colenv.models.column import exprb, native
from colenv.models.column.network import ColumnTerms
from colenv.models.column.transfer import rate_function
from colenv.solve import FastOptions
from tests.test_rosenbrock import _network as _two_columns

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not native.available(), reason="no C compiler: native kernel unavailable"),
]

F32, F64 = torch.float32, torch.float64
GATING = {"gating": {"pairs": [["L23e", "L23e"]], "kinds": ["recurrent"]}}


def _network(dtype, gated: bool = False) -> ColumnNetwork:
    """Two MT columns with lateral connections (16 populations), optionally gated."""
    return _two_columns(**(GATING if gated else {})).to(dtype)


def _stimulus(T: int, on: int, dtype) -> torch.Tensor:
    stim = torch.zeros(T, 2, 2, dtype=dtype)
    stim[on:, 0, 0], stim[on:, 0, 1] = 20.0, 10.0
    stim[on:, 1, 1] = 15.0
    return stim


def _fine(terms, n_points: int, n_sub: int, h: float, refine: int, window_ms: float):
    """The onset intervals as the torch path derives them from its FastOptions."""
    options = FastOptions(onset_refine=refine, onset_window_ms=window_ms)
    return exprb.refined_intervals(terms.drive, n_points, n_sub, h, options)


def _torch_path(terms, y0, n_points, n_sub, h, refine, window_ms, noise=None):
    options = FastOptions(kernel="torch", onset_refine=refine, onset_window_ms=window_ms)
    return exprb.exprb2_rollout(terms, y0, n_points, n_sub, h, options, noise=noise)


def _native(terms, y0, n_points, n_sub, h, refine, window_ms, noise=None, **kw):
    fine = _fine(terms, n_points, n_sub, h, refine, window_ms)
    args = {**exprb.native_arguments(terms), "kappa": terms.kappa}  # kappa as given (gradient)
    return native.exprb2_rollout(
        y0=y0, n_points=n_points, n_sub=n_sub, h=h, fine=fine, refine=refine, noise=noise,
        **args, **kw,
    )  # fmt: skip


def _assert_states_close(got, want, P, rel=1e-4):
    """Per state block (v, a, r[, S]): |got - want| <= rel (|want| + max |block|)."""
    for i in range(want.shape[-1] // P):
        g, w = got[..., i * P : (i + 1) * P].double(), want[..., i * P : (i + 1) * P].double()
        scale = float(w.abs().max())
        err = float(((g - w).abs() - rel * (w.abs() + scale)).max())
        assert err <= 0.0, (i, float((g - w).abs().max()), scale)


def test_theta_table_is_the_torch_paths():
    theta = native.exprb2_theta()
    assert theta.dtype == F32 and theta.shape == (exprb.M_MAX,)
    assert torch.equal(theta, torch.tensor(exprb.theta_table(F32), dtype=F32))


@pytest.mark.parametrize("gated", [False, True], ids=["ungated", "gated"])
@pytest.mark.parametrize("refine", [1, 4], ids=["no-onset", "onset"])
@pytest.mark.parametrize("sde", [False, True], ids=["ode", "sde"])
@torch.no_grad()
def test_forward_matches_the_torch_path(gated, refine, sde):
    net = _network(F32, gated)
    T, n_sub, h = 30, 2, 0.5e-3
    terms = net.prepare(_stimulus(T, on=8, dtype=F32)).terms
    y0 = net.initial_state(2)
    noise = None
    if sde:
        noise = torch.randn(T - 1, n_sub, 2, net.n_pop, generator=torch.Generator().manual_seed(1))
    want = _torch_path(terms, y0, T, n_sub, h, refine, 3.0, noise)
    got = _native(terms, y0, T, n_sub, h, refine, 3.0, noise)
    assert got.shape == want.shape == (T, 2, (4 if gated else 3) * net.n_pop)
    assert float((want[-1] - want[0]).abs().max()) > 1.0  # the stimulus moved the state
    _assert_states_close(got, want, net.n_pop)
    if sde:  # the kicks are used: without them the states differ
        ode = _native(terms, y0, T, n_sub, h, refine, 3.0)
        assert float((ode - got)[..., : net.n_pop].abs().max()) > 0.1


DECISION_GATING = 'model.network.gating={pairs=[["L23e", "L23e"]], kinds=["recurrent"]}'


@pytest.mark.parametrize(
    ("gated", "onset"), [(False, True), (False, False), (True, True)],
    ids=["ungated-onset", "ungated-no-onset", "gated-onset"],
)  # fmt: skip
@torch.no_grad()
def test_forward_on_the_decision_evaluation_grid(gated, onset):
    # the shipped Decision network (untrained; gated: its L2/3e recurrence through the slow
    # synapse) on its evaluation grid (11 trials) from rest 20 ms before the stimulus onset at
    # 299 ms (the drive is constant before it) to 40 ms after it (the torch path is ~100x
    # slower than the kernel), 0.5 ms steps, the default onset restart (16 x, 5 ms) or none
    from trainers.bench import build_network

    torch.manual_seed(0)
    overrides = [DECISION_GATING] if gated else []
    bench_net = build_network("colenv/Decision-v0", overrides, device="cpu")
    net, stimulus = bench_net.model, bench_net.trial(None, F32).stimulus
    T = 60
    terms = net.prepare(stimulus[279 : 279 + T]).terms
    assert (terms.w_slow_t is not None) == gated
    y0 = net.initial_state(stimulus.shape[1])
    defaults = FastOptions()
    refine = defaults.onset_refine if onset else 1
    args = (terms, y0, T, 2, 0.5e-3, refine, defaults.onset_window_ms)
    want = _torch_path(*args)
    got = _native(*args)
    # without the restart the onset's transient at 0.5 ms amplifies rounding ~100x (measured
    # 1e-4 here, 1e-6 with it): the float32 paths' summation orders differ (the torch path is
    # itself Hz off float64 there, the reason for the restart)
    _assert_states_close(got, want, net.n_pop, rel=1e-4 if onset else 1e-3)
    rates = net.rates(got)
    assert float((rates[-1] - rates[0]).abs().max()) > 5.0  # the onset is in the window


@pytest.mark.parametrize("gated", [False, True], ids=["ungated", "gated"])
@pytest.mark.parametrize("sde", [False, True], ids=["ode", "sde"])
def test_gradients_match_float64_autograd_of_the_torch_path(gated, sde):
    net = _network(F64, gated)
    T, n_sub, h, refine, window = 14, 2, 0.5e-3, 4, 2.0
    terms = net.prepare(_stimulus(T, on=4, dtype=F64)).terms
    terms = terms._replace(drive=terms.drive.detach(), w_t=terms.w_t.detach(),
                           kappa=terms.kappa.detach())  # fmt: skip
    if gated:
        terms = terms._replace(w_slow_t=terms.w_slow_t.detach())
    y0 = net.initial_state(2).detach()
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(T - 1, n_sub, 2, net.n_pop, generator=g, dtype=F64) if sde else None
    weights = torch.randn(T, 2, y0.shape[1], generator=g, dtype=F64)
    names = ["y0", "drive", "w_t", "kappa"] + (["w_slow_t"] if gated else [])

    def grads(dtype, run):
        leaves = {"y0": y0.to(dtype).clone().requires_grad_()}
        for name in names[1:]:
            leaves[name] = getattr(terms, name).to(dtype).clone().requires_grad_()
        t = terms._replace(**{n: leaves[n] for n in names[1:]})
        out = run(t, leaves["y0"], T, n_sub, h, refine, window,
                  None if noise is None else noise.to(dtype))  # fmt: skip
        (out * weights.to(dtype)).sum().backward()
        return {n: leaves[n].grad.double() for n in names}

    want = grads(F64, _torch_path)
    got = grads(F32, _native)
    for name in names:
        scale = float(want[name].abs().max())
        assert scale > 0.0, name
        err = float((got[name] - want[name]).abs().max())
        assert err <= 2e-4 * scale, (name, err, scale)


def test_gradient_matches_finite_differences():
    # directional derivatives of the kernel's own float32 forward (central differences)
    net = _network(F32)
    T, n_sub, h = 12, 2, 0.5e-3
    terms = net.prepare(_stimulus(T, on=3, dtype=F32)).terms
    drive, w_t = terms.drive.detach().clone(), terms.w_t.detach().clone()
    y0 = net.initial_state(2).detach()
    g = torch.Generator().manual_seed(5)
    weights = torch.randn(T, 2, y0.shape[1], generator=g)
    P = net.n_pop

    def loss(drive_, w_t_):
        out = _native(terms._replace(drive=drive_, w_t=w_t_), y0, T, n_sub, h, 4, 1.0)
        return (out[..., :P] * weights[..., :P]).sum() / 1000.0

    d = drive.clone().requires_grad_()
    w = w_t.clone().requires_grad_()
    loss(d, w).backward()
    for name, base, grad in (("drive", drive, d.grad), ("w_t", w_t, w.grad)):
        direction = torch.randn(base.shape, generator=g) * (base.abs() + base.abs().mean())
        eps = 1e-3
        with torch.no_grad():
            if name == "drive":
                up = loss(drive + eps * direction, w_t)
                down = loss(drive - eps * direction, w_t)
            else:
                up = loss(drive, w_t + eps * direction)
                down = loss(drive, w_t - eps * direction)
        fd = float(up.double() - down.double()) / (2 * eps)
        analytic = float((grad.double() * direction.double()).sum())
        assert abs(fd - analytic) <= 2e-2 * abs(analytic), (name, fd, analytic)


@pytest.mark.parametrize("max_rate", [0.0, 500.0, 50.0])
def test_second_derivative_of_the_rate_matches_double_backward(max_rate):
    net = _network(F64)
    c = dict(net.constants(), max_rate=max_rate)
    # u = da x - db over the exponential foot, the linear regime and around the 0/0 point
    u = torch.cat([torch.linspace(-70.0, 70.0, 14001, dtype=F64),
                   torch.linspace(-1.0, 1.0, 4001, dtype=F64)])  # fmt: skip
    x32 = ((u + c["db"]) / c["da"]).float()
    x = x32.double().requires_grad_()
    p = rate_function(c, "autograd")(x)
    (s,) = torch.autograd.grad(p.sum(), x, create_graph=True)
    (s2,) = torch.autograd.grad(s.sum(), x)
    p_n, s_n, s2_n = native.exprb2_rate(x32, c)
    for name, want, got in (("phi", p, p_n), ("phi'", s, s_n), ("phi''", s2, s2_n)):
        want = want.detach()
        err = float((got.double() - want).abs().max())
        assert err <= 1e-4 * float(want.abs().max()), (name, err)
    # pointwise where the value is not tiny (closed form and series both checked)
    big = s2.abs() > 1e-3 * s2.abs().max()
    rel = (s2_n.double() - s2).abs()[big] / s2.abs()[big]
    assert float(rel.max()) < (1e-3 if max_rate == 0.0 else 2e-2)


def _args(P=16, B=2, T=5, gated=False):
    nv = 4 if gated else 3
    net = _network(F32)
    c = net.constants()
    return dict(
        y0=torch.zeros(B, nv * P), drive=torch.zeros(T, B, P), w_t=torch.zeros(P, P),
        kappa=torch.zeros(P), c=c, n_points=T, n_sub=1, h=0.5e-3,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(y0=torch.zeros(2, 48, dtype=F64)), "y0 must be float32"),
        (dict(drive=torch.zeros(5, 2, 15)), r"drive must be \[\*, 2, 16\]"),
        (dict(w_t=torch.zeros(16, 15)), r"w_t must be \[16, 16\]"),
        (dict(y0=torch.zeros(2, 47)), r"y0 must be \[B, 3P\]"),
        (dict(fine=torch.zeros(4, dtype=torch.int64)), "fine must be None or a 1-d bool"),
        (dict(fine=torch.zeros(3, dtype=torch.bool)), r"fine must be \[>= 4\]"),
        (dict(refine=0), "refine must be an integer >= 1"),
        (dict(n_sub=0), "n_sub must be an integer >= 1"),
        (dict(gate_tau=0.1), "gate_tau and gate_gamma apply with w_slow_t only"),
        (dict(noise=torch.zeros(4, 2, 2, 16)), r"noise must be \[\*, 1, 2, 16\]"),
    ],
)
def test_errors_name_the_argument(change, match):
    with pytest.raises(ValueError, match=match):
        native.exprb2_rollout(**{**_args(), **change})


def test_gated_arguments_are_checked():
    args = _args(gated=True)
    with pytest.raises(ValueError, match="gate_tau must be a finite number > 0"):
        native.exprb2_forward(**args, w_slow_t=torch.zeros(16, 16), gate_tau=0.0, gate_gamma=0.6)
    with pytest.raises(ValueError, match=r"w_slow_t must be \[16, 16\]"):
        native.exprb2_forward(**args, w_slow_t=torch.zeros(16, 8), gate_tau=0.1, gate_gamma=0.6)


def test_a_runaway_trial_becomes_nan_and_the_others_go_on_like_the_torch_path():
    args = _args()
    assert args["y0"].shape[0] >= 2
    args["y0"][0, 0] = float("nan")
    out = native.exprb2_forward(**args)
    terms = ColumnTerms(w_t=args["w_t"], drive=args["drive"], kappa=args["kappa"],
                        constants=args["c"])  # fmt: skip
    ref = _torch_path(terms, args["y0"], args["n_points"], 1, args["h"], 1, 0.0)
    for states in (out, ref):
        assert bool(torch.isnan(states[1:, 0]).all())  # the bad trial: NaN from its first step
        assert bool(torch.isfinite(states[:, 1:]).all())  # the others: untouched
    torch.testing.assert_close(out[:, 1:], ref[:, 1:], rtol=1e-5, atol=1e-5)


def test_grad_patterns_give_the_dense_gradient_on_the_pattern_and_zero_elsewhere():
    net = _network(F32, gated=True)
    T = 10
    terms = net.prepare(_stimulus(T, on=3, dtype=F32)).terms
    y0 = net.initial_state(2).detach()
    weights = torch.randn(T, 2, y0.shape[1], generator=torch.Generator().manual_seed(4))
    pattern, slow_pattern = terms.w_pattern_t, terms.w_slow_pattern_t
    assert 0 < int(pattern.sum()) < pattern.numel() and 0 < int(slow_pattern.sum())

    def grads(**patterns):
        w = terms.w_t.detach().clone().requires_grad_()
        ws = terms.w_slow_t.detach().clone().requires_grad_()
        t = terms._replace(w_t=w, w_slow_t=ws, drive=terms.drive.detach())
        (_native(t, y0, T, 2, 0.5e-3, 4, 2.0, **patterns) * weights).sum().backward()
        return w.grad, ws.grad

    dense, dense_slow = grads()
    g, g_slow = grads(grad_pattern=pattern, slow_grad_pattern=slow_pattern)
    assert float((dense * ~pattern).abs().max()) > 0.0  # the dense gradient has more entries
    torch.testing.assert_close(g, dense * pattern, rtol=1e-6, atol=0.0)
    torch.testing.assert_close(g_slow, dense_slow * slow_pattern, rtol=1e-6, atol=0.0)
    with pytest.raises(ValueError, match=r"grad_pattern must be None or a \[16, 16\] bool"):
        grads(grad_pattern=pattern.float())


def _odd_terms(dtype, gated: bool) -> ColumnTerms:
    """P = 11 (not a multiple of the kernel's 8-float rows), sparse random weights with a
    source that projects nowhere and a target that receives nothing; rates from the
    exponential foot to the linear part of the transfer function, under a ceiling."""
    g = torch.Generator().manual_seed(7)
    P, T, B = 11, 12, 3
    w_t = torch.randn(P, P, generator=g, dtype=F64) * 0.4
    w_t[torch.rand(P, P, generator=g) < 0.5] = 0.0
    w_t[3, :] = 0.0
    w_t[:, 9] = 0.0
    c = dict(_network(F64).constants(), max_rate=300.0)
    drive = (10.0 + 25.0 * torch.rand(T, B, P, generator=g, dtype=F64)) / c["tau_m"]
    drive[6:] *= 1.5
    kw = {}
    if gated:
        w_slow = torch.zeros(P, P, dtype=F64)
        w_slow[0, 1], w_slow[2, 0], w_slow[10, 10] = 0.8, -0.5, 0.3
        kw = dict(w_slow_t=w_slow, gate_tau=0.1, gate_gamma=0.641)
    terms = ColumnTerms(w_t=w_t, drive=drive, kappa=torch.rand(P, generator=g, dtype=F64) * 0.02,
                        constants=c, **kw)  # fmt: skip
    return terms._replace(**{k: v.to(dtype) for k, v in terms._asdict().items()
                             if isinstance(v, torch.Tensor)})  # fmt: skip


@pytest.mark.parametrize("gated", [False, True], ids=["ungated", "gated"])
def test_odd_population_count_and_sparse_rows(gated):
    terms32, terms64 = _odd_terms(F32, gated), _odd_terms(F64, gated)
    P, (T, B) = terms32.n_pop, terms32.drive.shape[:2]
    nv = 4 if gated else 3
    g = torch.Generator().manual_seed(8)
    y0 = torch.cat([10.0 + 25.0 * torch.rand(B, P, generator=g, dtype=F64),
                    torch.zeros(B, (nv - 1) * P, dtype=F64)], dim=1)  # fmt: skip
    with torch.no_grad():
        want = _torch_path(terms32, y0.float(), T, 2, 0.5e-3, 4, 1.0)
        got = _native(terms32, y0.float(), T, 2, 0.5e-3, 4, 1.0)
    assert float((want[-1] - want[0])[:, :P].abs().max()) > 1.0
    _assert_states_close(got, want, P)
    # gradients vs float64 autograd, and the same on two threads (trials split between them)
    weights = torch.randn(T, B, nv * P, generator=g, dtype=F64)
    names = ["w_t", "drive", "kappa"] + (["w_slow_t"] if gated else [])

    def grads(terms, run, **kw):
        leaves = {n: getattr(terms, n).clone().requires_grad_() for n in names}
        y = y0.to(terms.w_t.dtype).clone().requires_grad_()
        out = run(terms._replace(**leaves), y, T, 2, 0.5e-3, 4, 1.0, **kw)
        (out * weights.to(out.dtype)).sum().backward()
        return [y.grad.double()] + [leaves[n].grad.double() for n in names]

    ref = grads(terms64, _torch_path)
    one = grads(terms32, _native, n_threads=1)
    two = grads(terms32, _native, n_threads=2)
    for name, r, a, b in zip(["y0", *names], ref, one, two, strict=True):
        scale = float(r.abs().max())
        assert float((a - r).abs().max()) <= 2e-4 * scale, name
        if name in ("y0", "drive"):  # per trial: the same arithmetic on any thread
            assert torch.equal(a, b), name
        else:  # summed over trials in another grouping
            assert float((b - a).abs().max()) <= 1e-5 * scale, name


@torch.no_grad()
def test_step_counts_follow_the_onset_refinement():
    # steps: n_sub per interval, refine times more on the fine ones, for every trial; the
    # Jacobian products: at least one per step (the series' second term; m = 1 would need
    # ||h J|| < 1.2e-7)
    net = _network(F32)
    T, n_sub, h, refine = 20, 2, 0.5e-3, 4
    terms = net.prepare(_stimulus(T, on=8, dtype=F32)).terms
    fine = _fine(terms, T, n_sub, h, refine, 2.0)
    assert 0 < int(fine.sum()) < T - 1
    counts = torch.zeros(2, dtype=torch.int64)
    native.exprb2_forward(net.initial_state(2), terms.drive, terms.w_t, terms.kappa.detach(),
                          terms.constants, T, n_sub, h, fine, refine, counts=counts)  # fmt: skip
    n_fine = int(fine.sum())
    assert int(counts[0]) == 2 * n_sub * (n_fine * refine + (T - 1 - n_fine))
    assert int(counts[1]) >= int(counts[0])


def test_a_kappa_gradient_keeps_exprb2_on_the_kernel_and_rk4exp_off_it():
    # exprb2's adjoint gives kappa's gradient (checked against autograd above), so a rollout
    # that trains kappa stays native; rk4exp's adjoint does not, so it goes to torch
    from colenv.models.column import integrators

    net = _network(F32)
    terms = net.prepare(_stimulus(6, on=2, dtype=F32)).terms
    terms = terms._replace(kappa=terms.kappa.detach().clone().requires_grad_())
    y0 = net.initial_state(2).detach()
    assert integrators._use_native("auto", "exprb2", "auto", y0, terms)
    assert not integrators._use_native("auto", "rk4exp", "auto", y0, terms)
    with torch.no_grad():  # no gradient asked for: both native
        assert integrators._use_native("auto", "rk4exp", "auto", y0, terms)
