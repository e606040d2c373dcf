"""Every command and code block of the README works as printed (a README that lies is a bug).

Python blocks run. Shell commands are parsed and checked against the code: ``pip install``
targets and extras exist, ``python -m trainers`` subcommands parse and their task ids and
``key=value`` overrides load, the bench command parses and builds its network, pytest paths
and markers exist, analysis scripts exist. The cheap ones run with tiny budgets: the set-up
training (one step instead of to criterion), resume and evaluate of that run, ``list``.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
TINY = ["train.steps=1", "logging.wandb=false", "logging.plots=false"]


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def shell_commands() -> list[list[str]]:
    """Every command of the README's bash blocks (``a && b`` is two), comments stripped."""
    out = []
    for block in blocks("bash"):
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()
            for part in line.split("&&"):
                if part.strip():
                    out.append(shlex.split(part))
    return out


def inline_commands() -> list[list[str]]:
    """Commands quoted inline in the text (`python ...`)."""
    return [shlex.split(c) for c in re.findall(r"`(python [^`]+)`", README)]


def commands(*prefix: str) -> list[list[str]]:
    return [c for c in shell_commands() if c[: len(prefix)] == list(prefix)]


def test_readme_has_the_commands_it_promises():
    assert len(blocks("python")) >= 1
    setup = [c for c in shell_commands() if c[:2] == ["pip", "install"]]
    assert setup, "the README must say how to install"
    assert commands("python", "-m", "trainers", "train")
    assert commands("python", "-m", "pytest")
    assert len(README.splitlines()) <= 170


def test_pip_install_targets_exist():
    extras = PYPROJECT["project"]["optional-dependencies"]
    for cmd in commands("pip", "install"):
        for arg in cmd[2:]:
            if arg == "-e":
                continue
            if arg.startswith("."):
                for extra in re.findall(r"\[(.*?)\]", arg):
                    assert extra in extras, f"{' '.join(cmd)}: no extra {extra!r}"
            elif arg.startswith("torch=="):
                assert torch.__version__.split("+")[0] == arg.split("==")[1], arg
            else:
                raise AssertionError(f"unexpected pip install argument {arg!r}")


def test_api_blocks_run(capsys):
    for i, code in enumerate(blocks("python")):
        exec(compile(code, f"README.md#python-{i}", "exec"), {})
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "nfe" in printed


def _run_trainers(argv: list[str]) -> int:
    from trainers.__main__ import main

    return main(argv)


def test_trainer_commands(tmp_path, monkeypatch):
    """Train (one step), resume, evaluate and list as printed; reproduce parses."""
    from trainers.__main__ import build_parser
    from trainers.config import load_config

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)  # runs/ lands here, as in a fresh checkout
    run_dir = None
    train_cmds = commands("python", "-m", "trainers", "train")
    for cmd in train_cmds:
        argv = cmd[3:]
        build_parser().parse_args(argv)
        task, overrides = argv[1], [a for a in argv[2:] if not a.startswith("resume=")]
        load_config(task, overrides)  # every key and value valid
        if any(a.startswith("resume=") for a in argv):
            continue
        assert _run_trainers([*argv, *TINY]) == 0, cmd
        run_dir = sorted((tmp_path / "runs").iterdir())[-1]
    assert run_dir is not None
    for cmd in train_cmds:
        resume = [a for a in cmd if a.startswith("resume=")]
        if resume:
            assert resume[0] == "resume=runs/<run>", resume
            argv = [a.replace("runs/<run>", str(run_dir)) for a in cmd[3:]]
            assert _run_trainers([*argv, "train.steps=2", *TINY[1:]]) == 0, cmd
    for cmd in commands("python", "-m", "trainers", "resume"):
        assert cmd[4] == "runs/<run>", cmd
        argv = ["resume", str(run_dir), *[a for a in cmd[5:] if not a.startswith("train.steps=")]]
        assert _run_trainers([*argv, "train.steps=2", *TINY[1:]]) == 0, cmd
    for cmd in commands("python", "-m", "trainers", "config"):
        assert _run_trainers(cmd[3:]) == 0, cmd
    for cmd in commands("python", "-m", "trainers", "evaluate"):
        path = cmd[4].replace("runs/<run>", str(run_dir))
        assert Path(path).is_file(), f"{' '.join(cmd)}: training leaves no {cmd[4]}"
        assert _run_trainers(["evaluate", path]) == 0
    for cmd in commands("python", "-m", "trainers", "list"):
        assert _run_trainers(cmd[3:]) == 0
    for cmd in commands("python", "-m", "trainers", "reproduce"):
        args = build_parser().parse_args(cmd[3:])
        if args.out:
            assert (ROOT / args.out).parent.is_dir(), args.out


def test_bench_commands():
    from trainers.bench import build_network, build_parser

    cmds = commands("python", "-m", "trainers.bench")
    cmds += [c for c in inline_commands() if c[:3] == ["python", "-m", "trainers.bench"]]
    assert cmds
    for cmd in cmds:
        args = build_parser().parse_args(cmd[3:])
        if "<" in args.target or (args.target.endswith(".toml") and not Path(args.target).exists()):
            continue  # a placeholder: <task-id|config.toml>, my_config.toml
        net = build_network(args.target, args.overrides, "cpu")
        assert net.model is not None


def test_pytest_and_analysis_commands():
    markers = {m.split(":")[0] for m in PYPROJECT["tool"]["pytest"]["ini_options"]["markers"]}
    for cmd in commands("python", "-m", "pytest") + [
        c for c in inline_commands() if c[:3] == ["python", "-m", "pytest"]
    ]:
        args = cmd[3:]
        for i, arg in enumerate(args):
            if arg == "-m":
                assert set(re.findall(r"\w+", args[i + 1])) - {"not", "and", "or"} <= markers
            elif not arg.startswith("-") and (i == 0 or args[i - 1] != "-m"):
                assert (ROOT / arg).exists(), f"{' '.join(cmd)}: no {arg}"
    scripts = [c for c in shell_commands() + inline_commands() if c[1].endswith(".py")]
    assert scripts
    for cmd in scripts:
        assert (ROOT / cmd[1]).is_file(), f"{' '.join(cmd)}: no {cmd[1]}"


@pytest.mark.parametrize("path", sorted(set(re.findall(r"\]\(((?:docs/)?[\w./-]+)\)", README))))
def test_links_exist(path):
    assert (ROOT / path.split("#")[0]).exists(), path


def test_docs_links_exist():
    for doc in (ROOT / "docs").glob("*.md"):
        for link in re.findall(r"\]\(([\w./-]+)(?:#[\w-]*)?\)", doc.read_text()):
            assert (doc.parent / link).exists(), f"{doc.name}: broken link {link}"


def test_extending_trainer_example_is_the_tested_one():
    """docs/extending.md prints the trainer that tests/test_trainers_plugin.py runs."""
    from tests.test_trainers_plugin import EXTENDING_EXAMPLE

    extending = (ROOT / "docs" / "extending.md").read_text()
    assert f"```python\n{EXTENDING_EXAMPLE}```" in extending
