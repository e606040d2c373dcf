"""Figure helpers the tasks' ``plot`` methods share.

matplotlib is imported here, inside the functions, and only its object-oriented API is used:
each figure gets its own Agg canvas and is written to a PNG file, so plotting never touches
pyplot's global state or the backend of an interactive session.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["condition_text", "figure", "first_where", "plot_outputs", "plot_unit_rates", "save"]


def figure(width: float, height: float):
    """A matplotlib Figure on its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save(fig, path: Path) -> Path:
    """Write ``fig`` to ``path`` (PNG, parent folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def plot_outputs(
    output: Tensor,
    trial,
    path: Path,
    title: str,
    *,
    label: Callable[[int], str],
    tolerance: float | None = None,
    output_names: Sequence[str] | None = None,
    max_trials: int = 16,
) -> Path:
    """One panel per trial: each output (solid) against its target (dashed), the loss window
    shaded and, with ``tolerance``, the band the output must stay in there.

    Args:
        output: [T, B, O] model output (CPU).
        trial: the trials (CPU).
        label: the panel title of trial b (its condition).
    """
    t = trial.t_ms.numpy()
    n = min(trial.batch_size, max_trials)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = figure(3.2 * cols, 2.4 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    colors = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    for b in range(n):
        ax = axes[b // cols][b % cols]
        on_any = trial.mask[:, b].any(dim=-1).numpy()
        if on_any.any():
            ax.fill_between(
                t, 0, 1, where=on_any, color="0.92", transform=ax.get_xaxis_transform(), zorder=0
            )
        for o in range(output.shape[-1]):
            color = colors[o % len(colors)]
            name = output_names[o] if output_names else f"output {o}"
            ax.plot(t, output[:, b, o].numpy(), color=color, lw=1.3, label=name)
            ax.plot(t, trial.target[:, b, o].numpy(), "--", color=color, lw=1)
            on = trial.mask[:, b, o].numpy()
            if tolerance is not None and on.any():
                target = trial.target[:, b, o].numpy()
                ax.fill_between(
                    t, target - tolerance, target + tolerance, where=on, color=color, alpha=0.3
                )
        ax.set_title(label(b), fontsize=8)
        ax.tick_params(labelsize=6)
    for b in range(n, rows * cols):
        axes[b // cols][b % cols].axis("off")
    if output.shape[-1] > 1:
        axes[0][0].legend(fontsize=6)
    band = f", band = target +- {tolerance:g}" if tolerance is not None else ""
    fig.suptitle(
        f"{title}: output (solid) vs target (dashed); shaded: loss window{band}; t in ms",
        fontsize=9,
    )
    return save(fig, path)


def _groups(names: Sequence[str]) -> dict[str, list[int]]:
    """Units grouped by the part of their name before the last '.' ("a1[0].L23e" -> "a1[0]")."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name.rsplit(".", 1)[0] if "." in name else "units", []).append(i)
    return groups


def plot_unit_rates(
    rates: Tensor,
    trial,
    b: int,
    path: Path,
    title: str,
    *,
    unit_names: Sequence[str] | None = None,
    group_titles: dict[str, str] | None = None,
    max_groups: int = 12,
) -> Path:
    """The rates of trial ``b``: with ``unit_names`` like "area[column].Pop", one panel per
    column with a line per population (no averaging across columns); otherwise a
    units x time image.

    Args:
        rates: [T, B, U] (CPU), Hz.
        group_titles: extra text for a column's panel title (e.g. "pool 1: winner").
    """
    t = trial.t_ms.numpy()
    r = rates[:, b].numpy()
    if unit_names is None or len(unit_names) != rates.shape[-1]:
        fig = figure(6, 3.2)
        ax = fig.subplots()
        image = ax.imshow(
            r.T, aspect="auto", origin="lower", extent=(t[0], t[-1], -0.5, r.shape[1] - 0.5)
        )
        fig.colorbar(image, ax=ax, label="Hz")
        ax.set_xlabel("ms")
        ax.set_ylabel("unit")
        fig.suptitle(f"{title}: rates of every unit", fontsize=9)
        return save(fig, path)
    groups = list(_groups(unit_names).items())[:max_groups]
    cols = min(3, len(groups))
    rows = math.ceil(len(groups) / cols)
    fig = figure(4 * cols, 2.8 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, (group, index) in enumerate(groups):
        ax = axes[i // cols][i % cols]
        for j in index:
            ax.plot(t, r[:, j], lw=1, label=unit_names[j].rsplit(".", 1)[-1])
        extra = (group_titles or {}).get(group, "")
        ax.set_title(f"{group}{': ' + extra if extra else ''}", fontsize=8)
        ax.set_xlabel("ms", fontsize=7)
        ax.set_ylabel("Hz", fontsize=7)
        ax.tick_params(labelsize=6)
    for i in range(len(groups), rows * cols):
        axes[i // cols][i % cols].axis("off")
    axes[0][0].legend(fontsize=6, ncol=2)
    fig.suptitle(title, fontsize=9)
    return save(fig, path)


def condition_text(trial, b: int) -> str:
    """``key=value, ...`` of trial ``b``'s scalar and vector conditions (short)."""
    parts = []
    for key, value in trial.conditions.items():
        v = value[b]
        if v.ndim == 0:
            x = v.item()
            parts.append(f"{key}={x:g}" if isinstance(x, float) else f"{key}={x}")
        elif v.ndim == 1 and v.numel() <= 8:
            if v.is_floating_point():
                parts.append(f"{key}={[round(float(x), 2) for x in v]}")
            else:
                parts.append(f"{key}={''.join(str(int(x)) for x in v)}")
    return ", ".join(parts)[:48]


def first_where(mask: Tensor) -> int:
    """Index of the first True of a [B] bool tensor (0 if none)."""
    hits = torch.nonzero(mask).flatten()
    return int(hits[0]) if hits.numel() else 0
