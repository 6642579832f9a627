"""What an install promises: the compiled modules it was built with, and the optional accelerators.

The wheel builds set ``AUTOCORE_EXPECT_EXTENSIONS`` to ``1`` (every hot-path
module compiled) or to a list such as ``_topics,_ring`` (32-bit ARM, where the
envelope validator stays pure); a build that quietly fell back fails here.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from autocore import _fast, cli


def _expected_stems() -> list[str]:
    raw = os.environ.get("AUTOCORE_EXPECT_EXTENSIONS", "").strip()
    if raw == "1":
        return list(_fast.MODULES)
    return [s.strip().lstrip("_") for s in raw.split(",") if s.strip()]


def test_promised_compiled_modules_are_in_use() -> None:
    """Exactly the promised modules are compiled: a listed subset means the rest is pure."""
    stems = _expected_stems()
    if not stems:
        pytest.skip("AUTOCORE_EXPECT_EXTENSIONS is not set")
    unknown = set(stems) - set(_fast.MODULES)
    assert not unknown, f"AUTOCORE_EXPECT_EXTENSIONS names unknown modules: {sorted(unknown)}"
    expected = {m: _fast.CYTHON if m in stems else _fast.PYTHON for m in _fast.MODULES}
    assert _fast.IMPLEMENTATIONS == expected


def _loop_module() -> str:
    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    return cli.run_loop(which())  # type: ignore[arg-type]


def test_run_loop_uses_uvloop_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("uvloop")
    monkeypatch.delenv("AUTOCORE_NO_UVLOOP", raising=False)
    assert _loop_module().startswith("uvloop")
    assert cli.event_loop_report().startswith("uvloop ")


def test_no_uvloop_switch_forces_the_stdlib_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOCORE_NO_UVLOOP", "1")
    assert _loop_module().startswith("asyncio")
    assert cli.event_loop_report().startswith("asyncio (uvloop ")


def test_info_names_the_json_parser_in_use() -> None:
    report = cli.json_parser_report()
    if _fast.IMPLEMENTATIONS["envelope"] == _fast.CYTHON:
        assert report.startswith("simdjson")
    else:
        assert report.startswith("stdlib json")


def test_compiled_envelope_needs_no_pysimdjson_at_run_time() -> None:
    """simdjson is compiled into _envelope: nothing imports the pysimdjson package."""
    import sys

    if _fast.IMPLEMENTATIONS["envelope"] != _fast.CYTHON:
        pytest.skip("envelope validator is pure Python in this install")
    topic = _fast.parse_topic("autocore/devices/esp32-relay-001/status")
    result = _fast.Validator().validate(topic, b'{"status": "online"}')
    assert isinstance(result, (_fast.Message, _fast.Reject))
    assert "simdjson" not in sys.modules
