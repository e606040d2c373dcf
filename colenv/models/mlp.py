"""A neural-ODE vector field for the Hopf bifurcation task.

The Hopf normal form (Strogatz, Nonlinear Dynamics and Chaos, §8.2)

    dx/dt = (mu - x^2 - y^2) x - omega y
    dy/dt = (mu - x^2 - y^2) y + omega x

is learned as d(x, y)/dt = MLP(x, y, mu) from trajectories. The input mu(t) is the task's
stimulus [T, B, 1]; the state is (x, y) [B, 2] and is read out directly. The model follows the
same rollout protocol as :class:`colenv.models.ColumnNetwork` (``prepare``, ``initial_state``,
``readout``), so the same solvers and trainers drive it. Its options under ``[model]``
(``kind = "hopf_mlp"``) are :class:`HopfFieldConfig`.
"""

from __future__ import annotations

import bisect

import torch
from pydantic import Field
from torch import nn

from colenv.config import StrictModel
from colenv.errors import ConfigError

__all__ = ["HopfField", "HopfFieldConfig"]


class HopfFieldConfig(StrictModel):
    """``[model]`` of the vector-field MLP."""

    hidden: int = Field(64, ge=1, description="width of each hidden layer")
    layers: int = Field(2, ge=1, description="number of hidden (tanh) layers")


class HopfField(nn.Module):
    """MLP vector field on (x, y, mu) -> (dx/dt, dy/dt), time in seconds.

    Args:
        hidden: width of each hidden layer.
        layers: number of hidden layers.
        n_inputs: number of input channels (1: mu).
        seed: seed of the initial weights (uniform in +-1/sqrt(fan_in), drawn on the CPU from
            ``torch.Generator().manual_seed(seed)``; biases 0): the same seed, the same field.
    """

    Config = HopfFieldConfig

    @classmethod
    def from_config(
        cls,
        config: HopfFieldConfig,
        *,
        n_inputs: int,
        n_outputs: int,
        seed: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> HopfField:
        """The field for a task with ``n_inputs`` inputs; its state (x, y) is its 2 outputs."""
        if n_outputs != 2:
            raise ConfigError(
                f'model.kind = "hopf_mlp" outputs its state (x, y), 2 values, but the task '
                f"has {n_outputs} output(s)"
            )
        model = cls(
            config.hidden,
            config.layers,
            n_inputs=n_inputs,
            seed=seed,
            device=device,
            dtype=dtype or torch.float32,
        )
        model.config = config
        return model

    def __init__(
        self,
        hidden: int = 64,
        layers: int = 2,
        n_inputs: int = 1,
        *,
        seed: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if hidden < 1 or layers < 1:
            raise ValueError(
                f"hidden and layers must be >= 1, got hidden={hidden}, layers={layers}"
            )
        self.n_inputs = n_inputs
        self.state_size = 2
        self.n_outputs = 2
        dims = [2 + n_inputs] + [hidden] * layers + [2]
        mods: list[nn.Module] = []
        for i in range(len(dims) - 1):
            mods.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                mods.append(nn.Tanh())
        self.net = nn.Sequential(*mods)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in self.net:
                if isinstance(m, nn.Linear):
                    bound = 1.0 / m.in_features**0.5
                    m.weight.copy_(
                        (torch.rand(m.weight.shape, generator=generator) * 2 - 1) * bound
                    )  # the CPU generator, then copied: the same field on every device
                    m.bias.zero_()
        self.to(device=device, dtype=dtype)

    def field(self, xy: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """d(x, y)/dt at states xy [..., 2] and inputs u [..., n_inputs]."""
        return self.net(torch.cat([xy, u], dim=-1))

    def prepare(self, stimulus: torch.Tensor) -> _HopfDynamics:
        if stimulus.dim() != 3 or stimulus.shape[-1] != self.n_inputs:
            raise ValueError(
                f"stimulus must be [T, B, {self.n_inputs}], got {tuple(stimulus.shape)}"
            )
        return _HopfDynamics(self, stimulus)

    def initial_state(self, batch_size: int) -> torch.Tensor:
        p = next(self.parameters())
        return torch.zeros(batch_size, 2, device=p.device, dtype=p.dtype)

    def readout(self, states: torch.Tensor) -> torch.Tensor:
        return states

    def describe_state_index(self, index: int) -> str:
        return ("x", "y")[index]

    @torch.no_grad()
    def project_(self) -> None:
        """No constraints on an MLP (kept for the trainer's uniform interface)."""


class _HopfDynamics(nn.Module):
    noise_type, sde_type = "diagonal", "ito"

    def __init__(self, field: HopfField, stimulus: torch.Tensor):
        super().__init__()
        self.field = field
        self.drive = stimulus
        self.nfe = 0
        self.grid: list[float] = [0.0]

    def set_grid(self, t_s: torch.Tensor) -> None:
        self.grid = t_s.tolist()

    def forward(self, t, y):
        self.nfe += 1
        k = bisect.bisect_right(self.grid, float(torch.as_tensor(t).detach())) - 1
        u = self.drive[min(max(k, 0), self.drive.shape[0] - 1)]
        return self.field.field(y, u)

    def f(self, t, y):
        return self.forward(t, y)

    def g(self, t, y):
        return torch.zeros_like(y)
