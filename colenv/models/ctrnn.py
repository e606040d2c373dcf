"""A continuous-time rate RNN with Dale's law: the baseline network of PsychRNN and NeuroGym.

Per unit i of ``n_hidden`` (Song, Yang & Wang 2016, PLoS Comput Biol 12: e1004792)::

    tau dx/dt = -x + W_rec r + W_in u(t) + b  (+ sqrt(2 tau) noise_std xi(t) under the SDE)
    r = relu(x)  or  softplus(x)
    output = W_out r_E + b_out

x is the unit's input current in rate units (Hz) and r its rate (Hz). With Dale's law
(``dale = true``) the first ``round(excitatory_fraction * n_hidden)`` units are excitatory and
the rest inhibitory: every column of ``W_rec`` has its source's sign (E >= 0, I <= 0), input
weights are >= 0 (afferents are excitatory), and the readout takes the excitatory units only
with weights >= 0, as a downstream area would. ``W_rec`` exists only on a fixed random mask
(each entry with probability ``connection_prob``, no self-connections unless ``autapses``).
Signs and mask are restored by :meth:`CTRNN.project_`, which the trainers call after every
optimizer step; the rollout uses ``W_rec * mask``, so masked entries get no gradient.

Initial weights: magnitudes ``|N(0, 1)|`` on the mask, inhibitory columns scaled by
n_E / n_I so that the mean excitation and inhibition a unit receives balance, the whole matrix
then scaled to spectral radius ``spectral_radius``; input weights ``|N(0, input_std^2)|``;
readout ``|N(0, 1)| / n_E``; biases 0. Every random number comes from ``seed``.

Time in the dynamics is in seconds (the solvers' unit), ``tau_ms`` in ms. The model follows the
rollout protocol of :mod:`colenv.solve`; it has no colenv fast scheme, so it runs with the
torchdiffeq / torchsde methods. Options under ``[model]`` (``kind = "ctrnn"``):
:class:`CTRNNConfig`.
"""

from __future__ import annotations

import bisect
import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from colenv.config import StrictModel
from colenv.errors import ConfigError

__all__ = ["CTRNN", "CTRNNConfig"]


class CTRNNConfig(StrictModel):
    """``[model]`` of the rate RNN."""

    n_hidden: int = Field(64, ge=1, description="number of recurrent units")
    dale: bool = Field(True, description="excitatory and inhibitory units with fixed signs")
    excitatory_fraction: float = Field(
        0.8, gt=0, le=1, description="fraction of excitatory units (with dale)"
    )
    tau_ms: float = Field(100.0, gt=0, description="time constant of every unit, ms")
    activation: Literal["relu", "softplus"] = Field("relu", description="rate function r(x)")
    connection_prob: float = Field(
        1.0, gt=0, le=1, description="probability that a recurrent connection exists (mask)"
    )
    autapses: bool = Field(False, description="allow self-connections")
    spectral_radius: float = Field(
        1.0, ge=0, description="spectral radius of the initial recurrent weight matrix"
    )
    input_std: float = Field(0.1, ge=0, description="scale of the initial input weights")
    noise_std: float = Field(
        0.0, ge=0, description="SDE only: stationary std (Hz) of x of an isolated unit"
    )

    @model_validator(mode="after")
    def _populations(self) -> CTRNNConfig:
        if self.dale:
            n_e = round(self.excitatory_fraction * self.n_hidden)
            if not 1 <= n_e < self.n_hidden:
                raise ValueError(
                    f"dale = true needs excitatory and inhibitory units: excitatory_fraction = "
                    f"{self.excitatory_fraction} of n_hidden = {self.n_hidden} gives {n_e} "
                    "excitatory unit(s); choose a fraction that leaves both kinds, or dale = false"
                )
        return self


class CTRNN(nn.Module):
    """Rate RNN ``tau dx/dt = -x + W_rec r + W_in u + b`` with optional Dale's law.

    Build it with :meth:`from_config` (or ``colenv.models.build_model("ctrnn", ...)``).

    Shapes: state x [B, n_hidden]; input u [T, B, n_inputs]; readout [T, B, n_outputs].
    """

    Config = CTRNNConfig

    def __init__(
        self,
        config: CTRNNConfig,
        *,
        n_inputs: int,
        n_outputs: int,
        seed: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if n_inputs < 1 or n_outputs < 1:
            raise ConfigError(
                f"the ctrnn needs >= 1 input and output, got n_inputs={n_inputs}, "
                f"n_outputs={n_outputs}"
            )
        self.config = config
        n = config.n_hidden
        self.n_inputs, self.n_outputs, self.state_size = n_inputs, n_outputs, n
        self.n_excitatory = round(config.excitatory_fraction * n) if config.dale else n
        n_e = self.n_excitatory
        gen = torch.Generator().manual_seed(seed)
        f64 = torch.float64

        mask = (torch.rand(n, n, generator=gen, dtype=f64) < config.connection_prob).to(f64)
        if not config.autapses:
            mask.fill_diagonal_(0.0)
        magnitude = torch.randn(n, n, generator=gen, dtype=f64).abs() * mask
        sign = torch.ones(n, dtype=f64)
        if config.dale:
            sign[n_e:] = -1.0
            magnitude[:, n_e:] *= n_e / (n - n_e)  # balance mean excitation and inhibition
        w_rec = magnitude * sign[None, :]
        radius = float(torch.linalg.eigvals(w_rec).abs().max()) if n > 1 else 0.0
        if radius > 0:
            w_rec *= config.spectral_radius / radius
        w_in = torch.randn(n, n_inputs, generator=gen, dtype=f64) * config.input_std
        w_out = torch.randn(n_outputs, n_e, generator=gen, dtype=f64) / n_e
        if config.dale:
            w_in, w_out = w_in.abs(), w_out.abs()

        self.w_rec = nn.Parameter(w_rec)
        self.w_in = nn.Parameter(w_in)
        self.bias = nn.Parameter(torch.zeros(n, dtype=f64))
        self.w_out = nn.Parameter(w_out)
        self.b_out = nn.Parameter(torch.zeros(n_outputs, dtype=f64))
        self.register_buffer("mask", mask)
        self.register_buffer("sign", sign)
        self.to(device=device, dtype=dtype or torch.float32)

    @classmethod
    def from_config(
        cls,
        config: CTRNNConfig,
        *,
        n_inputs: int,
        n_outputs: int,
        seed: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> CTRNN:
        """A network for a task with ``n_inputs`` inputs and ``n_outputs`` outputs."""
        return cls(
            config, n_inputs=n_inputs, n_outputs=n_outputs, seed=seed, device=device, dtype=dtype
        )

    # ------------------------------------------------------------------ weights
    def recurrent_weight(self) -> torch.Tensor:
        """The effective ``W_rec * mask`` [target, source]."""
        return self.w_rec * self.mask

    @torch.no_grad()
    def project_(self) -> None:
        """Restore the mask and, with Dale's law, the signs; call after each optimizer step."""
        self.w_rec.mul_(self.mask)
        if self.config.dale:
            n_e = self.n_excitatory
            self.w_rec[:, :n_e].clamp_(min=0.0)
            self.w_rec[:, n_e:].clamp_(max=0.0)
            self.w_in.clamp_(min=0.0)
            self.w_out.clamp_(min=0.0)

    # ------------------------------------------------------------------ rollout protocol
    def rate(self, x: torch.Tensor) -> torch.Tensor:
        """r(x) (Hz)."""
        if self.config.activation == "softplus":
            return nn.functional.softplus(x)
        return torch.relu(x)

    def prepare(self, stimulus: torch.Tensor) -> CTRNNDynamics:
        """Bind a stimulus [T, B, n_inputs] into the right-hand side of one rollout."""
        if stimulus.dim() != 3 or stimulus.shape[-1] != self.n_inputs:
            raise ValueError(
                f"stimulus must be [T, B, {self.n_inputs}], got {tuple(stimulus.shape)}"
            )
        return CTRNNDynamics(self, stimulus)

    def initial_state(self, batch_size: int) -> torch.Tensor:
        """x = 0 (every rate 0), [B, n_hidden]."""
        return self.w_rec.new_zeros(batch_size, self.state_size)

    def rates(self, states: torch.Tensor) -> torch.Tensor:
        """Rates r(x) (Hz) of every unit, [..., n_hidden]."""
        return self.rate(states)

    def readout(self, states: torch.Tensor) -> torch.Tensor:
        """``W_out r_E + b_out`` of states [..., n_hidden] -> [..., n_outputs]."""
        return self.rate(states[..., : self.n_excitatory]) @ self.w_out.t() + self.b_out

    def describe_state_index(self, index: int) -> str:
        kind = "E" if index < self.n_excitatory or not self.config.dale else "I"
        return f"x[{index}] ({kind})"


class CTRNNDynamics(nn.Module):
    """The right-hand side of one rollout: drift ``forward(t, y)`` and diffusion ``g(t, y)``,
    t in seconds; ``stimulus[k]`` holds on [t_k, t_{k+1}) of the grid given to
    :meth:`set_grid`."""

    noise_type, sde_type = "diagonal", "ito"

    def __init__(self, net: CTRNN, stimulus: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.stimulus = stimulus
        self.tau_s = net.config.tau_ms * 1e-3
        self.sigma = net.config.noise_std * math.sqrt(2.0 / self.tau_s)
        self.nfe = 0
        self.grid: list[float] = [0.0]

    def set_grid(self, t_s: torch.Tensor) -> None:
        self.grid = t_s.tolist()

    def forward(self, t, y: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        k = bisect.bisect_right(self.grid, float(torch.as_tensor(t).detach())) - 1
        u = self.stimulus[min(max(k, 0), self.stimulus.shape[0] - 1)]
        net = self.net
        drive = net.rate(y) @ net.recurrent_weight().t() + u @ net.w_in.t() + net.bias
        return (drive - y) / self.tau_s

    def f(self, t, y: torch.Tensor) -> torch.Tensor:
        return self.forward(t, y)

    def g(self, t, y: torch.Tensor) -> torch.Tensor:
        return torch.full_like(y, self.sigma)
