"""The native rk4exp kernel (colenv.models.column.native): the same scheme and discrete adjoint as
the torch fast path, checked against the torch path (states and gradients, to float32 rounding;
the torch adjoint is checked against autograd and gradcheck in tests/test_fast.py), against a
tight float64 dopri5 reference (the 0.5 Hz accuracy bound), and for runaways, dispatch, argument
checks, errors and fallback."""

import pytest
import torch

from colenv import AdaptiveOptions, DivergenceError, SolverConfig, rollout
from colenv.errors import ConfigError
from colenv.models import AreaSpec, ColumnNetwork, ConnectionSpec, NetworkSpec, load_params
from colenv.models.column import native
from colenv.models.column.integrators import _filter_weights

pytestmark = pytest.mark.skipif(
    not native.available(), reason=f"native kernel unavailable: {native.unavailable_reason()}"
)


def parity_spec() -> NetworkSpec:
    """The benchmark's 13-column network (lateral, feedforward and input weights train)."""
    return NetworkSpec(
        areas=(AreaSpec("a", 8), AreaSpec("b", 4), AreaSpec("c", 1)),
        n_inputs=4,
        lateral=ConnectionSpec(enabled=True, trainable=True),
        feedforward=ConnectionSpec(trainable=True),
        input=ConnectionSpec(trainable=True),
    )


def xor_spec() -> NetworkSpec:
    return NetworkSpec(
        areas=(AreaSpec("ab", 2), AreaSpec("c", 1)),
        n_inputs=2,
        input_mode="one_to_one",
        feedforward=ConnectionSpec(trainable=True),
        input=ConnectionSpec(pairs=(("input", "L4e"), ("input", "L4i")), trainable=True),
    )


def trials(net: ColumnNetwork, batch: int, T: int, seed: int = 0, dtype=torch.float32):
    """(stimulus [T, B, I], t_ms [T]): random 0-20 Hz inputs switched on at a third of the trial."""
    gen = torch.Generator().manual_seed(seed)
    stim = torch.zeros(T, batch, net.n_inputs, dtype=dtype)
    stim[T // 3 :] = 20.0 * torch.rand(batch, net.n_inputs, generator=gen, dtype=dtype)
    return stim, torch.arange(T, dtype=dtype)


def rk4exp(step_ms: float = 0.5, **fast) -> SolverConfig:
    """rk4exp with the [solver.fast] options given as keywords."""
    return SolverConfig("rk4exp", step_ms=step_ms, fast=fast)


def kernel_args(terms, n_points, n_sub, h):
    """The arguments of native.rk4exp_forward after y0, from a rollout's ColumnTerms."""
    c = terms.constants
    fw = _filter_weights(c["tau_s"], h)
    return terms.drive, terms.w_t, terms.kappa, c, n_points, n_sub, h, fw


def both(net, stim, t, step_ms=0.5, y0=None):
    """(native, torch) states of the same no-grad rk4exp rollout."""
    with torch.no_grad():
        out = [
            rollout(net, stim, t, rk4exp(step_ms=step_ms, kernel=k), y0=y0).states
            for k in ("native", "torch")
        ]
    return out


@pytest.mark.parametrize("batch", [1, 3, 8, 17])
@pytest.mark.parametrize("spec", [parity_spec, xor_spec])
def test_native_equals_torch_path(spec, batch):
    """Every tile width (1, 8, 16 with a padded last tile) gives the torch path's states."""
    torch.manual_seed(0)
    net = ColumnNetwork(spec=spec())
    stim, t = trials(net, batch, 121)
    nat, tor = both(net, stim, t)
    assert nat.shape == tor.shape and nat.dtype == torch.float32
    assert torch.equal(nat[0], tor[0])
    scale = float(tor.abs().max())
    torch.testing.assert_close(nat, tor, rtol=2e-5, atol=2e-5 * scale)


def test_native_steps_and_saturation_equal_torch_path():
    """One step per interval and two, and the soft rate ceiling (tanh branch)."""
    params = load_params(overrides={"transfer.max_rate_hz": 40.0})
    torch.manual_seed(1)
    net = ColumnNetwork(spec=xor_spec(), params=params)
    stim, t = trials(net, 4, 61)
    stim = stim * 5.0  # drive some populations into the ceiling
    for step_ms in (1.0, 0.5):
        nat, tor = both(net, stim, t, step_ms=step_ms)
        assert float(tor[..., 2 * net.n_pop :].max()) > 20.0  # the tanh branch is exercised
        torch.testing.assert_close(nat, tor, rtol=2e-5, atol=2e-5 * float(tor.abs().max()))


def test_native_within_half_hz_of_float64_reference():
    """The 0.5 Hz accuracy bound, against tight float64 dopri5 rather than the torch path."""
    torch.manual_seed(0)
    net64 = ColumnNetwork(spec=parity_spec(), dtype=torch.float64)
    net32 = ColumnNetwork(spec=parity_spec())
    net32.load_state_dict({k: v.float() for k, v in net64.state_dict().items()})
    stim, t = trials(net64, 4, 201, dtype=torch.float64)
    with torch.no_grad():
        tight = AdaptiveOptions(rtol=1e-9, atol=1e-9)
        ref = rollout(net64, stim, t, SolverConfig("dopri5", adaptive=tight)).states
        nat = rollout(net32, stim.float(), t.float(), rk4exp(kernel="native"))
    P = net32.n_pop
    err = (nat.states.double() - ref)[..., 2 * P :].abs().max()
    assert float(ref[..., 2 * P :].max()) > 10.0
    assert err < 0.5, f"native rk4exp at 0.5 ms is {float(err):.3g} Hz off the reference"


def test_native_runaway_is_caught_like_torch():
    """Non-finite rates propagate (no -ffast-math): rollout raises DivergenceError."""
    torch.manual_seed(0)
    net = ColumnNetwork(spec=xor_spec())
    stim, t = trials(net, 2, 41)
    with torch.no_grad():
        y0 = net.initial_state(2)  # rest of the unscaled network
        for p in net.parameters():
            p.mul_(1e20)
    for kernel in ("native", "torch"):
        with pytest.raises(DivergenceError):
            with torch.no_grad():
                rollout(net, stim, t, rk4exp(kernel=kernel), y0=y0)
    with torch.no_grad():
        cfg = SolverConfig("rk4exp", fast={"kernel": "native"}, check_finite=False)
        nat = rollout(net, stim, t, cfg, y0=y0)
    assert not torch.isfinite(nat.states[-1]).all()


def test_threads_give_identical_states():
    torch.manual_seed(0)
    net = ColumnNetwork(spec=parity_spec())
    stim, t = trials(net, 40, 31)
    with torch.no_grad():
        terms = net.prepare(stim).terms
        y0 = net.initial_state(40)
        args = kernel_args(terms, 31, 2, 0.5e-3)
        one = native.rk4exp_forward(y0, *args, 1)
        three = native.rk4exp_forward(y0, *args, 3)
    assert torch.equal(one, three)


def test_dispatch_auto_uses_native_for_rk4exp_ode_and_sde():
    torch.manual_seed(0)
    net = ColumnNetwork(spec=xor_spec())
    stim, t = trials(net, 2, 21)
    calls = []
    real = native.rk4exp_forward

    def spy(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    native.rk4exp_forward = spy
    try:
        with torch.no_grad():
            rollout(net, stim, t, SolverConfig("rk4exp"))
        assert len(calls) == 1
        states = rollout(net, stim, t, SolverConfig("rk4exp")).states  # the native adjoint
        assert states.grad_fn.name().endswith("_AdjointBackward") and len(calls) == 1
        states = rollout(net, stim, t, rk4exp(backward="autograd")).states
        assert not states.grad_fn.name().endswith("_AdjointBackward")
        with torch.no_grad():
            rollout(net, stim, t, rk4exp(kernel="torch"))
            rollout(net, stim, t, SolverConfig("exprk2"))
            rollout(
                net, stim, t, SolverConfig("rk4exp", sde=True, fast={"kernel": "torch"}), seed=0
            )
        assert len(calls) == 1
        with torch.no_grad():  # the SDE runs native too (its noise is an input of the kernel)
            rollout(net, stim, t, SolverConfig("rk4exp", sde=True), seed=0)
        assert len(calls) == 2
    finally:
        native.rk4exp_forward = real


def _grads(net, stim, t, y0, gy, cfg, seed=None):
    """States and d(sum(states * gy)) / d(y0, stimulus, trainable parameters)."""
    y0 = y0.detach().clone().requires_grad_()
    stim = stim.detach().clone().requires_grad_()
    params = [p for p in net.parameters() if p.requires_grad]
    states = rollout(net, stim, t, cfg, y0=y0, seed=seed).states
    return states.detach(), torch.autograd.grad((states * gy).sum(), [y0, stim, *params])


@pytest.mark.parametrize(
    ("batch", "segment"),
    [(1, 25), (5, 7), (17, 40), (17, 1)],  # tile widths 1, 8, 16 (padded); segment vs 40 intervals
)
def test_native_adjoint_equals_torch_adjoint(batch, segment):
    """Gradients for y0, the stimulus (through the drive) and every trainable weight (input,
    lateral, feedforward): the torch discrete adjoint's, to float32 rounding; any segment length
    (checkpoint_every) gives the same."""
    torch.manual_seed(2)
    net = ColumnNetwork(spec=parity_spec())
    stim, t = trials(net, batch, 41, seed=3)
    y0 = net.initial_state(batch)
    gy = torch.randn(41, batch, net.state_size, generator=torch.Generator().manual_seed(4))
    s_nat, g_nat = _grads(net, stim, t, y0, gy, rk4exp(kernel="native", checkpoint_every=segment))
    s_tor, g_tor = _grads(net, stim, t, y0, gy, rk4exp(kernel="torch"))
    torch.testing.assert_close(s_nat, s_tor, rtol=2e-5, atol=2e-5 * float(s_tor.abs().max()))
    assert len(g_nat) == 5  # y0, stimulus, and the lateral, feedforward and input weights
    for got, want in zip(g_nat, g_tor, strict=True):
        assert float(want.abs().max()) > 0
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


@pytest.mark.parametrize("batch", [1, 17])
def test_csr_only_kernel_equals_torch(monkeypatch, batch):
    """Without the dense column blocks (BLOCK = 0: the path for P not a multiple of 8) the
    kernel's CSR of every nonzero gives the same states and gradients."""
    monkeypatch.setattr(native, "BLOCK", 0)
    torch.manual_seed(2)
    net = ColumnNetwork(spec=parity_spec())
    stim, t = trials(net, batch, 41, seed=3)
    y0 = net.initial_state(batch)
    gy = torch.randn(41, batch, net.state_size, generator=torch.Generator().manual_seed(4))
    s_nat, g_nat = _grads(net, stim, t, y0, gy, rk4exp(kernel="native"))
    s_tor, g_tor = _grads(net, stim, t, y0, gy, rk4exp(kernel="torch"))
    torch.testing.assert_close(s_nat, s_tor, rtol=2e-5, atol=2e-5 * float(s_tor.abs().max()))
    for got, want in zip(g_nat, g_tor, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_weight_gradient_on_pattern_equals_dense_there_and_is_zero_elsewhere():
    """grad_pattern (the connection masks) restricts w_t's gradient to the entries that reach a
    parameter: equal to the dense gradient on the pattern, including trainable weights that are
    exactly zero now, and zero outside it; a malformed pattern is refused."""
    torch.manual_seed(3)
    net = ColumnNetwork(spec=parity_spec())
    stim, t = trials(net, 5, 31, seed=1)
    with torch.no_grad():
        terms = net.prepare(stim).terms
        y0 = net.initial_state(5)
    pattern = terms.w_pattern_t
    w_t = terms.w_t.detach().clone()
    w_t[pattern.nonzero()[0].tolist()] = 0.0  # one pattern entry at exactly zero
    gy = torch.randn(31, 5, net.state_size, generator=torch.Generator().manual_seed(2))
    drive, _, kappa, c, *rest = kernel_args(terms, 31, 2, 0.5e-3)

    def grad(pat):
        w = w_t.clone().requires_grad_()
        args = (y0, drive.detach(), w, kappa.detach(), c, *rest)
        (native.rk4exp_rollout(*args, grad_pattern=pat) * gy).sum().backward()
        return w.grad

    dense, on_pattern = grad(None), grad(pattern)
    assert 0 < int(pattern.sum()) < pattern.numel()
    torch.testing.assert_close(on_pattern[pattern], dense[pattern], rtol=1e-4,
                               atol=1e-6 * float(dense.abs().max()))  # fmt: skip
    i, j = pattern.nonzero()[0].tolist()
    assert on_pattern[i, j] != 0  # the zero weight still gets its gradient
    assert torch.count_nonzero(on_pattern[~pattern]) == 0
    assert torch.count_nonzero(dense[~pattern]) > 0  # outside: what the plan skips
    with pytest.raises(ValueError, match="grad_pattern must be a \\[104, 104\\] bool"):
        grad(pattern.float())


def test_column_blocks_split_w_into_blocks_and_rest():
    torch.manual_seed(0)
    w_t = ColumnNetwork(spec=parity_spec()).prepare(torch.zeros(2, 1, 4)).terms.w_t.detach()
    blocks, by_source, rest = native.column_blocks(w_t)
    n = w_t.shape[0] // 8
    assert blocks.shape == by_source.shape == (n, 8, 8)
    dense = torch.block_diag(*by_source) + rest  # by_source[k] = w_t's k-th diagonal block
    assert torch.equal(dense, w_t)
    assert torch.equal(blocks, by_source.transpose(1, 2))
    assert torch.count_nonzero(torch.block_diag(*[torch.ones(8, 8)] * n) * rest) == 0
    assert 0 < torch.count_nonzero(rest) < torch.count_nonzero(w_t)  # lateral/feedforward
    assert native.column_blocks(torch.ones(12, 12)) is None


@pytest.mark.parametrize("batch", [1, 5, 19])
def test_forward_with_stores_is_bit_identical(batch):
    """The adjoint recomputes segments with stores from the forward's states: both forwards
    must round identically (same contraction into fused multiply-adds) for the stores to
    belong to the returned trajectory."""
    torch.manual_seed(0)
    net = ColumnNetwork(spec=parity_spec())
    stim, t = trials(net, batch, 61)
    with torch.no_grad():
        terms = net.prepare(stim).terms
        y0 = net.initial_state(batch)
    n_int, P, h = 60, net.n_pop, 0.5e-3
    c = terms.constants
    call = native._Call(terms.drive[:n_int], terms.w_t, terms.kappa, c, 2, h,
                        _filter_weights(c["tau_s"], h), 1)  # fmt: skip
    plain = call.states(y0)
    n_tiles, bt = -(-batch // native.tile_width(batch)), native.tile_width(batch)
    ps, ss = (torch.empty(n_tiles, P, n_int * 2 * 4 * bt) for _ in range(2))
    stored = torch.empty_like(plain)
    lib = native._lib_or_raise()
    call.call(lib.colenv_rk4exp_forward, call.problem(y0, 0, n_int, stored, ps=ps, ss=ss))
    assert torch.equal(plain, stored)
    assert torch.isfinite(ps).all() and float(ps.max()) > 1.0  # the stores were written


def test_native_adjoint_with_saturation_equals_torch_adjoint():
    params = load_params(overrides={"transfer.max_rate_hz": 40.0})
    torch.manual_seed(1)
    net = ColumnNetwork(spec=xor_spec(), params=params)
    stim, t = trials(net, 4, 31)
    stim = stim * 5.0
    y0 = net.initial_state(4)
    gy = torch.randn(31, 4, net.state_size, generator=torch.Generator().manual_seed(5))
    s_nat, g_nat = _grads(net, stim, t, y0, gy, rk4exp(step_ms=1.0))
    s_tor, g_tor = _grads(net, stim, t, y0, gy, rk4exp(step_ms=1.0, kernel="torch"))
    assert float(s_tor[..., 2 * net.n_pop :].max()) > 20.0
    for got, want in zip(g_nat, g_tor, strict=True):
        # float32 rounding through the saturating tanh: one of 248 stimulus-gradient entries
        # differs by 1.5e-5 of the largest (torch 2.13, before and after the SDE kernel change)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=3e-5 * float(want.abs().max()))


def test_kappa_gradient_takes_the_torch_path():
    torch.manual_seed(0)
    net = ColumnNetwork(spec=xor_spec())
    net.kappa.requires_grad_(True)
    stim, t = trials(net, 2, 11)
    states = rollout(net, stim, t, SolverConfig("rk4exp")).states
    (g,) = torch.autograd.grad(states[..., 2 * net.n_pop :].sum(), [net.kappa])
    assert torch.isfinite(g).all() and float(g.abs().max()) > 0
    with pytest.raises(ConfigError, match="no gradient for kappa .*kappa requires grad: True"):
        rollout(net, stim, t, rk4exp(kernel="native"))


def test_kernel_errors_name_the_value_and_what_is_allowed():
    with pytest.raises(ConfigError, match="solver.fast.kernel = 'gpu': Input should be 'auto'"):
        rk4exp(kernel="gpu")
    with pytest.raises(ConfigError, match="solver.fast applies to the fast methods"):
        SolverConfig("rk4", fast={"kernel": "native"})
    with pytest.raises(ConfigError, match=r"kernel = 'native': applies to method rk4exp \("):
        SolverConfig("exprk2", fast={"kernel": "native"})
    with pytest.raises(ConfigError, match=r"kernel = 'native': .* not method 'expeuler'"):
        SolverConfig("expeuler", sde=True, fast={"kernel": "native"})
    SolverConfig("rk4exp", sde=True, fast={"kernel": "native"})  # the SDE runs native too
    net = ColumnNetwork(spec=xor_spec(), dtype=torch.float64)
    stim, t = trials(net, 2, 11, dtype=torch.float64)
    with pytest.raises(ConfigError, match=r"float32 CPU tensors .*\(got torch.float64"):
        with torch.no_grad():
            rollout(net, stim, t, rk4exp(kernel="native"))
    with torch.no_grad():  # auto falls back to the torch path for float64
        rollout(net, stim, t, SolverConfig("rk4exp"))


def _entry_args(batch: int = 2, n_points: int = 5):
    """(y0, *kernel_args) of a small valid native call."""
    net = ColumnNetwork(spec=xor_spec())
    stim, _ = trials(net, batch, n_points)
    with torch.no_grad():
        terms = net.prepare(stim).terms
        return (net.initial_state(batch), *kernel_args(terms, n_points, 1, 1e-3))


@pytest.mark.parametrize("entry", ["forward", "rollout"])
@pytest.mark.parametrize("index, name", [(0, "y0"), (1, "drive"), (2, "w_t"), (3, "kappa")])
def test_entry_points_refuse_float64(entry, index, name):
    """float64 was once read as float32 memory: now every tensor argument is checked."""
    fn = native.rk4exp_forward if entry == "forward" else native.rk4exp_rollout
    args = list(_entry_args())
    fn(*args)  # the valid call runs
    args[index] = args[index].double()
    with pytest.raises(ValueError, match=rf"^{name} must be float32 .*got torch.float64"):
        fn(*args)


@pytest.mark.parametrize("index, name", [(0, "y0"), (1, "drive"), (3, "kappa")])
def test_entry_points_refuse_non_contiguous_memory(index, name):
    args = list(_entry_args())
    x = args[index]
    args[index] = torch.stack([x, x], dim=-1)[..., 0]  # same values, every other float
    assert not args[index].is_contiguous() and torch.equal(args[index], x)
    with pytest.raises(ValueError, match=rf"^{name} must be contiguous .*{name}\.contiguous\(\)"):
        native.rk4exp_forward(*args)
    args[index] = args[index].contiguous()
    native.rk4exp_forward(*args)


def test_entry_points_accept_any_layout_of_w_t():
    """w_t is repacked in Python (blocks and CSR), so a transposed view is fine."""
    y0, drive, w_t, *rest = _entry_args()
    assert not w_t.is_contiguous()  # Dynamics keeps W transposed as a view
    a = native.rk4exp_forward(y0, drive, w_t, *rest)
    b = native.rk4exp_forward(y0, drive, w_t.contiguous(), *rest)
    assert torch.equal(a, b)


def test_entry_points_refuse_other_devices_and_shapes():
    args = list(_entry_args())
    on_meta = list(args)
    on_meta[0] = args[0].to("meta")
    with pytest.raises(ValueError, match="^y0 must be on the CPU .*got meta"):
        native.rk4exp_forward(*on_meta)
    for index, bad, message in [
        (0, args[0][:, :-1].contiguous(), r"y0 must be \[B, 3P\]"),
        (2, args[2][:-1], r"w_t must be \[24, 24\], got \[23, 24\]"),
        (3, args[3][:-1].contiguous(), r"kappa must be \[24\], got \[23\]"),
        (1, args[1][:, :1].contiguous(), r"drive must be \[\*, 2, 24\], got \[5, 1, 24\]"),
        (5, 1, "n_points must be an integer >= 2, got 1"),
        (6, 0, "n_sub must be an integer >= 1, got 0"),
        (7, -1e-3, "h must be a step > 0"),
    ]:
        wrong = list(args)
        wrong[index] = bad
        with pytest.raises(ValueError, match=message):
            native.rk4exp_forward(*wrong)
    with pytest.raises(ValueError, match="n_threads must be None or an integer >= 1, got 0"):
        native.rk4exp_forward(*args, 0)


def test_drive_shape_is_checked():
    y0, drive, *rest = _entry_args(n_points=5)
    rest[3] = 10  # n_points: 9 intervals, the drive has 5 rows
    with pytest.raises(ValueError, match=r"drive must be \[>= 9, 2, 24\]"):
        native.rk4exp_forward(y0, drive, *rest)


def test_unavailable_kernel_falls_back(monkeypatch):
    """Without a working compiler "auto" runs the torch path and "native" says why."""
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_error", None)
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setenv("COLENV_CACHE_DIR", "/nonexistent-colenv-cache")
    with pytest.warns(native.NativeKernelWarning, match="15x slower.*install a C compiler"):
        assert not native.available()
    assert "nonexistent" in native.unavailable_reason()
    net = ColumnNetwork(spec=xor_spec())
    stim, t = trials(net, 2, 11)
    with torch.no_grad():
        auto = rollout(net, stim, t, SolverConfig("rk4exp")).states
        tor = rollout(net, stim, t, rk4exp(kernel="torch")).states
        assert torch.equal(auto, tor)
        with pytest.raises(ConfigError, match="unavailable here .*nonexistent"):
            rollout(net, stim, t, rk4exp(kernel="native"))


def test_build_is_cached_per_source(tmp_path, monkeypatch, capfd):
    """A fresh cache dir gets one library and one line on stderr saying what is built where;
    loading again reuses it silently (no rebuild)."""
    monkeypatch.setenv("COLENV_CACHE_DIR", str(tmp_path))
    lib = native._build()
    built = list(tmp_path.glob("rk4exp-*.so"))
    assert len(built) == 1 and lib is not None
    out, err = capfd.readouterr()
    assert out == "" and err.count("\n") == 1
    assert "building the native rk4exp kernel (once per machine" in err and str(tmp_path) in err
    mtime = built[0].stat().st_mtime_ns
    native._build()
    assert capfd.readouterr() == ("", "")
    assert [p.stat().st_mtime_ns for p in tmp_path.glob("rk4exp-*.so")] == [mtime]
    assert not list(tmp_path.glob("*.tmp*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [built[0].name, built[0].name + ".sha256"]
