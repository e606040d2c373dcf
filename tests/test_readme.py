"""The README's API example runs as printed (a README that lies is a bug)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_api_example_runs(capsys):
    text = README.read_text()
    section = text.split("## API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md#API", "exec"), {})
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "nfe" in printed
