"""Fixtures shared by tests/ and benchmarks/: both builds of the hot path, a non-UTC clock."""

from __future__ import annotations

import os
import time

# Installed systems run at UTC-3; every naive-local timestamp must survive that.
os.environ.setdefault("TZ", "<-03>3")
if hasattr(time, "tzset"):  # not on Windows, where wheels run the hot-path tests only
    time.tzset()

import sqlite3  # noqa: E402
from datetime import datetime  # noqa: E402

import pytest  # noqa: E402

from autocore import _fast  # noqa: E402

# Tests write rows through sqlite3 the way the Config App does, with datetime values.
# Python 3.12 deprecated sqlite3's implicit datetime adapter; this is the same text
# ("YYYY-MM-DD HH:MM:SS[.ffffff]"), made explicit.
sqlite3.register_adapter(datetime, lambda moment: moment.isoformat(" "))

def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--no-cython",
        action="store_true",
        default=False,
        help="deselect the compiled leg of the impl fixture",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--no-cython"):
        return
    kept, dropped = [], []
    for item in items:
        (dropped if item.get_closest_marker("cython") else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(
    scope="session",
    params=[pytest.param(_fast.CYTHON, marks=pytest.mark.cython), _fast.PYTHON],
)
def impl(request: pytest.FixtureRequest) -> _fast.Implementation:
    """One build of the hot path: every hot-path test runs once per build."""
    if request.param == _fast.CYTHON and _fast.extensions_disabled():
        pytest.skip("AUTOCORE_NO_EXTENSIONS is set: compiled build not in use")
    try:
        return _fast.load(request.param)
    except ImportError as exc:
        pytest.skip(str(exc))
