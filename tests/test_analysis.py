"""The analysis scripts stay runnable on the public API.

Each ``analysis/<name>.py`` must import (run with ``--help``, in this process) and use only
public names: no ``sys.path`` edits, no imports of ``tests``, no underscore names from colenv
or trainers.
"""

from __future__ import annotations

import ast
import runpy
import sys
from pathlib import Path

import pytest

ANALYSIS = Path(__file__).resolve().parents[1] / "analysis"
SCRIPTS = sorted(ANALYSIS.glob("*.py"))


def test_the_scripts_are_there():
    names = {p.stem for p in SCRIPTS}
    assert {"resting_rates", "psychometric", "column_bistability", "decision_start"} <= names


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.stem)
def test_public_api_only(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            assert not module.startswith("tests"), f"{path.name} imports {module}"
            if module.split(".")[0] in ("colenv", "trainers"):
                assert not any(part.startswith("_") for part in module.split(".")), module
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports private {private} from {module}"
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith("tests") for a in node.names), path.name
        elif isinstance(node, ast.Attribute) and node.attr == "path":
            assert not (isinstance(node.value, ast.Name) and node.value.id == "sys"), (
                f"{path.name} edits sys.path"
            )


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.stem)
def test_help_runs(path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(path), "--help"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(path), run_name="__main__")
    assert exit_.value.code == 0
    assert "usage" in capsys.readouterr().out
