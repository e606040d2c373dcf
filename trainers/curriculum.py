"""The curriculum trainer: Parity learned in three stages inside one run.

``trainer = "curriculum"`` (config/tasks/parity.toml) trains an n-bit Parity network whose
every weight comes from training in that one command::

    stage 1  module    one XOR module (2 input columns -> 1 output column) from its default
                       initial weights, on colenv/XOR-v0 with Parity's bit rate and timing
                       (input, lateral and feedforward weights train, as config/tasks/xor.toml)
    stage 2  compose   copies of the trained module placed into the Parity network as a tree
                       of XORs (no training): parity = XOR of all bits and one "always on"
                       column, so that no bit at all gives the high output
    stage 3  parity    the whole network end to end on Parity with the run's [train] settings

Each stage keeps its checkpoint: ``<run>/stages/1-module/checkpoints/last.pt`` (a full run
folder of its own), ``<run>/stages/2-compose/checkpoints/last.pt`` (the composed start, step 0)
and the final ``<run>/checkpoints/last.pt``, which ``resume`` and ``evaluate`` use as for any run:
the Parity network is the config's own ``[model.network]`` (areas and connection kinds only, no
explicit edges or weights), so the config alone rebuilds it.

The network's layout (:func:`tree_areas`): areas alternate between input areas (the module's
input columns: bit columns, relays of the previous level, the "always on" column) and XOR
areas (the modules' output columns); connection kinds as the module's (lateral between input
columns, feedforward input column -> XOR column) plus one relay pair (XOR column -> next input
column, ``trainer_options.relay``). The kinds connect every column of an area to every column of
the next; the composition puts the module's weights on the tree's entries and sets the others
to ~0 (1e-6 nA), and stage 3 may grow any of them back.

What the composition derives from the trained module (its rates on the XOR grid, measured here,
never typed in): a relay's weight is the module's input weight times ``input_hz`` over the
module output's rate with one input on (for the output of a pass-through, the one-input
module's own rate), so an "on" module output drives the next module like an "on" bit; the "always on" column (at rest, no input) gets the module's outgoing weights times
the ratio of an input column's rate with its bit on to its rate at rest (per source
population), so at rest it drives the next column like an input that is on. An unpaired column
(an odd count) is passed through by a module with one input; the "always on" column joins the
last level, where it turns the odd parity of the bits into even parity.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, field_validator

from colenv.config import StrictModel, parse
from colenv.errors import ConfigError, DivergenceError
from colenv.models.column.params import population_index
from trainers.callbacks import Callbacks, claim_run_name
from trainers.rundir import RunFolder
from trainers.types import Result, TrainState

__all__ = ["CurriculumOptions", "CurriculumTrainer", "Level", "tree_areas", "tree_levels"]

OFF_NA = 1e-6
"""Magnitude (nA) of an entry the composition leaves out of the tree (log weights cannot be 0)."""

MODULE_TASK = "colenv/XOR-v0"


class CurriculumOptions(StrictModel):
    """``[trainer_options]`` of ``trainer = "curriculum"``."""

    module_steps: int | None = Field(
        None,
        ge=1,
        description="stage 1: step budget of the XOR module (it stops at its criterion); "
        "unset = train.steps",
    )
    module_lr: float | None = Field(
        None, gt=0, description="stage 1: learning rate; unset = train.lr"
    )
    relay: tuple[str, str] = Field(
        ("L23e", "L4e"),
        description="the feedforward [source, target] pair that relays a module's output "
        "column into the next module's input column; the other feedforward pairs are the module's",
    )

    @field_validator("relay")
    @classmethod
    def _relay(cls, value: tuple[str, str]) -> tuple[str, str]:
        for name in value:
            try:
                population_index(name)
            except ConfigError as err:
                raise ValueError(str(err)) from None
        return value


class Level:
    """One level of the XOR tree: ``n_columns`` input columns (the last one the "always on"
    column when ``has_on``) feeding ``n_outputs`` XOR columns; column j pairs with j ^ 1, and
    an unpaired last column is passed through."""

    def __init__(self, n_columns: int, has_on: bool) -> None:
        self.n_columns = n_columns
        self.has_on = has_on
        self.n_outputs = (n_columns + 1) // 2

    def __repr__(self) -> str:
        return f"Level(n_columns={self.n_columns}, has_on={self.has_on})"


def tree_levels(n_bits: int) -> list[Level]:
    """The levels of the XOR tree of ``n_bits`` bits and one "always on" input.

    Adjacent columns pair into XOR modules level by level (an odd one out passes through)
    until one column, the odd parity of the bits, is left; the last level XORs it with the
    "always on" column, so the root computes XOR(b_1, ..., b_n, 1): high for an even number
    of bits. The "always on" column sits at the last level so that at rest only the root's
    module is active (placed at the first level it keeps a whole branch on at rest, and that
    rest state was lost in training for 3 bits).
    """
    if isinstance(n_bits, bool) or not isinstance(n_bits, int) or n_bits < 1:
        raise ConfigError(f"n_bits must be an int >= 1, got {n_bits!r}")
    levels, count = [], n_bits
    while True:
        has_on = count == 1
        level = Level(count + has_on, has_on)
        levels.append(level)
        count = level.n_outputs
        if has_on:
            return levels


def tree_areas(n_bits: int, input_sizes: str = "pd2014", xor_sizes: str = "pd2014") -> list[dict]:
    """The ``[model.network] areas`` of the n-bit tree: ``in0, xor0, in1, xor1, ...``."""
    areas = []
    for k, level in enumerate(tree_levels(n_bits)):
        areas.append({"name": f"in{k}", "n_columns": level.n_columns, "sizes": input_sizes})
        areas.append({"name": f"xor{k}", "n_columns": level.n_outputs, "sizes": xor_sizes})
    return areas


def _areas_toml(areas: list[dict]) -> str:
    return (
        "["
        + ", ".join(
            f'{{ name = "{a["name"]}", n_columns = {a["n_columns"]}, sizes = "{a["sizes"]}" }}'
            for a in areas
        )
        + "]"
    )


class CurriculumTrainer:
    """Module, compose, end to end (see the module docstring); ``trainer = "curriculum"``."""

    Options = CurriculumOptions

    @staticmethod
    def check(config, task, model) -> None:
        """Called by :func:`trainers.run.preflight` before the run folder exists: the options
        and the tree layout (ConfigError naming the key)."""
        options = parse(CurriculumOptions, config.trainer_options, where="trainer_options")
        check_layout(model, task, config, options)

    def fit(self, model, task, config, callbacks) -> Result:
        from trainers.supervised import SupervisedTrainer

        options = parse(CurriculumOptions, config.trainer_options, where="trainer_options")
        levels = check_layout(model, task, config, options)
        if config.resume:  # stages 1 and 2 are done: the checkpoint holds stage 3
            print(f"curriculum: resuming stage 3 (parity) from {config.resume}", flush=True)
            return SupervisedTrainer().fit(model, task, config, callbacks)

        callbacks = callbacks if isinstance(callbacks, Callbacks) else Callbacks(callbacks)
        owned = None
        if callbacks.run is None:  # fit called directly, not through trainers.train
            name = config.run_name or claim_run_name(config)
            owned = RunFolder.open(config.logging.run_dir, name, task=config.task, resuming=False)
            callbacks.run = owned
        try:
            run_dir = callbacks.run.path
            config = config.model_copy(
                update={
                    "run_name": run_dir.name,
                    "logging": config.logging.model_copy(update={"run_dir": str(run_dir.parent)}),
                }
            )
            start = time.perf_counter()
            module, module_result = train_module(task, config, options, run_dir / "stages")
            if module_result.interrupted:  # a signal during stage 1: stop the whole run
                return Result(
                    steps=0,
                    wall_s=time.perf_counter() - start,
                    solved=False,
                    run_dir=str(run_dir),
                    message=f"curriculum stage 1 (module): {module_result.message}",
                    interrupted=module_result.interrupted,
                )
            print(
                f"curriculum stage 1 (module): {module_result.message}; {module_result.checkpoint}",
                flush=True,
            )
            if not module_result.solved:
                print(
                    "curriculum stage 1: the XOR module did not reach its criterion; composing "
                    "it anyway (stage 3 trains on; a larger trainer_options.module_steps or "
                    "another train.seed gives a better start)",
                    flush=True,
                )
            rates = module_rates(module, config, task)
            compose(model, module, levels, options, rates, task.input_hz)
            composed = save_composed(model, task, config, run_dir / "stages" / "2-compose")
            print(
                "curriculum stage 2 (compose): "
                + ", ".join(f"{k}={v:.4g}" for k, v in composed.items())
                + f"; {run_dir / 'stages' / '2-compose' / 'checkpoints' / 'last.pt'}",
                flush=True,
            )
            print("curriculum stage 3 (parity): end to end", flush=True)
            result = SupervisedTrainer().fit(model, task, config, callbacks)
            # the run's Result counts stage 3's steps (its checkpoints'); wall time is all stages
            result.wall_s = time.perf_counter() - start
            result.message = (
                f"stage 1 (XOR module): {module_result.steps} steps, "
                f"{'solved' if module_result.solved else 'not solved'}; "
                f"stage 3 (parity): {result.message}"
            )
            return result
        finally:
            if owned is not None:
                owned.close()


# ----------------------------------------------------------------------------- checks
def check_layout(model, task, config, options: CurriculumOptions) -> list[Level]:
    """The run's network must be the XOR tree of the task's bits with the module's connection
    kinds; returns the tree's levels. Raises ConfigError naming the key and what is needed."""
    from colenv.models.column.network import ColumnNetwork
    from colenv.tasks.parity import Parity

    if not isinstance(task, Parity):
        raise ConfigError(
            f'trainer = "curriculum" composes XOR modules into parity; task = {config.task!r} '
            "is not colenv/Parity-v0"
        )
    if not isinstance(model, ColumnNetwork):
        raise ConfigError(
            f'trainer = "curriculum" needs model.kind = "columns", got {config.model.kind!r}'
        )
    spec = model.spec
    levels = tree_levels(task.n_bits)
    sizes = (spec.areas[0].sizes, spec.areas[1].sizes if len(spec.areas) > 1 else "pd2014")
    want = tree_areas(task.n_bits, *sizes)
    have = [{"name": a.name, "n_columns": a.n_columns, "sizes": a.sizes} for a in spec.areas]
    if [(a["n_columns"], a["sizes"]) for a in have] != [(a["n_columns"], a["sizes"]) for a in want]:
        raise ConfigError(
            f"model.network.areas: the curriculum's XOR tree for n_bits = {task.n_bits} needs "
            f"areas = {_areas_toml(want)} (input and XOR areas alternate; the sizes of each "
            "kind the same throughout)"
        )
    where = "model.network"
    for kind in ("input", "lateral", "feedforward"):
        if getattr(spec, kind).edges is not None:
            raise ConfigError(
                f"{where}.{kind}.edges: the curriculum wires the tree itself; give pairs, not edges"
            )
    if not spec.lateral.enabled or not spec.feedforward.enabled:
        raise ConfigError(f"{where}: the XOR module needs lateral and feedforward enabled")
    if spec.recurrent.trainable is not False:
        raise ConfigError(
            f"{where}.recurrent.trainable: the curriculum composes input, lateral and "
            "feedforward weights; the recurrent (P&D) weights must stay fixed (false)"
        )
    if spec.input_mode != "dense":
        raise ConfigError(
            f'{where}.input_mode: must be "dense" (the first area holds the bit columns and the '
            '"always on" column, which gets no input)'
        )
    ff_pairs = tuple(tuple(p) for p in (spec.feedforward.pairs or ()))
    if tuple(options.relay) not in ff_pairs:
        raise ConfigError(
            f"trainer_options.relay = {list(options.relay)} is not one of "
            f"{where}.feedforward.pairs ({[list(p) for p in ff_pairs]})"
        )
    if len(ff_pairs) < 2:
        raise ConfigError(
            f"{where}.feedforward.pairs: besides the relay pair {list(options.relay)} the "
            "module needs at least one pair (input column -> output column)"
        )
    in_targets = {tgt for _, tgt in (spec.input.pairs or ())}
    if options.relay[1] not in in_targets:
        raise ConfigError(
            f"trainer_options.relay = {list(options.relay)}: its target {options.relay[1]!r} "
            f"must be an input target ({where}.input.pairs targets {sorted(in_targets)}), so "
            "that a relay drives the next module like a bit"
        )
    return levels


# ----------------------------------------------------------------------------- stage 1
def module_config(task, config, options: CurriculumOptions, stages_dir: Path):
    """The TrainConfig of stage 1: colenv/XOR-v0 with Parity's bit rate and timing, a 2 -> 1
    network with the run's connection kinds (without the relay pair), the run's solver and
    [train] settings (``module_steps``, ``module_lr``) and its [success] criterion, unless
    the run's ``success.metric`` is one XOR does not report (Parity's ``report_accuracy``):
    then the module stops at XOR's own criterion (``accuracy`` at the task's threshold)."""
    from trainers.config import TrainConfig

    raw = config.to_dict()
    spec = raw["model"]["network"]
    relay = list(options.relay)
    ff = dict(spec["feedforward"])
    ff["pairs"] = [list(p) for p in ff["pairs"] if list(p) != relay]
    if isinstance(ff["trainable"], list):
        ff["trainable"] = [list(p) for p in ff["trainable"] if list(p) != relay]
    areas = spec["areas"]
    network = {
        **spec,
        "n_inputs": 2,
        "input_mode": "one_to_one",
        "areas": [
            {"name": "in", "n_columns": 2, "sizes": areas[0]["sizes"]},
            {"name": "xor", "n_columns": 1, "sizes": areas[1]["sizes"]},
        ],
        "input": {**spec["input"], "trainable": True},
        "lateral": {**spec["lateral"], "trainable": True},
        "feedforward": {**ff, "trainable": True},
    }
    timing = ("dt_ms", "pre_stimulus_ms", "stimulus_ms", "response_ms")
    kwargs = {k: v for k, v in config.task_kwargs.items() if k in timing}
    kwargs.update(input_hz=task.input_hz, target_hz=task.target_hz)
    train = dict(raw["train"])
    train.update(
        steps=options.module_steps or config.train.steps, lr=options.module_lr or config.train.lr
    )
    train["task_kwargs"] = {k: v for k, v in train.get("task_kwargs", {}).items() if k in timing}
    success = dict(raw["success"])
    if success["metric"] not in module_metrics():  # a Parity-only metric (report_accuracy)
        success.update(metric="accuracy", threshold=None)  # the module meets XOR's criterion
    raw.update(
        task=MODULE_TASK,
        trainer="supervised",
        trainer_options={},
        resume="",
        run_name="1-module",
        task_kwargs=kwargs,
        train=train,
        success=success,
        model={**raw["model"], "network": network},
        logging={
            **raw["logging"],
            "run_dir": str(stages_dir),
            "group": raw["logging"].get("group") or config.run_name,
        },
    )
    return TrainConfig.from_dict(raw, source="curriculum stage 1 (module)")


def module_metrics() -> set[str]:
    """The metrics colenv/XOR-v0 reports (its evaluate on its own grid)."""
    from colenv.tasks.xor import XOR

    xor = XOR()
    grid = xor.sample_batch(conditions="all", seed=0)
    return set(xor.evaluate(grid.target, grid))


def train_module(task, config, options: CurriculumOptions, stages_dir: Path):
    """Stage 1: train the XOR module in ``<stages_dir>/1-module``; returns (the trained
    module, its Result); the module is None when the run was interrupted."""
    from trainers.build import build_model, build_task, resolve_device, resolve_dtype
    from trainers.checkpoint import read_checkpoint
    from trainers.run import train

    cfg = module_config(task, config, options, stages_dir)
    print(
        f"curriculum stage 1 (module): {MODULE_TASK} at {task.input_hz:g} Hz bits, "
        f"up to {cfg.train.steps} steps in {stages_dir / cfg.run_name}",
        flush=True,
    )
    result = train(cfg)
    if result.interrupted or result.checkpoint is None:
        return None, result
    device, dtype = resolve_device(config.train.device), resolve_dtype(config.train.dtype)
    module = build_model(cfg, build_task(cfg), device, dtype)
    module.load_state_dict(read_checkpoint(result.checkpoint)["state_dict"])
    module.curriculum_config = cfg
    return module, result


# ----------------------------------------------------------------------------- stage 2
def module_rates(module, config, task) -> dict[str, Any]:
    """Rates (Hz) of the trained module on the XOR grid (00, 01, 10, 11), each the mean over
    the scoring window, per population of each input column: ``on`` (its bit on, the other
    off), ``rest`` (both off); ``out_on``: each output-column population with one bit on; and
    ``pass_on``: the same for the one-input module that passes an odd column out through (no
    feedforward or cross-inhibition from the second input column; the first one's bit on)."""
    import copy

    from trainers.build import build_task
    from trainers.supervised import forward, step_seed

    cfg = module.curriculum_config
    xor = build_task(cfg)
    param = next(module.parameters())
    trial = xor.sample_batch(conditions="all", seed=cfg.train.seed, device=param.device)
    trial = trial.to(device=param.device, dtype=param.dtype)
    bits = trial.conditions["bits"].tolist()
    window = trial.mask[:, :, 0].to(param.dtype)  # [T, B]

    def window_mean(net) -> torch.Tensor:
        with torch.no_grad():
            _, states, _ = forward(net, trial, cfg, cfg.solver, step_seed(cfg.train.seed, -1))
            rates = net.rates(states)  # [T, B, P]
        mean = (rates * window[:, :, None]).sum(0) / window.sum(0)[:, None]  # [B, P]
        return mean.double().cpu()

    n = 8
    one_input = copy.deepcopy(module)  # the pass-through: nothing from the 2nd input column
    with torch.no_grad():
        for conn in (one_input.feedforward, one_input.lateral):
            keep = torch.ones_like(conn.mask)
            keep[:, n : 2 * n] = 0.0
            conn.mask.mul_(keep)
            conn.train_mask.mul_(keep)
    mean, passed = window_mean(module), window_mean(one_input)
    pattern = {tuple(b): i for i, b in enumerate(bits)}
    rest = mean[pattern[(0, 0)]]
    out = slice(2 * n, 3 * n)
    return {
        "on": (mean[pattern[(1, 0)], 0:n], mean[pattern[(0, 1)], n : 2 * n]),
        "rest": (rest[0:n], rest[n : 2 * n]),
        "out_on": (mean[pattern[(1, 0)], out] + mean[pattern[(0, 1)], out]) / 2,
        "pass_on": passed[pattern[(1, 0)], out],
    }


@torch.no_grad()
def compose(model, module, levels: list[Level], options, rates: dict, input_hz: float) -> None:
    """Stage 2: write the trained module's weights into the tree network ``model`` (input,
    lateral and feedforward; every other entry of those kinds ~0). See the module docstring."""
    mod = {k: c.effective().abs().double().cpu() for k, c in module.connections().items()}
    n = 8  # populations per column
    A, B, C = 0, 1, 2  # module columns: two inputs, one output

    def block(w, tgt_col, src_col):
        return w[tgt_col * n : (tgt_col + 1) * n, src_col * n : (src_col + 1) * n]

    w_in = (mod["input"][0:n, 0], mod["input"][n : 2 * n, 1])  # [8] per role
    lat = {(A, B): block(mod["lateral"], B, A), (B, A): block(mod["lateral"], A, B)}
    ff = (block(mod["feedforward"], C, A), block(mod["feedforward"], C, B))
    gain = tuple((rates["on"][r] / rates["rest"][r].clamp(min=1e-9)).clamp(min=1.0) for r in (A, B))
    relay_src, relay_tgt = (population_index(p) for p in options.relay)
    out_on = float(rates["out_on"][relay_src])
    pass_on = float(rates["pass_on"][relay_src])
    if not (out_on > 0 and pass_on > 0):
        raise ConfigError(
            f"curriculum stage 2: the trained module's output {options.relay[0]} is silent with "
            "one input on; it cannot be relayed (trainer_options.relay)"
        )

    targets = {
        k: torch.zeros(c.weight.shape, dtype=torch.float64)
        for k, c in model.connections().items()
        if k != "recurrent"
    }
    first = [0]
    for level in levels:  # first column of each area: in_k, xor_k
        first.append(first[-1] + level.n_columns)
        first.append(first[-1] + level.n_outputs)

    def put(kind, tgt_col, src_col, values):
        targets[kind][tgt_col * n : (tgt_col + 1) * n, src_col * n : (src_col + 1) * n] = values

    for k, level in enumerate(levels):
        in0, out0 = first[2 * k], first[2 * k + 1]
        n_items = level.n_columns - level.has_on
        for j in range(level.n_columns):
            role = j % 2
            col = in0 + j
            on = level.has_on and j == level.n_columns - 1
            scale = gain[role] if on else torch.ones(n, dtype=torch.float64)
            if j < n_items:  # a bit (level 0) or the relay of the previous level's output j
                if k == 0:
                    targets["input"][col * n : (col + 1) * n, j] = w_in[role]
                else:
                    src = first[2 * k - 1] + j
                    prev = levels[k - 1]  # its last output passes an odd column out through
                    passed = prev.n_columns % 2 == 1 and j == prev.n_outputs - 1
                    on_rate = pass_on if passed else out_on
                    values = torch.zeros(n, n, dtype=torch.float64)
                    values[relay_tgt, relay_src] = w_in[role][relay_tgt] * input_hz / on_rate
                    put("feedforward", col, src, values)
            partner = j ^ 1
            if partner < level.n_columns:  # cross-inhibition onto the partner
                put("lateral", in0 + partner, col, lat[(role, 1 - role)] * scale[None, :])
            put("feedforward", out0 + j // 2, col, ff[role] * scale[None, :])

    for kind, conn in model.connections().items():
        if kind == "recurrent":
            continue
        want = targets[kind].to(conn.weight.device)
        want = torch.where(conn.mask.double() > 0, want.clamp(min=OFF_NA), want)
        scale = conn.scale.double()
        if conn.log:
            value = torch.log(want.clamp(min=1e-30) / scale) * conn.mask.double()
        else:
            value = conn.sign.double() * want / scale
        conn.weight.copy_(value.to(conn.weight.dtype))
    model.project_()


def save_composed(model, task, config, stage_dir: Path) -> dict[str, float]:
    """Evaluate the composed network on the Parity grid and keep it as
    ``<stage_dir>/checkpoints/last.pt`` (step 0); returns its metrics."""
    from trainers.checkpoint import save_checkpoint
    from trainers.supervised import evaluate

    param = next(model.parameters())
    trial = task.sample_batch(
        conditions="all", seed=config.train.seed, device=param.device, dtype=param.dtype
    )
    try:
        metrics, _, _ = evaluate(model, task, config, trial, config.solver)
    except DivergenceError as err:  # stage 3 starts from it all the same and says so
        print(f"curriculum stage 2: the composed network diverged on the grid: {err}", flush=True)
        metrics = {"loss": math.nan, config.success.metric: math.nan}
    stage_config = config.model_copy(
        update={
            "run_name": stage_dir.name,
            "logging": config.logging.model_copy(update={"run_dir": str(stage_dir.parent)}),
        }
    )
    state = TrainState(config=stage_config, task=task, model=model, run_dir=stage_dir)
    state.metrics = dict(metrics)
    state.history = [{"step": 0, **metrics}]
    state.eval_step = 0
    higher = not any(s in config.success.metric for s in ("rmse", "error", "loss"))
    value = metrics.get(config.success.metric, math.nan)
    threshold = (
        task.success_threshold if config.success.threshold is None else config.success.threshold
    )
    state.solved = bool(value >= threshold if higher else value <= threshold)
    save_checkpoint(state, stage_dir / "checkpoints" / "last.pt")
    return metrics
