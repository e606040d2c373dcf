"""Benchmarks run only on request: ``python -m pytest tests/benchmarks --benchmark-enable``.

The unit run (``python -m pytest``, whose addopts hold ``--benchmark-disable``) skips every
case here; with ``--benchmark-enable`` every collected case runs, timed by pytest-benchmark,
whatever else addopts says (``--benchmark-disable`` is pytest-benchmark's default switch and
``--benchmark-enable`` overrides it; none of these cases is marked ``slow``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def benchmarks_enabled(config: pytest.Config) -> bool:
    return bool(config.getoption("benchmark_enable", default=False))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if benchmarks_enabled(config):
        return
    skip = pytest.mark.skip(reason="benchmark: run with --benchmark-enable")
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every benchmark on one torch thread (the published figures' setting; tests/conftest.py)."""
    yield
