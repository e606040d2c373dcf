"""Weights & Biases as a callback; ``wandb`` is imported only when this logger starts.

Offline by default: the run is written under ``<run>/wandb/offline-run-*`` with no network
and no API key, and can be uploaded later with ``wandb sync <that folder>``. The mode is
``logging.wandb_mode`` unless the ``WANDB_MODE`` environment variable is set.

Keys: ``train/loss``, ``charts/lr``, ``solver/nfe``, ``perf/trials_per_s`` every step;
``eval/<metric>`` at each evaluation; the plots as images and the final checkpoint as an
artifact at the end.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from trainers.callbacks import Callback
from trainers.checkpoint import config_to_dict
from trainers.types import Result, TrainState

__all__ = ["WandbLogger"]

WANDB_MODES = ("offline", "online", "disabled", "dryrun", "shared", "run")
"""What ``wandb.init(mode=...)`` accepts."""


class WandbLogger(Callback):
    """Logs a run to W&B (offline unless configured otherwise)."""

    def __init__(self, project: str = "colenv", mode: str = "offline") -> None:
        self.project = project
        env = os.environ.get("WANDB_MODE", "").strip()  # set but empty counts as unset
        self.mode = env or mode
        if self.mode not in WANDB_MODES:
            source = "the WANDB_MODE environment variable" if env else "logging.wandb_mode"
            raise ValueError(
                f"W&B mode {self.mode!r} (from {source}) must be one of {', '.join(WANDB_MODES)}"
            )
        self.run = None
        self.local_dir: Path | None = None
        """folder of the local W&B run (``<run>/wandb/offline-run-*``), once started"""

    def on_fit_start(self, state: TrainState) -> None:
        import wandb

        state.run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=self.project,
            mode=self.mode,
            dir=str(state.run_dir),
            name=state.run_dir.name,
            config=config_to_dict(state.config),
            settings=wandb.Settings(
                x_disable_stats=True, console="off", silent=True, disable_git=True
            ),
            reinit="create_new",
        )
        self.local_dir = Path(self.run.dir).parent

    def on_step_end(self, state: TrainState) -> None:
        if self.run is None:
            return
        self.run.log(
            {
                "train/loss": state.loss,
                "charts/lr": state.lr,
                "solver/nfe": state.nfe,
                "perf/trials_per_s": state.trials_per_s,
            },
            step=state.step,
        )

    def on_eval_end(self, state: TrainState, metrics: dict[str, float]) -> None:
        if self.run is None:
            return
        logged: dict[str, Any] = {f"eval/{k}": v for k, v in metrics.items()}
        logged["eval/solved"] = float(state.solved)
        self.run.log(logged, step=state.step)

    def on_fit_end(self, state: TrainState, result: Result) -> None:
        if self.run is None:
            return
        import wandb

        images = {
            f"plots/{Path(p).stem}": wandb.Image(str(p))
            for p in state.plot_paths
            if Path(p).exists()
        }
        if images:
            self.run.log(images, step=state.step)
        self.run.summary["result/solved"] = result.solved
        self.run.summary["result/steps"] = result.steps
        self.run.summary["result/diverged"] = result.diverged
        if state.checkpoint and Path(state.checkpoint).exists():
            artifact = wandb.Artifact(f"{state.run_dir.name}-checkpoint", type="model")
            artifact.add_file(state.checkpoint, name="last.pt")
            self.run.log_artifact(artifact)
        self.run.finish()
        self.run = None


def read_offline_run(path: str | Path) -> dict[str, Any]:
    """History rows and the final summary of a local W&B run, read from its ``.wandb`` file.

    ``path`` is an ``offline-run-*`` folder or the ``.wandb`` file in it. No network, no API
    key. Returns ``{"history": [{key: value}, ...], "summary": {key: value}}`` (values decoded
    from JSON). The file is a sequence of 32 KiB blocks after a 7-byte header; each record has
    a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last) and holds a
    protobuf ``Record``.
    """
    import json
    import struct

    from wandb.proto import wandb_internal_pb2

    path = Path(path)
    if path.is_dir():
        path = next(path.glob("*.wandb"))
    buf = path.read_bytes()
    block, pos, pending = 32768, 7, b""
    records: list[bytes] = []
    while pos + 7 <= len(buf):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", buf[pos : pos + 7])
        if kind == 0:
            pos += left
            continue
        data = buf[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            records.append(data)
        elif kind == 2:
            pending = data
        elif kind == 3:
            pending += data
        else:
            records.append(pending + data)
            pending = b""

    def key(item) -> str:
        return item.key or "/".join(item.nested_key)

    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for data in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            for i in record.summary.update:
                summary[key(i)] = json.loads(i.value_json)
    return {"history": history, "summary": summary}
