"""Third-party trainers and models plug in by name, by entry point, or as module:Class; the
example trainer of docs/extending.md gets the run folder, checkpoints, progress, W&B and plots
for free."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import trainers.registry as registry
from colenv.errors import ConfigError
from trainers import Result, Trainer, get_trainer, list_trainers, register_trainer
from trainers.__main__ import main

TASK = "colenv/XOR-v0"
ROOT = Path(__file__).resolve().parents[1]

EXTENDING_EXAMPLE = '''\
# my_pkg/train.py
import torch

from colenv import rollout
from trainers import Result, register_trainer


class RandomSearch:
    """Keeps a random multiplicative perturbation of the weights when it lowers the loss."""

    def fit(self, model, task, config, callbacks) -> Result:
        trial = task.sample_batch(conditions="all", seed=config.train.seed)
        # the run folder, resume, progress, checkpoints, W&B and plots come from here
        state = callbacks.begin(model, task, config)
        generator = torch.Generator().manual_seed(config.train.seed)

        def loss_and_output():
            states = rollout(model, trial.stimulus, trial.t_ms, config.solver).states
            output = model.readout(states)
            return float(((output - trial.target) ** 2)[trial.mask].mean()), output

        with torch.no_grad():
            best, output = loss_and_output()
            while state.step < config.train.steps:
                before = [p.clone() for p in model.parameters()]
                for p in model.parameters():
                    if p.requires_grad:
                        p.mul_(1 + 0.05 * torch.randn(p.shape, generator=generator))
                model.project_()
                loss, candidate = loss_and_output()
                if loss < best:
                    best, output = loss, candidate
                else:  # no better: back to the weights before
                    for p, old in zip(model.parameters(), before, strict=True):
                        p.copy_(old)
                state.step += 1
                state.loss = best
                metrics = {**task.evaluate(output, trial), "loss": best}
                callbacks.evaluated(state, metrics, output=output, trial=trial)
                if not callbacks.step_end(state):  # early stopping, or a callback said stop
                    break
        state.stop_reason = state.stop_reason or f"budget of {config.train.steps} steps spent"
        return callbacks.end(state)


register_trainer("random", RandomSearch)
'''
"""The trainer example of docs/extending.md, as printed there (tests/test_readme.py checks)."""


def test_readme_example_trainer_gets_run_folder_checkpoints_plots_wandb_and_progress(
    tmp_path, tiny, offline_wandb, monkeypatch, capsys
):
    package = tmp_path / "pkgs" / "my_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "train.py").write_text(EXTENDING_EXAMPLE)
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    overrides = tiny(TASK, "logging.wandb=true", "logging.plots=true", "run_name=rs", steps=3)
    code = main(["train", TASK, *overrides, "trainer=random", "--import", "my_pkg.train"])
    out = capsys.readouterr().out
    assert code == 0, out
    run = tmp_path / "rs"
    assert (run / "checkpoints" / "last.pt").is_file()
    assert {p.name for p in (run / "plots").iterdir()} == {"outputs.png"}  # no rates given
    assert list((run / "wandb").glob("offline-run-*"))
    assert "step 1/3" in out and "step 3/3" in out  # progress lines
    assert "budget of 3 steps spent" in out
    # the import is saved with the run; resume imports it only when the user names it again
    from trainers.checkpoint import read_checkpoint

    assert read_checkpoint(run)["config"]["imports"] == ["my_pkg.train"]
    resumed = ["resume", str(run), "train.steps=4", "logging.wandb=false"]
    assert main(resumed) == 2
    assert "add --import my_pkg.train" in capsys.readouterr().err
    assert main([*resumed, "--import", "my_pkg.train"]) == 0
    assert "steps       4" in capsys.readouterr().out


def test_a_checkpoint_naming_code_imports_nothing_unless_the_user_names_it(
    tmp_path, tiny, monkeypatch
):
    """A checkpoint is data: the modules its config names (``imports``, ``module:Class``) are
    not imported by resume or evaluate until the user names them."""
    from trainers.checkpoint import read_checkpoint
    from trainers.run import evaluate_checkpoint, resume_config

    pkgs = tmp_path / "pkgs"
    pkgs.mkdir()
    marker = tmp_path / "imported"
    (pkgs / "side_effect_mod.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(pkgs))
    result = __import__("trainers").train(
        __import__("trainers").load_config(TASK, tiny(TASK, "run_name=plain", steps=1))
    )
    ckpt = read_checkpoint(result.checkpoint)
    for key, value in (("imports", ["side_effect_mod"]), ("trainer", "side_effect_mod:T")):
        forged = {**ckpt, "config": {**ckpt["config"], key: value}}
        path = tmp_path / f"forged_{key}.pt"
        torch.save(forged, path)
        for call in (evaluate_checkpoint, resume_config):
            with pytest.raises(ConfigError, match=r"'side_effect_mod' \(" + key):
                call(path)
        assert not marker.exists() and "side_effect_mod" not in sys.modules
    # named by the user: imported
    evaluate_checkpoint(tmp_path / "forged_imports.pt", imports=["side_effect_mod"])
    assert marker.exists()


class MyTrainer:
    """A trainer that does no training: it evaluates once and reports."""

    calls: list[dict] = []

    def fit(self, model, task, config, callbacks) -> Result:
        trial = task.sample_batch(conditions="all", seed=0)
        type(self).calls.append({"task": config.task, "n_trials": trial.batch_size})
        return Result(steps=0, wall_s=0.0, solved=False, message="evaluated only")


def test_module_path_trainer_runs_through_the_cli(tiny, capsys):
    MyTrainer.calls.clear()
    code = main(["train", TASK, *tiny(TASK), "trainer=tests.test_trainers_plugin:MyTrainer"])
    assert code == 0
    assert MyTrainer.calls == [{"task": TASK, "n_trials": 4}]
    assert "evaluated only" in capsys.readouterr().out


def test_unknown_trainer_lists_the_registered_ones_before_any_run_folder(tmp_path, tiny, capsys):
    code = main(["train", TASK, *tiny(TASK, "logging.wandb=true"), "trainer=nope"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown trainer 'nope'; registered: " in err and "supervised" in err
    assert not any(tmp_path.iterdir())  # no run folder, no W&B run


def test_register_and_lookup():
    register_trainer("mine", MyTrainer)
    assert get_trainer("mine") is MyTrainer
    assert "mine" in list_trainers() and "supervised" in list_trainers()
    assert isinstance(MyTrainer(), Trainer)
    with pytest.raises(ConfigError, match="unknown trainer 'nope'; registered: .*supervised"):
        get_trainer("nope")
    with pytest.raises(ConfigError, match="has no 'Missing'"):
        get_trainer("tests.test_trainers_plugin:Missing")
    with pytest.raises(ConfigError, match="no fit"):
        register_trainer("bad", object)


def test_entry_point_is_loaded_lazily(monkeypatch):
    ep = importlib.metadata.EntryPoint(
        name="from-entry-point",
        value="tests.test_trainers_plugin:MyTrainer",
        group="colenv.trainers",
    )
    monkeypatch.setattr(
        registry.importlib.metadata,
        "entry_points",
        lambda group: [ep] if group == "colenv.trainers" else [],
    )
    assert "from-entry-point" in list_trainers()
    assert get_trainer("from-entry-point") is MyTrainer


LEAKY = '''\
"""A user's own model: leaky integrators of the input, read out linearly."""

import bisect

import torch
from pydantic import Field

from colenv.config import StrictModel
from colenv.models import register_model


class LeakyConfig(StrictModel):
    n_units: int = Field(8, ge=1, description="integrators")
    tau_ms: float = Field(50.0, gt=0, description="time constant, ms")


class Leaky(torch.nn.Module):
    Config = LeakyConfig

    def __init__(self, config, n_inputs, n_outputs, generator):
        super().__init__()
        self.config = config
        self.w_in = torch.nn.Parameter(torch.randn(config.n_units, n_inputs, generator=generator) * 0.1)
        self.w_out = torch.nn.Parameter(torch.randn(n_outputs, config.n_units, generator=generator))

    @classmethod
    def from_config(cls, config, *, n_inputs, n_outputs, seed, device=None, dtype=None):
        model = cls(config, n_inputs, n_outputs, torch.Generator().manual_seed(seed))
        return model.to(device=device, dtype=dtype or torch.float32)

    def prepare(self, stimulus):
        return Dynamics(self, stimulus)

    def initial_state(self, batch_size):
        return self.w_in.new_zeros(batch_size, self.config.n_units)

    def readout(self, states):
        return torch.relu(states) @ self.w_out.t()

    def describe_state_index(self, index):
        return f"x[{index}]"

    def project_(self):
        pass


class Dynamics(torch.nn.Module):
    def __init__(self, net, stimulus):
        super().__init__()
        self.net, self.stimulus, self.nfe, self.grid = net, stimulus, 0, [0.0]

    def set_grid(self, t_s):
        self.grid = t_s.tolist()

    def forward(self, t, y):
        self.nfe += 1
        k = min(max(bisect.bisect_right(self.grid, float(t)) - 1, 0), len(self.stimulus) - 1)
        return (self.stimulus[k] @ self.net.w_in.t() - y) / (self.net.config.tau_ms * 1e-3)


register_model("leaky", Leaky)
'''


def test_a_users_own_model_trains_resumes_and_evaluates_from_the_cli(tmp_path, tiny, capsys):
    (tmp_path / "pkgs").mkdir()
    (tmp_path / "pkgs" / "my_models.py").write_text(LEAKY)
    config = tmp_path / "leaky.toml"
    config.write_text(
        textwrap.dedent(
            """\
            task = "colenv/XOR-v0"
            imports = ["my_models"]

            [task_kwargs]
            dt_ms = 10.0

            [model]
            kind = "leaky"
            n_units = 4

            [solver]
            method = "euler"
            step_ms = 10.0
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "pkgs"), str(ROOT)])}
    overrides = [o for o in tiny(TASK) if not o.startswith("task_kwargs")]

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "trainers", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
        )

    done = cli("train", str(config), *overrides, "run_name=leaky")
    assert done.returncode == 0, done.stderr
    run = tmp_path / "leaky"
    done = cli("resume", str(run), "train.steps=3")
    assert done.returncode == 2 and "--import my_models" in done.stderr
    done = cli("resume", str(run), "train.steps=3", "--import", "my_models")
    assert done.returncode == 0, done.stderr
    done = cli("evaluate", str(run), "--import", "my_models")
    assert done.returncode == 0, done.stderr
    assert "accuracy" in done.stdout
    done = cli("evaluate", str(run), "model.n_units=5", "--import", "my_models")
    assert done.returncode == 2
    assert "w_in is [4, 2] in the checkpoint and [5, 2] in the model" in done.stderr
