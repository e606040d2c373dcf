"""Options of the column model under ``[model]`` (``kind = "columns"``) and its builder."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, field_validator

from colenv.config import StrictModel
from colenv.errors import ConfigError, DivergenceError
from colenv.models.column.params import load_params
from colenv.models.column.spec import NetworkSpec

__all__ = ["ColumnsConfig", "columns_from_config", "jitter_weights_"]


class ColumnsConfig(StrictModel):
    """``[model]`` of a column network: parameter overrides and the network layout."""

    params: dict[str, Any] = Field(
        default_factory=dict,
        description='overrides of config/model.toml, {"section.key": value} or nested tables',
    )
    network: NetworkSpec = Field(
        default_factory=NetworkSpec,
        description="the layout (areas, connections, readout, initial weights): a NetworkSpec",
    )

    @field_validator("params")
    @classmethod
    def _params(cls, value: dict[str, Any]) -> dict[str, Any]:
        load_params(overrides=value)  # unknown keys and bad values fail here
        return value


def columns_from_config(
    cls: type,
    config: ColumnsConfig,
    *,
    n_inputs: int,
    n_outputs: int,
    seed: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
):
    """A ``cls`` (ColumnNetwork) from ``config``, checked against the task's inputs and outputs.

    ``seed`` (a training run's ``train.seed``) seeds the jitter of the trainable initial
    weights (``network.init_jitter``, :func:`jitter_weights_`) unless ``network.init_seed``
    overrides it.
    """
    spec = config.network
    if spec.n_inputs != n_inputs:
        raise ConfigError(
            f"model.network.n_inputs = {spec.n_inputs} but the task has {n_inputs} inputs; "
            "set model.network.n_inputs to match"
        )
    model = cls(load_params(overrides=config.params), spec, seed=seed)
    if model.n_outputs != n_outputs:
        raise ConfigError(
            f"the network reads out {model.n_outputs} column(s) (last area "
            f"{spec.areas[-1].name!r} has {spec.areas[-1].n_columns}) but the task has "
            f"{n_outputs} output(s); make the last area's n_columns match"
        )
    model.config = config
    return model.to(device=device, dtype=dtype or torch.float32)


@torch.no_grad()
def jitter_weights_(net, std: float, seed: int) -> None:
    """Multiply every trainable initial weight of ``net`` by a seeded log-normal factor that
    keeps the anatomical network's rest state.

    Each trainable entry gets ``exp(std * xi)``, ``xi ~ N(0, 1)`` from a CPU generator seeded
    by ``seed`` (drawn over every connection kind in a fixed order: same seed, same network on
    any device). On its own that breaks the rest state: a P&D column is balanced, its
    population's small net input is the difference of large excitatory and inhibitory ones,
    and jittering its recurrent weights by 5 % moves resting rates by a factor of 2 to 9.
    So the factors onto each target population i are tilted by one exponent per target,
    ``exp(std * xi_ij + lambda_i c_ij)`` with ``c_ij`` the entry's share of i's synaptic input
    at rest (``W_ij r_j``, scaled to max 1 per target), and ``lambda_i`` is the root of
    ``sum_j c_ij (factor_ij - 1) = 0``: every population's net recurrent, lateral and
    feedforward input at the anatomical resting rates is unchanged, so the anatomical rest
    state stays a fixed point of the jittered network (exactly, up to float32 rounding of the
    weights). The tilt is a monotone one-dimensional root (the sum grows with lambda),
    solved by bisection. A target with a single trainable entry from an active source keeps
    that entry as it is; input weights (no input at rest) and entries from silent sources
    keep their plain log-normal factor. A network without a rest state
    (``rest_state`` raises :class:`colenv.DivergenceError`) gets the plain factors.
    """
    gen = torch.Generator().manual_seed(seed)
    conns = net.connections()  # fixed order: recurrent, lateral, feedforward, input
    log_f = {
        name: std
        * torch.randn(conn.weight.shape, generator=gen, dtype=torch.float64)
        * conn.train_mask.detach().cpu().double()
        for name, conn in conns.items()
    }
    recurrent_kinds = ("recurrent", "lateral", "feedforward")
    try:
        rest = net.rest_state().detach().cpu().double()
    except DivergenceError:
        rest = None
    if rest is not None:
        P = net.n_pop
        rates = rest[2 * P : 3 * P][None, :].expand(P, P)
        gated = {}
        if getattr(net, "gated", False):  # gated entries see S* / (gamma tau_S) at rest
            tau_g, gamma = net.gate_constants()
            s_rates = (rest[3 * P :] / (gamma * tau_g))[None, :].expand(P, P)
            for k in recurrent_kinds:
                gate = getattr(net, f"gate_{k}", None)
                if gate is not None:
                    gated[k] = torch.where(gate.detach().cpu() > 0, s_rates, rates)
        share = torch.cat(  # [target, 3 P]: each trainable entry's input at rest (nA Hz)
            [
                conns[k].effective().detach().cpu().double()
                * gated.get(k, rates)
                * conns[k].train_mask.detach().cpu().double()
                for k in recurrent_kinds
            ],
            dim=1,
        )
        scale = share.abs().amax(dim=1, keepdim=True)
        share = torch.where(scale > 0, share / scale.clamp_min(1e-300), share)
        logs = torch.cat([log_f[k] for k in recurrent_kinds], dim=1)
        lam = _tilt(share, logs)
        logs = logs + lam[:, None] * share
        for k, part in zip(recurrent_kinds, logs.split(net.n_pop, dim=1), strict=True):
            log_f[k] = part
    for name, conn in conns.items():
        factor = log_f[name].to(device=conn.weight.device, dtype=conn.weight.dtype)
        if conn.log:  # the weight is the log magnitude
            conn.weight.add_(factor)
        else:
            conn.weight.mul_(torch.exp(factor))


def _tilt(share: torch.Tensor, logs: torch.Tensor, iterations: int = 200) -> torch.Tensor:
    """Per row i, the lambda with sum_j share_ij (exp(logs_ij + lambda share_ij) - 1) = 0.

    h(lambda) is non-decreasing (h' = sum share^2 exp(...) >= 0); rows with no share get 0.
    """

    def h(lam: torch.Tensor) -> torch.Tensor:
        return (share * torch.expm1(logs + lam[:, None] * share)).sum(dim=1)

    rows = share.shape[0]
    lo = torch.full((rows,), -1.0, dtype=torch.float64)
    hi = torch.full((rows,), 1.0, dtype=torch.float64)
    for _ in range(60):  # widen each bracket until h(lo) <= 0 <= h(hi)
        low, high = h(lo) > 0, h(hi) < 0
        if not bool(low.any() or high.any()):
            break
        lo = torch.where(low, 2 * lo, lo)
        hi = torch.where(high, 2 * hi, hi)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        above = h(mid) > 0
        lo, hi = torch.where(above, lo, mid), torch.where(above, mid, hi)
    lam = (lo + hi) / 2
    return torch.where(share.abs().sum(dim=1) > 0, lam, torch.zeros_like(lam))
