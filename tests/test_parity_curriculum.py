"""Parity learned by the curriculum trainer (trainers/curriculum.py, docs/parity.md).

Checked against the task's definition, not the code's own output: the tree the curriculum
composes computes even parity as a boolean circuit for every bit count; no shipped config
holds a weight other than an anatomical default; the composed start (a module trained here,
from its default weights) already computes XOR level by level and separates even from odd
patterns at the root; each stage keeps its checkpoint and the final one evaluates from its config.
"""

from __future__ import annotations

import itertools
import tomllib
from pathlib import Path

import pytest
import torch

from colenv.errors import ConfigError
from colenv.models.column.params import load_params, population_index
from trainers import build_model, build_task, evaluate_checkpoint, load_config, train
from trainers.curriculum import (
    CurriculumOptions,
    compose,
    module_config,
    module_rates,
    train_module,
    tree_areas,
    tree_levels,
)
from trainers.supervised import forward

ROOT = Path(__file__).resolve().parents[1]
PARITY_CONFIGS = {2: "config/tasks/parity2.toml", 3: "config/tasks/parity3.toml",
                  4: "colenv/Parity-v0", 5: "config/tasks/parity5.toml",
                  6: "config/tasks/parity6.toml"}  # fmt: skip
SHORT = [
    "task_kwargs.pre_stimulus_ms=20.0",
    "task_kwargs.stimulus_ms=20.0",
    "task_kwargs.response_ms=10.0",
]


def quiet(run_dir: Path, *extra: str) -> list[str]:
    return [
        "logging.wandb=false",
        "logging.plots=false",
        "train.device='cpu'",
        f"logging.run_dir='{run_dir}'",
        *extra,
    ]


# ----------------------------------------------------------------------------- the tree
def tree_output(n_bits: int, bits: tuple[int, ...]) -> int:
    """The boolean value the curriculum's tree computes: each level pairs column j with j ^ 1
    into an XOR (an unpaired column passes through), the "always on" column is 1."""
    values = list(bits)
    for level in tree_levels(n_bits):
        if level.has_on:
            values.append(1)
        assert len(values) == level.n_columns
        values = [
            values[j] ^ values[j + 1] if j + 1 < len(values) else values[j]
            for j in range(0, len(values), 2)
        ]
    assert len(values) == 1
    return values[0]


@pytest.mark.parametrize("n_bits", range(1, 9))
def test_tree_computes_even_parity(n_bits):
    for bits in itertools.product((0, 1), repeat=n_bits):
        assert tree_output(n_bits, bits) == (sum(bits) % 2 == 0), bits
    areas = tree_areas(n_bits)
    assert areas[0]["n_columns"] >= n_bits and areas[-1]["n_columns"] == 1
    assert [a["name"][:2] for a in areas] == ["in", "xo"] * (len(areas) // 2)


@pytest.mark.parametrize("n_bits", sorted(PARITY_CONFIGS))
def test_shipped_parity_configs_are_the_tree_and_train_with_the_curriculum(n_bits):
    config = load_config(PARITY_CONFIGS[n_bits])
    assert config.trainer == "curriculum" and config.task_kwargs["n_bits"] == n_bits
    spec = config.model.options.network
    assert [a.n_columns for a in spec.areas] == [a["n_columns"] for a in tree_areas(n_bits)]


# ----------------------------------------------------------------------------- no weights
def _default_in_degrees() -> tuple[float, list[float]]:
    params = load_params()
    k_ff = list(params.input.k_ff)
    mean = sum(k for k in k_ff if k > 0) / sum(1 for k in k_ff if k > 0)
    return params.synapses.j_na, [k if k > 0 else mean for k in k_ff]


def _explicit_weights(raw: dict) -> list[tuple[str, str, float, str]]:
    """Every explicit weight of a config: (where, target population, nA, kind)."""
    found = []

    def walk(node, where):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{where}.{key}" if where else key)
        elif isinstance(node, list):
            if where.endswith(".edges"):
                for src, tgt, weight in node:
                    found.append((f"{where}: {src} -> {tgt}", tgt.split(".")[-1], weight, where))
            else:
                for item in node:
                    walk(item, where)

    walk(raw, "")
    return found


def _shipped_configs() -> list[Path]:
    return sorted((ROOT / "config").rglob("*.toml"))


def test_no_shipped_config_holds_a_learned_weight():
    """An explicit weight in a shipped config must be an anatomical default: a whole or half
    multiple (1, 1.5, 2, ...) of the P&D afferent in-degree of its target (K_ff, or their
    mean where P&D give none) times J. Weights copied out of a training run (like the earlier
    Parity tree's 26.0, 22.92, 67.8 nA) are not; nor may any table carry weight matrices ("init", "weights",
    "state_dict")."""
    j_na, k_default = _default_in_degrees()
    checked = 0
    for path in _shipped_configs():
        raw = tomllib.loads(path.read_text())
        text = path.read_text()
        for key in ("state_dict", "weights =", "init ="):
            assert key not in text, f"{path}: {key!r}"
        for where, target, weight, _ in _explicit_weights(raw):
            k = 2 * weight / j_na / k_default[population_index(target)]  # in halves
            assert round(k) >= 2 and abs(k - round(k)) < 0.005 * round(k), (
                f"{path.relative_to(ROOT)} {where}: {weight} nA is not a multiple of the "
                f"anatomical default ({k / 2:.4g} x K J): a learned weight?"
            )
            checked += 1
    assert checked > 0  # decision.toml's input edges are anatomical defaults, checked here


def test_the_weight_check_catches_copied_weights():
    j_na, k_default = _default_in_degrees()
    copied = {"L23e": 26.0, "L4e": 67.8, "L5i": 22.92, "L4i": 4.51}  # the old hand-built tree
    for target, weight in copied.items():
        k = weight / j_na / k_default[population_index(target)]
        assert not (round(k) >= 1 and abs(k - round(k)) < 0.005 * round(k)), (target, weight)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("trainer_options.module_stepz=3", "trainer_options.module_stepz"),
        ("trainer_options.module_steps=0", "trainer_options.module_steps"),
        ("trainer_options.relay=['L23e', 'L9e']", "trainer_options.relay"),
        ("trainer_options.module_lr=-1.0", "trainer_options.module_lr"),
    ],
)
def test_bad_curriculum_options_are_config_errors_naming_the_key(override, names):
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")):
        load_config("colenv/Parity-v0", [override])


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        (["task_kwargs.n_bits=3", "model.network.n_inputs=3"], "model.network.areas"),
        (["trainer_options.relay=['L5e', 'L4e']"], "trainer_options.relay"),
        (["model.network.recurrent.trainable=true"], "model.network.recurrent.trainable"),
        (["model.network.input_mode='one_to_one'"], "model.network.input_mode"),
    ],
)
def test_a_network_that_is_not_the_tree_is_refused_before_training(overrides, names, tmp_path):
    config = load_config("colenv/Parity-v0", quiet(tmp_path, *SHORT, *overrides))
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")):
        train(config)
    assert not list(tmp_path.rglob("*.pt"))  # nothing trained


def test_wrong_areas_error_gives_the_tree_to_write(tmp_path):
    config = load_config("colenv/Parity-v0", quiet(tmp_path, *SHORT, "task_kwargs.n_bits=3",
                                                    "model.network.n_inputs=3"))  # fmt: skip
    with pytest.raises(ConfigError) as err:
        train(config)
    assert "n_columns = 3" in str(err.value) and "xor2" in str(err.value)


def test_supervised_trainer_takes_no_trainer_options():
    with pytest.raises(ConfigError, match="trainer_options.*'supervised' takes no options"):
        load_config("colenv/XOR-v0", ["trainer_options.module_steps=3"])


# ----------------------------------------------------------------------------- stages
def test_each_stage_keeps_its_checkpoint_and_the_final_one_evaluates_and_resumes(tmp_path):
    config = load_config(
        PARITY_CONFIGS[2],
        quiet(tmp_path, *SHORT, "train.steps=2", "success.stop_on_success=false",
              "train.eval_every=1", "run_name=p2"),
    )  # fmt: skip
    result = train(config)
    run = tmp_path / "p2"
    assert result.run_dir == str(run) and result.steps == 2 and not result.diverged
    module = run / "stages" / "1-module" / "checkpoints" / "last.pt"
    composed = run / "stages" / "2-compose" / "checkpoints" / "last.pt"
    final = run / "checkpoints" / "last.pt"
    for path in (module, composed, final):
        assert path.is_file(), path
    assert torch.load(module, weights_only=True)["task"] == "colenv/XOR-v0"
    assert torch.load(composed, weights_only=True)["step"] == 0
    # the final checkpoint's config alone rebuilds the network (no curriculum rerun)
    metrics = evaluate_checkpoint(run)
    assert metrics["step"] == 2 and metrics["accuracy"] == result.metrics["accuracy"]
    assert evaluate_checkpoint(composed)["step"] == 0
    # resume continues stage 3 in the same folder, without retraining the module
    from trainers.run import resume_config

    before = module.stat().st_mtime_ns
    resumed = train(resume_config(run, ["train.steps=3"]))
    assert resumed.steps == 3 and module.stat().st_mtime_ns == before


def test_composed_start_computes_xor_at_each_level_and_parity_at_the_root(tmp_path):
    """Stage 1 from the default initial weights (about 30-40 steps of XOR), stage 2 into the
    4-bit tree: before any Parity training, each first-level XOR column is on (> 12 Hz, and
    > 8 Hz above every "off" pattern) exactly when its two bits differ, the second-level one
    (> 10 Hz, same margin) when the four bits are odd, and the root fires more (by > 1 Hz)
    for every even pattern than for any odd one (stage 3 then mostly has to scale the root's
    rate up to 20 Hz)."""
    config = load_config(PARITY_CONFIGS[4], quiet(tmp_path, "run_name=p4"))
    task = build_task(config)
    options = CurriculumOptions.model_validate(config.trainer_options)
    module, result = train_module(task, config, options, tmp_path / "stages")
    assert result.solved, result.message
    net = build_model(config, task, torch.device("cpu"), torch.float32)
    compose(net, module, tree_levels(4), options, module_rates(module, config, task), 15.0)
    trial = task.sample_batch(conditions="all", seed=0)
    with torch.no_grad():
        _, states, _ = forward(net, trial, config, config.solver, 0)
    window = trial.mask[:, :, 0].float()
    rates = (net.rates(states) * window[:, :, None]).sum(0) / window.sum(0)[:, None]
    name = {n: i for i, n in enumerate(net.population_names)}
    bits = trial.conditions["bits"]
    odd = bits.sum(dim=1) % 2
    for column, on, high in (
        ("xor0[0]", bits[:, 0] ^ bits[:, 1], 12.0),
        ("xor0[1]", bits[:, 2] ^ bits[:, 3], 12.0),
        ("xor1[0]", odd, 10.0),  # XOR of the relays of the two
    ):
        rate = rates[:, name[f"{column}.L23e"]]
        low = float(rate[on == 0].max())
        assert float(rate[on == 1].min()) > max(high, low + 8.0), (column, rate)
    root = rates[:, name["xor2[0].L23e"]]  # XOR(odd parity, always on)
    even = odd == 0
    assert float(root[even].min()) > float(root[~even].max()) + 1.0, root


@pytest.mark.slow
def test_three_bit_parity_trains_to_criterion(tmp_path):
    config = load_config(PARITY_CONFIGS[3], quiet(tmp_path, "run_name=p3"))
    result = train(config)
    assert result.solved, result.message
    assert evaluate_checkpoint(result.run_dir)["accuracy"] == 1.0


# ----------------------------------------------------------------------------- noisy scoring
def _constant_output(trial, window_means: torch.Tensor) -> torch.Tensor:
    """An output [T, B, 1] that holds window_means[b] throughout trial b."""
    return window_means.reshape(1, -1, 1).expand(trial.n_steps, -1, 1).clone()


def test_report_accuracy_equals_accuracy_with_one_trial_per_pattern():
    """Without noise draws (one trial per pattern) the report rule is the 5 Hz band: for a
    20 Hz target the band never straddles the 10 Hz threshold."""
    task = build_task(load_config(PARITY_CONFIGS[4]))
    trial = task.sample_batch(conditions="all", seed=0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        means = torch.rand(trial.batch_size, generator=generator) * 30.0
        metrics = task.evaluate(_constant_output(trial, means), trial)
        assert metrics["report_accuracy"] == metrics["accuracy"]


def test_report_accuracy_scores_each_trial_by_its_side_and_each_pattern_by_its_average():
    task = build_task(load_config(PARITY_CONFIGS[4]))
    grid = task.sample_batch(conditions="all", seed=0)
    draws = 4
    trial = grid[torch.arange(draws * grid.batch_size) % grid.batch_size]
    even = task.label(trial.conditions["bits"])
    # even patterns' draws at 12, 28, 19, 21 Hz (average 20), odd ones at 0, 9, 1, 2 Hz: every
    # trial on its side, every average within 5 Hz, but 2 of 4 even draws outside the band
    high = torch.tensor([12.0, 28.0, 19.0, 21.0]).repeat_interleave(grid.batch_size)
    low = torch.tensor([0.0, 9.0, 1.0, 2.0]).repeat_interleave(grid.batch_size)
    metrics = task.evaluate(_constant_output(trial, torch.where(even, high, low)), trial)
    assert metrics["report_accuracy"] == 1.0
    assert metrics["accuracy"] == pytest.approx(1.0 - (2 * 8 + 8) / 64)  # 9 Hz is off the band
    # one even draw below the threshold: that trial alone is wrong (its average 17.5 Hz is fine)
    first_even = int(even.nonzero()[0])
    means = torch.where(even, torch.full_like(high, 20.0), torch.zeros_like(low))
    means[first_even] = 9.9
    assert task.evaluate(_constant_output(trial, means), trial)["report_accuracy"] == 63 / 64
    # every draw of one even pattern on the right side but its average 14 Hz: all 4 are wrong
    pattern = trial.conditions["bits"].eq(trial.conditions["bits"][first_even]).all(dim=1)
    means = torch.where(even, torch.full_like(high, 20.0), torch.zeros_like(low))
    means[pattern] = torch.tensor([11.0, 17.0, 13.0, 15.0])
    assert task.evaluate(_constant_output(trial, means), trial)["report_accuracy"] == 60 / 64


def test_noisy_parity_is_scored_by_report_accuracy_and_its_module_by_xor_accuracy(tmp_path):
    config = load_config("config/tasks/parity_noisy.toml")
    assert config.solver.sde and config.eval.noise_draws == 8 and config.success.patience == 2
    assert config.model.options.network.noise_std == 0.5
    assert config.success.metric == "report_accuracy" and config.success.threshold is None
    task = build_task(config)
    options = CurriculumOptions.model_validate(config.trainer_options)
    module = module_config(task, config, options, tmp_path)
    assert module.task == "colenv/XOR-v0" and module.success.metric == "accuracy"
    assert module.solver.sde and module.eval.noise_draws == 8
    # a metric XOR reports stays the module's criterion too
    plain = load_config(
        PARITY_CONFIGS[4], ["success.metric=window_error_hz", "success.threshold=2"]
    )
    module = module_config(task, plain, options, tmp_path)
    assert module.success.metric == "window_error_hz" and module.success.threshold == 2.0
