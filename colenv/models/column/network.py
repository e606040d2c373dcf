"""Networks of laminar cortical columns as continuous-time rate dynamics.

Each column has 8 populations (L2/3e, L2/3i, L4e, L4i, L5e, L5i, L6e, L6i) wired as in the
Potjans & Diesmann (2014) microcircuit. Per population, with membrane potential v,
adaptation a and low-pass filtered rate r (the observable), docs/science.md:

    phi   = f(v - a)                                     instantaneous rate (Hz)
    I     = tau_s (W phi + w_bg nu_bg + W_in u(t))       synaptic current
    dv/dt = (-v + R I) / tau_m                           R = tau_m / C
    da/dt = (-a + kappa phi) / tau_a
    dr/dt = (-r + phi) / tau_s

Columns are grouped into areas forming a feedforward chain. W is assembled from one dense
matrix per kind of connection, each with a fixed mask of allowed entries and a Dale sign
(excitatory sources >= 0, inhibitory <= 0):

| kind        | source -> target                                   | default init            |
|-------------|----------------------------------------------------|-------------------------|
| recurrent   | within a column, P&D in-degrees                    | K J (params)            |
| lateral     | between columns of one area, (source, target) pops | init_k J, L2/3e -> L2/3i |
| feedforward | area n output pops -> area n+1 L4e/L4i             | K_ff J / n_source_cols* |
| input       | input channels -> first area's L4e/L4i             | K_ff J*                 |

*K_ff is P&D's thalamic in-degree of the target (L4e 295, L4i 186); targets without one get
their mean (240.5).

The state of one trial is y = [v (P), a (P), r (P)] with P = 8 x columns; the drift works on a
batch y [B, 3P] with a few tensor ops and no Python loop over trials, columns or areas.

Optional slow gating synapse (``spec.gating``, off by default; docs/science.md): chosen
connections act through a saturating gating variable S of their source (Wong & Wang 2006's
NMDA gating) instead of its rate, and the state becomes y = [v, a, r, S] [B, 4P]:

    dS/dt = -S / tau_S + gamma (1 - S) phi
    I     = tau_s (W_fast phi + W_slow S / (gamma tau_S) + w_bg nu_bg + W_in u(t))

W_fast + W_slow = W: a fixed gate mask per connection kind splits each effective weight.
Time inside the dynamics is in seconds (rates in Hz = 1/s); tasks and configs speak ms.
"""

from __future__ import annotations

import bisect
import math
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from colenv.config import parse
from colenv.errors import DivergenceError
from colenv.models.column.config import ColumnsConfig, columns_from_config, jitter_weights_
from colenv.models.column.params import (
    EXCITATORY,
    N_POP,
    POPULATIONS,
    ColumnParams,
    ConfigError,
    load_params,
    population_index,
)
from colenv.models.column.spec import ConnectionSpec, NetworkSpec, _pair_matrix
from colenv.models.column.transfer import rate_function

if TYPE_CHECKING:
    from colenv.solve import FastOptions


class Connection(nn.Module):
    """One kind of connection: a dense signed weight, an allowed-entry mask and a Dale sign.

    The trainable ``weight`` is in units of each entry's initial magnitude (``scale``, nA), so
    every entry starts at +-1 and one optimizer learning rate means the same relative change
    for a 0.5 nA and an 800 nA synapse. The effective weight (nA) is
    ``weight * scale * mask``; entries outside ``train_mask`` are detached so they keep their
    value. :meth:`project_` restores the masks and Dale signs after an optimizer step.

    With ``log=True`` the weight is the log magnitude instead, ``sign * exp(weight) * scale``:
    Dale's law holds by construction and a learning rate is a multiplicative step, so a
    synapse can grow tenfold in as many steps as it would grow by 10 % linearly.
    """

    def __init__(
        self,
        init: torch.Tensor,
        mask: torch.Tensor,
        sign: torch.Tensor,
        train_mask: torch.Tensor,
        log: bool = False,
    ) -> None:
        super().__init__()
        trains = bool(train_mask.any())
        init = init * mask
        magnitude = init.abs()
        typical = magnitude[magnitude > 0].mean() if bool((magnitude > 0).any()) else 1.0
        scale = torch.where(magnitude > 0, magnitude, torch.as_tensor(typical, dtype=init.dtype))
        self.log = log
        if log:  # weight = log magnitude relative to scale: Dale's sign is built in
            self.weight = nn.Parameter(torch.zeros_like(init).float(), requires_grad=trains)
        else:
            self.weight = nn.Parameter((init / scale).float(), requires_grad=trains)
        self.register_buffer("scale", scale.float())
        self.register_buffer("mask", mask.float())
        self.register_buffer("sign", sign.float())
        self.register_buffer("train_mask", (train_mask * mask).float())
        self.trains = trains
        self.all_train = bool((self.train_mask == self.mask).all())

    def effective(self) -> torch.Tensor:
        """The weight in nA, [target, source]."""
        w = self.weight
        if self.trains and not self.all_train:
            w = torch.where(self.train_mask.bool(), w, w.detach())
        if self.log:
            return self.sign * torch.exp(w) * self.scale * self.mask
        return w * self.scale * self.mask

    @torch.no_grad()
    def project_(self) -> None:
        """Zero disallowed entries and enforce Dale's law (sign * w >= 0)."""
        w = self.weight
        if self.log:  # signs hold by construction; keep magnitudes within float range
            w.clamp_(max=30.0).mul_(self.mask)
            return
        w.copy_(self.sign * torch.clamp(self.sign * w, min=0.0) * self.mask)


class ColumnNetwork(nn.Module):
    """A network of laminar cortical columns (see the module docstring for the equations).

    Args:
        params: column parameters (:func:`colenv.models.load_params`); default config/model.toml.
        spec: the network layout (:class:`NetworkSpec`, or a dict of its keys, as in TOML).
        seed: seed of the jitter of the trainable initial weights (``spec.init_jitter``) unless
            ``spec.init_seed`` overrides it; a training run passes ``train.seed``.
        device, dtype: where the weights live.

    Shapes: state y [B, S] with S = 3P ([v, a, r]; 4P = [v, a, r, S] with ``spec.gating``),
    P = 8 x n_columns; input u [T, B, n_inputs]; readout [T, B, n_outputs] with one output per
    column of the last area.
    """

    Config = ColumnsConfig
    """options under ``[model]`` (kind "columns"): ``params`` overrides and the ``network``"""
    from_config = classmethod(columns_from_config)
    """build from a :class:`ColumnsConfig` for a task (colenv.models.registry)"""

    def __init__(
        self,
        params: ColumnParams | None = None,
        spec: NetworkSpec | dict | None = None,
        *,
        seed: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.params = params = params if params is not None else load_params()
        if spec is None:
            spec = NetworkSpec()
        else:
            spec = parse(NetworkSpec, spec, where="network")
        self.spec = spec
        n_cols = spec.n_columns
        self.n_columns = n_cols
        self.n_pop = P = N_POP * n_cols
        self.gated = spec.gating is not None
        self.state_size = (4 if self.gated else 3) * P
        self.n_inputs = spec.n_inputs

        # Which area/column each column belongs to, and per-population metadata.
        col_area = torch.cat(
            [torch.full((a.n_columns,), i, dtype=torch.long) for i, a in enumerate(spec.areas)]
        )
        pop_col = torch.arange(P) // N_POP
        pop_area = col_area[pop_col]
        pop_type = torch.arange(P) % N_POP
        self.register_buffer("pop_area", pop_area, persistent=False)
        self.population_names = [
            f"{spec.areas[int(col_area[c])].name}[{c - int(_first_col(spec, int(col_area[c])))}]"
            f".{POPULATIONS[k]}"
            for c in range(n_cols)
            for k in range(N_POP)
        ]

        sign_src = (2 * EXCITATORY - 1).double()[pop_type]  # +1 excitatory, -1 inhibitory source
        sign = sign_src[None, :].expand(P, P)
        same_col = pop_col[:, None] == pop_col[None, :]
        same_area = pop_area[:, None] == pop_area[None, :]
        next_area = pop_area[:, None] == pop_area[None, :] + 1  # target area = source area + 1

        log = spec.parametrization == "log"
        # Recurrent: block-diagonal P&D weights, allowed where p > 0.
        rec_init = torch.zeros(P, P, dtype=torch.float64)
        for c in range(n_cols):
            area = spec.areas[int(col_area[c])]
            sl = slice(c * N_POP, (c + 1) * N_POP)
            rec_init[sl, sl] = params.recurrent_weights(area.sizes)
        rec_allowed8 = (torch.tensor(params.connectivity.p, dtype=torch.float64) > 0).double()
        if spec.recurrent.pairs is not None:
            rec_allowed8 = _pair_matrix(spec.recurrent.pairs, "recurrent")
        rec_mask = same_col.double() * rec_allowed8[pop_type[:, None], pop_type[None, :]]
        rec_mask = rec_mask * float(spec.recurrent.enabled)
        self.recurrent = Connection(
            rec_init, rec_mask, sign, self._train_mask(spec.recurrent, rec_mask, pop_type), log
        )

        j = params.synapses.j_na
        # Lateral: between different columns of the same area.
        lat = spec.lateral
        lat_pairs = lat.pairs if lat.pairs is not None else (("L23e", "L23i"),)
        lat8 = _pair_matrix(lat_pairs, "lateral")
        lat_mask = (same_area & ~same_col).double() * lat8[pop_type[:, None], pop_type[None, :]]
        lat_mask = lat_mask * float(lat.enabled)
        lat_k = lat.init_k if lat.init_k is not None else 500.0
        lat_init = sign * lat_k * j * lat_mask
        if lat.edges is not None:
            lat_init, lat_mask = self._edges("lateral", lat, same_area & ~same_col)
            lat_init = sign * lat_init
        self.lateral = Connection(
            lat_init,
            lat_mask,
            sign,
            self._train_mask(lat, lat_mask, pop_type),
            log,
        )

        # Feedforward: output pops of area n -> L4e/L4i of area n+1, all-to-all over columns.
        ff = spec.feedforward
        ff_pairs = ff.pairs if ff.pairs is not None else (("L23e", "L4e"), ("L23e", "L4i"))
        ff8 = _pair_matrix(ff_pairs, "feedforward")
        ff_mask = next_area.double() * ff8[pop_type[:, None], pop_type[None, :]]
        ff_mask = ff_mask * float(ff.enabled)
        k_ff = torch.tensor(params.input.k_ff, dtype=torch.float64)
        # afferent in-degree: the thalamic K_ff where P&D give one (L4), else their mean
        default_k = torch.where(k_ff > 0, k_ff, k_ff[k_ff > 0].mean())
        n_src_cols = torch.tensor(
            [spec.areas[max(int(a) - 1, 0)].n_columns for a in pop_area], dtype=torch.float64
        )
        if ff.init_k is not None:
            ff_target_k = torch.full((P,), float(ff.init_k), dtype=torch.float64)
        else:
            ff_target_k = default_k[pop_type]
        ff_init = sign * (ff_target_k / n_src_cols)[:, None] * j * ff_mask
        if ff.edges is not None:
            ff_init, ff_mask = self._edges("feedforward", ff, next_area)
            ff_init = sign * ff_init
        self.feedforward = Connection(
            ff_init, ff_mask, sign, self._train_mask(ff, ff_mask, pop_type), log
        )

        # Input: channels -> first area's L4e/L4i (positive, excitatory afferents).
        inp = spec.input
        in_pairs = inp.pairs if inp.pairs is not None else (("input", "L4e"), ("input", "L4i"))
        in_targets = torch.zeros(N_POP, dtype=torch.float64)
        for src, tgt in in_pairs:
            if src != "input":
                raise ConfigError(
                    f"network.input.pairs must be ('input', population), got {(src, tgt)!r}"
                )
            in_targets[population_index(tgt)] = 1.0
        I = spec.n_inputs
        in_mask = (pop_area == 0).double()[:, None] * in_targets[pop_type][:, None]
        in_mask = in_mask.expand(P, I).clone()
        if spec.input_mode == "one_to_one":
            in_mask = in_mask * (pop_col[:, None] == torch.arange(I)[None, :]).double()
        in_mask = in_mask * float(inp.enabled)
        in_k = default_k[pop_type] if inp.init_k is None else torch.full((P,), inp.init_k)
        in_init = in_k[:, None].double() * j * in_mask
        if inp.edges is not None:
            first_area = (pop_area == 0)[:, None].expand(P, I)
            in_init, in_mask = self._edges("input", inp, first_area)
        if isinstance(inp.trainable, tuple):  # only some target populations train
            in_train_targets = torch.zeros(N_POP, dtype=torch.float64)
            for src, tgt in inp.trainable:
                if src != "input":
                    raise ConfigError(
                        f"network.input.trainable pairs must be ('input', population), "
                        f"got {(src, tgt)!r}"
                    )
                in_train_targets[population_index(tgt)] = 1.0
            in_train = in_mask * in_train_targets[pop_type][:, None]
        else:
            in_train = in_mask * float(bool(inp.trainable))
        self.input = Connection(in_init, in_mask, torch.ones(P, I), in_train, log)

        # Fixed per-population constants (not trained), float64 then cast with the module.
        self.register_buffer("bg_drive", params.background_drive()[pop_type].clone())
        kappa = torch.tensor(params.neuron.kappa, dtype=torch.float64)
        self.register_buffer("kappa", kappa[pop_type])
        last = len(spec.areas) - 1
        readout_idx = ((pop_area == last) & (pop_type == population_index(spec.readout))).nonzero()
        self.register_buffer("readout_index", readout_idx.flatten(), persistent=False)
        self.n_outputs = int(self.readout_index.numel())
        if spec.gating is not None:
            self._gate_masks(spec, pop_type)
        if spec.init_jitter > 0:
            jitter_seed = seed if spec.init_seed is None else spec.init_seed
            jitter_weights_(self, spec.init_jitter, jitter_seed)

        self.to(device=device, dtype=dtype)

    def _edges(
        self, kind: str, conn: ConnectionSpec, allowed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(initial magnitudes (nA), mask) [target, source] of ``conn.edges``; ``allowed`` is
        where this kind may connect at all (e.g. area n -> n + 1 for feedforward)."""
        targets = {name: i for i, name in enumerate(self.population_names)}
        if kind == "input":
            sources = {f"input[{k}]": k for k in range(self.n_inputs)}
            rule = "from an input channel 'input[k]' to a population of the first area"
        else:
            sources = targets
            rule = {
                "lateral": "between different columns of the same area",
                "feedforward": "from a population of area n to one of area n + 1",
            }[kind]
        init = torch.zeros(allowed.shape, dtype=torch.float64)
        for src, tgt, weight in conn.edges:
            where = f"network.{kind}.edges: edge {src!r} -> {tgt!r}"
            for name, names in ((src, sources), (tgt, targets)):
                if name not in names:
                    example = next(iter(names), "input[0]")
                    raise ConfigError(
                        f"{where}: unknown population {name!r}; names look like {example!r} "
                        f"(area[column].population{', or input[k]' if kind == 'input' else ''})"
                    )
            i, k = targets[tgt], sources[src]
            if not bool(allowed[i, k]):
                raise ConfigError(f"{where}: {kind} edges run {rule}")
            if isinstance(weight, bool) or not isinstance(weight, int | float):
                raise ConfigError(f"{where}: the weight must be a number (nA), got {weight!r}")
            if not (math.isfinite(weight) and weight > 0):
                raise ConfigError(
                    f"{where}: the weight is a magnitude in nA (> 0, the sign follows Dale's "
                    f"law from the source), got {weight!r}"
                )
            if init[i, k] != 0:
                raise ConfigError(f"{where}: listed twice")
            init[i, k] = float(weight)
        mask = (init > 0).double() * float(conn.enabled)
        return init * mask, mask

    def _gate_masks(self, spec: NetworkSpec, pop_type: torch.Tensor) -> None:
        """Buffers ``gate_<kind>`` [P target, P source] 0/1: the entries of each gated kind
        that act through S; ConfigError for a gating pair that matches no connection."""
        gating = spec.gating
        conns = self.connections()
        found = dict.fromkeys(gating.pairs, False)
        for kind in gating.kinds:
            mask = conns[kind].mask.double()
            gate = torch.zeros_like(mask)
            for pair in gating.pairs:
                m8 = _pair_matrix((pair,), "gating")
                part = mask * m8[pop_type[:, None], pop_type[None, :]]
                found[pair] = found[pair] or bool(part.any())
                gate = torch.maximum(gate, part)
            self.register_buffer(f"gate_{kind}", gate, persistent=False)
        missing = [list(pair) for pair, hit in found.items() if not hit]
        if missing:
            raise ConfigError(
                f"network.gating.pairs: {missing[0]!r} matches no existing connection of kind "
                f"{' or '.join(gating.kinds)} (allowed: [source, target] population types "
                "joined by an enabled connection of the gated kinds; check network.gating.kinds "
                "and the connection's enabled/pairs)"
            )

    @staticmethod
    def _train_mask(conn: ConnectionSpec, mask: torch.Tensor, pop_type: torch.Tensor):
        if conn.trainable is True:
            return mask
        if conn.trainable is False:
            return torch.zeros_like(mask)
        m8 = _pair_matrix(conn.trainable, "trainable")
        return mask * m8[pop_type[:, None], pop_type[None, :]]

    # ----------------------------------------------------------------------------- weights
    def connections(self) -> dict[str, Connection]:
        return {
            "recurrent": self.recurrent,
            "lateral": self.lateral,
            "feedforward": self.feedforward,
            "input": self.input,
        }

    def weight_matrix(self) -> torch.Tensor:
        """Total effective recurrent-network weight W [P target, P source] (nA)."""
        return self.recurrent.effective() + self.lateral.effective() + self.feedforward.effective()

    def weight_split(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W_fast, W_slow) [P target, P source] (nA): the entries driven by the source's rate
        and those gated by its S (``spec.gating``); W_fast + W_slow = :meth:`weight_matrix`.
        Without gating, (weight_matrix(), None)."""
        if not self.gated:
            return self.weight_matrix(), None
        fast, slow = None, None
        for kind in ("recurrent", "lateral", "feedforward"):
            w = self.connections()[kind].effective()
            gate = getattr(self, f"gate_{kind}", None)
            if gate is not None:
                slow = w * gate if slow is None else slow + w * gate
                w = w * (1.0 - gate)
            fast = w if fast is None else fast + w
        return fast, slow

    def gate_pattern(self) -> torch.Tensor | None:
        """Where W_slow can be nonzero, [P target, P source] bool (the gated entries of every
        kind); None without gating."""
        if not self.gated:
            return None
        gates = [getattr(self, f"gate_{k}") for k in self.spec.gating.kinds]
        return torch.stack(gates).amax(0) != 0

    def gate_constants(self) -> tuple[float, float] | None:
        """(tau_S in s, gamma) of the gating synapse, None without gating."""
        g = self.spec.gating
        return None if g is None else (g.tau_ms * 1e-3, g.gamma)

    def weight_pattern(self) -> torch.Tensor:
        """Where W can be nonzero, [P target, P source] bool: the union of the recurrent, lateral
        and feedforward masks (W's gradient outside it reaches no parameter)."""
        masks = (self.recurrent.mask, self.lateral.mask, self.feedforward.mask)
        return (masks[0] != 0) | (masks[1] != 0) | (masks[2] != 0)

    @torch.no_grad()
    def project_(self) -> None:
        """Masks and Dale signs for every kind; call after each optimizer step."""
        for conn in self.connections().values():
            conn.project_()

    # ----------------------------------------------------------------------------- dynamics
    def constants(self) -> dict[str, float]:
        """Time constants (s) and gains of the dynamics, as plain floats."""
        n, f = self.params.neuron, self.params.transfer
        tau_m = n.tau_m_ms * 1e-3
        tau_s = n.tau_s_ms * 1e-3
        return {
            "tau_s": tau_s,
            "tau_m": tau_m,
            "tau_a": n.tau_a_ms * 1e-3,
            "gain": self.params.resistance * tau_s / tau_m,  # R tau_s / tau_m: current -> dv/dt
            "da": f.d * f.a,
            "db": f.d * f.b,
            "d": f.d,
            "max_rate": f.max_rate_hz,
        }

    def prepare(self, stimulus: torch.Tensor) -> Dynamics:
        """Bind the current weights and a stimulus [T, B, I] (Hz) into a :class:`Dynamics`.

        Effective weights and the input drive are computed once per rollout here, so the
        right-hand side evaluated by the solver is a handful of batched ops.
        """
        if stimulus.dim() != 3 or stimulus.shape[-1] != self.n_inputs:
            raise ValueError(
                f"stimulus must be [T, B, {self.n_inputs}] (n_inputs of this network), "
                f"got {tuple(stimulus.shape)}"
            )
        c = self.constants()
        gain = c["gain"]
        w, w_slow = self.weight_split()
        w = w * gain
        # one fused product writes the [T, B, P] drive once (matmul, + bg, * gain were three
        # passes over it: ~0.1 s of a 1.5 s rollout at batch 256, docs/profiling.md)
        T, B, n_in = stimulus.shape
        drive = torch.addmm(
            self.bg_drive * gain, stimulus.reshape(T * B, n_in), self.input.effective().t() * gain
        ).view(T, B, self.n_pop)
        return Dynamics(self, w, drive, c, None if w_slow is None else w_slow * gain)

    def phi(self, y: torch.Tensor) -> torch.Tensor:
        """Instantaneous rates f(v - a) of states y [..., S] -> [..., P]."""
        c = self.constants()
        P = self.n_pop
        return _rate(y[..., :P] - y[..., P : 2 * P], c)

    def rates(self, states: torch.Tensor) -> torch.Tensor:
        """Population rates (Hz) [..., P] of states [..., S] in the configured readout variable."""
        if self.spec.readout_variable == "phi":
            return self.phi(states)
        return states[..., 2 * self.n_pop : 3 * self.n_pop]

    def readout(self, states: torch.Tensor) -> torch.Tensor:
        """Output rates [..., n_outputs]: the readout population of each last-area column."""
        return self.rates(states).index_select(-1, self.readout_index)

    @torch.no_grad()
    def rest_state(self, drive: torch.Tensor | None = None, *, tol: float = 1e-9) -> torch.Tensor:
        """Stable steady state [S] under constant input (background only by default).

        Solves F(u) = R tau_s (W f(u) + drive) - kappa f(u) - u = 0 for u = v - a (a at its
        steady state kappa f(u)) by pseudo-transient continuation (Kelley & Keyes 1998):
        implicit-Euler steps (I/ds - F'(u)) du = F(u) of the relaxation du/ds = F(u), with ds
        growing as the residual falls, so it follows the dynamics into a stable fixed point and
        ends in Newton's quadratic convergence. Float64. v = u + a, a = kappa f(u), r = f(u).
        With gating, S is at its steady state too, S* = gamma tau_S phi / (1 + gamma tau_S phi),
        so W_slow acts on S* / (gamma tau_S) = phi / (1 + gamma tau_S phi) and the state ends
        in S*. (The continuation follows the dynamics with a and S slaved to u; a fixed point
        is one of the full system either way.)
        Raises :class:`colenv.DivergenceError` naming a NaN/inf parameter, buffer or drive,
        or if it does not converge.
        """
        named = [*self.named_parameters(), *self.named_buffers()]
        named += [] if drive is None else [("drive (argument)", drive)]
        bad = [
            f"{name} ({int((~torch.isfinite(x)).sum())} of {x.numel()} entries)"
            for name, x in named
            if x.is_floating_point() and not bool(torch.isfinite(x).all())
        ]
        if bad:
            raise DivergenceError(
                f"rest_state: {', '.join(bad)} not finite (NaN/inf); the rest state needs "
                "finite weights and drive (reload a checkpoint written while training was finite)"
            )
        c = self.constants()
        w_fast, w_slow = self.weight_split()
        w = (w_fast * c["gain"] * c["tau_m"]).double()
        ws = None if w_slow is None else (w_slow * c["gain"] * c["tau_m"]).double()
        gt = 0.0 if ws is None else self.gate_constants()[0] * self.gate_constants()[1]
        b = (self.bg_drive if drive is None else drive).double() * c["gain"] * c["tau_m"]
        kappa = self.kappa.double()
        eye = torch.eye(self.n_pop, dtype=torch.float64, device=b.device)

        f_and_slope = rate_function(c, "slope")

        def residual(u):
            phi = _rate(u, c)
            if ws is None:
                return w @ phi + b - kappa * phi - u
            return w @ phi + ws @ (phi / (1.0 + gt * phi)) + b - kappa * phi - u

        u = b.clone()  # a cold start from the background drive: same weights, same rest state
        res = residual(u)
        norm = float(res.abs().max())
        ds = 0.1
        for _ in range(400):
            if norm < tol:
                break
            phi_u, slope = f_and_slope(u)
            jac = (w - torch.diag(kappa)) * slope[None, :] - eye
            if ws is not None:  # d/du of phi / (1 + gt phi) = slope / (1 + gt phi)^2
                jac = jac + ws * (slope / (1.0 + gt * phi_u) ** 2)[None, :]
            try:
                du = torch.linalg.solve(eye / ds - jac, res)
            except RuntimeError:  # singular: shorten the pseudo-time step
                ds *= 0.25
                continue
            u_new = u + du
            res_new = residual(u_new)
            norm_new = float(res_new.abs().max())
            if not math.isfinite(norm_new) or norm_new > 2.0 * norm:
                ds *= 0.25
                continue
            ds = min(ds * max(norm / max(norm_new, 1e-300), 0.5), 1e12)
            u, res, norm = u_new, res_new, norm_new
        if not norm < 1e-6:
            raise DivergenceError(
                f"rest_state did not converge (max residual {norm:.3g}, largest rate "
                f"{float(_rate(u, c).abs().max()):.4g} Hz); the network may have no stable "
                "resting state with these weights and background drive"
            )
        phi = _rate(u, c)
        a = kappa * phi
        parts = [u + a, a, phi]
        if ws is not None:
            parts.append(gt * phi / (1.0 + gt * phi))
        state = torch.cat(parts)
        return state.to(self.bg_drive.dtype)

    def initial_state(self, batch_size: int) -> torch.Tensor:
        """Rest state repeated over the batch, [B, S]."""
        return self.rest_state().expand(batch_size, -1).clone()

    def describe_state_index(self, index: int) -> str:
        """Human-readable name of state entry ``index`` (e.g. 'mt[3].L23e v')."""
        var = ("v", "a", "r", "S")[index // self.n_pop]
        return f"{self.population_names[index % self.n_pop]} {var}"


def _rate(x: torch.Tensor, c: dict) -> torch.Tensor:
    """phi = f(x) (Hz) for x = v - a, with the optional rate ceiling; ``c`` from constants()."""
    return rate_function(c)(x)


def _first_col(spec: NetworkSpec, area: int) -> int:
    return sum(a.n_columns for a in spec.areas[:area])


class ColumnTerms(NamedTuple):
    """The column model's equations as data: what its own integrators take from a rollout.

    Per population (P of them), with phi = f(v - a) (:func:`colenv.models.column.transfer.
    rate_function` of ``constants``):

        dv/dt = -v / tau_m + phi @ w_t + drive       (linear decay 1 / tau_m)
        da/dt = (kappa phi - a) / tau_a               (linear decay 1 / tau_a)
        dr/dt = (phi - r) / tau_s                     (linear decay 1 / tau_s)

    With the gating synapse (``w_slow_t`` not None) the state is (v, a, r, S) and

        dv/dt = -v / tau_m + phi @ w_t + (S / (gamma tau_S)) @ w_slow_t + drive
        dS/dt = -S / tau_S + gamma (1 - S) phi        (tau_S = gate_tau, gamma = gate_gamma)

    plus, for SDE rollouts, additive noise sigma dW on v. The exponential integrators
    (:mod:`colenv.models.column.integrators`) and the native kernel read these fields only.
    """

    w_t: torch.Tensor
    """[P source, P target]: the recurrent weight W (nA) times R tau_s / tau_m, transposed"""
    drive: torch.Tensor
    """[T, B, P]: background and input drive, same scaling; drive[k] acts on [t_k, t_{k+1})"""
    kappa: torch.Tensor
    """[P]: adaptation strength"""
    constants: dict[str, float]
    """tau_m, tau_a, tau_s (s), da, db, d, max_rate, gain (:meth:`ColumnNetwork.constants`)"""
    sigma: float = 0.0
    """noise amplitude on v of SDE rollouts (per sqrt(s)); 0 for a noise-free network"""
    w_pattern_t: torch.Tensor | None = None
    """[P source, P target] bool: where w_t's gradient reaches a parameter (None: everywhere)"""
    w_slow_t: torch.Tensor | None = None
    """[P source, P target]: the gated entries of W (same units as w_t, w_t has them zeroed);
    None without gating"""
    w_slow_pattern_t: torch.Tensor | None = None
    """[P source, P target] bool: where w_slow_t's gradient reaches a parameter (the gated
    entries); None without gating"""
    gate_tau: float = 0.0
    """tau_S (s) of the gating synapse (0 without gating)"""
    gate_gamma: float = 0.0
    """gamma of the gating synapse (0 without gating)"""

    @property
    def gated(self) -> bool:
        """Whether the state carries the gating variable S ([v, a, r, S], 4P)."""
        return self.w_slow_t is not None

    @property
    def n_pop(self) -> int:
        """P, the number of populations."""
        return self.w_t.shape[0]


class Dynamics(nn.Module):
    """The right-hand side bound to one rollout: weights and input drive precomputed.

    ``forward(t, y)`` is the drift (torchdiffeq signature, t in seconds); ``f``/``g`` are the
    torchsde drift and diagonal diffusion. The input is piecewise constant: drive[k] holds on
    [t_k, t_{k+1}) of the grid given to :meth:`set_grid`.

    Public interface for integrators: :attr:`terms` (a :class:`ColumnTerms`: the weights,
    drive, adaptation, constants and noise of this rollout) and :meth:`fast_rollout`, the
    column model's own fast schemes (expeuler, exprk2, rk4exp), which
    :func:`colenv.rollout` calls for those methods.
    """

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(
        self,
        net: ColumnNetwork,
        w: torch.Tensor,
        drive: torch.Tensor,
        c: dict,
        w_slow: torch.Tensor | None = None,
    ):
        super().__init__()
        self.net = net
        gate = net.gate_constants() if w_slow is not None else None
        self.terms = ColumnTerms(
            w_t=w.t(),
            drive=drive,
            kappa=net.kappa,
            constants=c,
            sigma=net.spec.noise_std * (2.0 / c["tau_m"]) ** 0.5,
            w_pattern_t=net.weight_pattern().t(),
            w_slow_t=None if w_slow is None else w_slow.t(),
            w_slow_pattern_t=None if w_slow is None else net.gate_pattern().t(),
            gate_tau=0.0 if gate is None else gate[0],
            gate_gamma=0.0 if gate is None else gate[1],
        )
        self.nfe = 0
        self.grid: list[float] = [0.0]
        self._phi = rate_function(c)
        self._inv_tau = (1.0 / c["tau_m"], 1.0 / c["tau_a"], 1.0 / c["tau_s"])

    def set_grid(self, t_s: torch.Tensor) -> None:
        """The trial's time grid (s): ``drive[k]`` acts on the interval [t_k, t_{k+1})."""
        self.grid = t_s.tolist()  # Python floats (iterating the tensor costs ~1 ms per 1000)

    def drive_at(self, t: torch.Tensor | float) -> torch.Tensor:
        """Input drive [B, P] at time t (s), right-continuous on the grid.

        The lookup compares against the grid values themselves (no float division), so the
        one-ulp nudges that torchdiffeq's ``perturb``/``jump_t`` apply at step ends select the
        interval the step belongs to: a step ending on t_{k+1} still sees input k.
        """
        drive = self.terms.drive
        k = bisect.bisect_right(self.grid, float(torch.as_tensor(t).detach())) - 1
        return drive[min(max(k, 0), drive.shape[0] - 1)]

    def rhs(self, y: torch.Tensor, drive: torch.Tensor) -> torch.Tensor:
        """The drift [B, S] of states y [B, S] under drive [B, P] (the equations of
        :class:`ColumnTerms`)."""
        terms = self.terms
        inv_tau_m, inv_tau_a, inv_tau_s = self._inv_tau
        P = terms.w_t.shape[0]
        if terms.gated:
            return self._rhs_gated(y, drive)
        v, a, r = y[..., :P], y[..., P : 2 * P], y[..., 2 * P :]
        phi = self._phi(v - a)
        dv = torch.addmm(drive, phi, terms.w_t) - v * inv_tau_m
        da = (terms.kappa * phi - a) * inv_tau_a
        dr = (phi - r) * inv_tau_s
        return torch.cat([dv, da, dr], dim=-1)

    def _rhs_gated(self, y: torch.Tensor, drive: torch.Tensor) -> torch.Tensor:
        terms = self.terms
        inv_tau_m, inv_tau_a, inv_tau_s = self._inv_tau
        P = terms.w_t.shape[0]
        v, a, r, s = y[..., :P], y[..., P : 2 * P], y[..., 2 * P : 3 * P], y[..., 3 * P :]
        phi = self._phi(v - a)
        inv_g = 1.0 / (terms.gate_gamma * terms.gate_tau)
        dv = torch.addmm(drive, phi, terms.w_t) + (s * inv_g) @ terms.w_slow_t - v * inv_tau_m
        da = (terms.kappa * phi - a) * inv_tau_a
        dr = (phi - r) * inv_tau_s
        ds = terms.gate_gamma * (1.0 - s) * phi - s / terms.gate_tau
        return torch.cat([dv, da, dr, ds], dim=-1)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return self.rhs(y, self.drive_at(t))

    # torchsde interface
    def f(self, t, y):
        return self.forward(t, y)

    def g(self, t, y):
        g = torch.zeros_like(y)
        g[..., : self.terms.w_t.shape[0]] = self.terms.sigma
        return g

    def fast_rollout(
        self,
        y0: torch.Tensor,
        n_points: int,
        n_sub: int,
        h: float,
        method: str,
        options: FastOptions | None = None,
        *,
        noise: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The column model's fast schemes: states [n_points, B, S] on the grid from y0 [B, S].

        ``n_sub`` steps of ``h`` seconds per grid interval; ``method`` "expeuler", "exprk2"
        or "rk4exp"; ``options`` a :class:`colenv.solve.FastOptions`; ``noise`` adds the
        SDE's noise (``terms.sigma``) drawn from ``generator``. See
        :func:`colenv.models.column.integrators.fast_rollout`; counts the stages in ``nfe``
        and the steps (exprb2's onset sub-steps included) in ``fast_steps``.
        """
        from colenv.models.column import integrators

        states = integrators.fast_rollout(
            self.terms, y0, n_points, n_sub, h, method, options, noise=noise, generator=generator
        )
        self.fast_steps = integrators.fast_steps(self.terms, n_points, n_sub, h, method, options)
        self.nfe += self.fast_steps * integrators.STAGES[method]
        return states
