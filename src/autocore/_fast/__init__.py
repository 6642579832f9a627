"""Pick the compiled or the pure-Python build of each hot-path module.

Each hot spot comes as a pair sharing a stem: ``_topics.pyx`` / ``_topics_py.py``,
``_envelope.pyx`` / ``_envelope_py.py``, ``_ring.pyx`` / ``_ring_py.py``,
``_compress.pyx`` / ``_compress_py.py``, ``_frames.pyx`` / ``_frames_py.py``,
``_sqlwrite.pyx`` / ``_sqlwrite_py.py``. The pure twin is the specification; the
compiled one must give the same results and the same errors. The compiled module
wins unless ``AUTOCORE_NO_EXTENSIONS`` is set, the interpreter is not CPython, or
the extension was not built (or refuses to load, as ``_sqlwrite`` does where it
cannot reach the SQLite library that ``sqlite3`` uses).
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

#: Stems of the hot-path modules, in pipeline order.
MODULES = ("frames", "topics", "envelope", "compress", "ring", "sqlwrite")

CYTHON = "cython"
PYTHON = "python"


def extensions_disabled() -> bool:
    """Tell whether the pure build is forced (env switch or non-CPython)."""
    flag = os.environ.get("AUTOCORE_NO_EXTENSIONS", "").strip().lower()
    return flag in {"1", "true", "yes", "on"} or sys.implementation.name != "cpython"


def _import(stem: str, build: str) -> ModuleType:
    suffix = "" if build == CYTHON else "_py"
    return importlib.import_module(f"{__name__}._{stem}{suffix}")


@dataclass(frozen=True)
class Implementation:
    """One build of the whole hot path, as tests, benchmarks and the gateway use it."""

    name: str
    parse_topic: Any
    Topic: Any
    Validator: Any
    Message: Any
    Reject: Any
    Ring: Any
    Compressor: Any
    decode_frames: Any
    TelemetryInsert: Any

    @classmethod
    def from_modules(cls, name: str, modules: dict[str, ModuleType]) -> Implementation:
        frames, topics, envelope, compress, ring, sqlwrite = (modules[m] for m in MODULES)
        return cls(
            name=name,
            parse_topic=topics.parse_topic,
            Topic=topics.Topic,
            Validator=envelope.Validator,
            Message=envelope.Message,
            Reject=envelope.Reject,
            Ring=ring.Ring,
            Compressor=compress.Compressor,
            decode_frames=frames.decode,
            TelemetryInsert=sqlwrite.TelemetryInsert,
        )


def load(build: str) -> Implementation:
    """Load one build strictly; raise ImportError naming the modules it lacks."""
    if build not in (CYTHON, PYTHON):
        raise ValueError(f"unknown build {build!r}")
    modules, missing = {}, []
    for stem in MODULES:
        try:
            modules[stem] = _import(stem, build)
        except ImportError:
            missing.append(f"_{stem}")
    if missing:
        raise ImportError(f"{build} build lacks {', '.join(missing)} (extension not compiled)")
    return Implementation.from_modules(build, modules)


def _choose() -> tuple[dict[str, str], dict[str, ModuleType]]:
    chosen, modules = {}, {}
    for stem in MODULES:
        build = PYTHON
        if not extensions_disabled():
            try:
                modules[stem] = _import(stem, CYTHON)
                build = CYTHON
            except ImportError:
                pass
        if build == PYTHON:
            modules[stem] = _import(stem, PYTHON)
        chosen[stem] = build
    return chosen, modules


def publish_fields(messages: list[Any], at: int) -> tuple[Any, bytes, bool, int, int, bool]:
    """The message at ``at`` of a ``decode_frames`` batch: topic, payload, retained, QoS, packet id, DUP.

    The batch holds each message's fixed-header byte (see ``_frames_py``); this
    reads its flags, in the order ``Pipeline.handle`` takes them.
    """
    header = messages[at + 2]
    return (messages[at], messages[at + 1], bool(header & 0x01), (header >> 1) & 0x03, messages[at + 3],
            bool(header & 0x08))


if TYPE_CHECKING:  # type checkers always see the pure twins
    from ._compress_py import Compressor
    from ._frames_py import decode as decode_frames
    from ._envelope_py import Message, Reject, Validator
    from ._ring_py import Ring
    from ._sqlwrite_py import TelemetryInsert
    from ._topics_py import Topic, parse_topic

    IMPLEMENTATIONS: dict[str, str]
    IMPLEMENTATION: str
else:
    #: Build in use per module, e.g. {"topics": "cython", "envelope": "python", ...}.
    IMPLEMENTATIONS, _modules = _choose()
    #: "cython" when every module is compiled, "python" when none is, else "mixed".
    IMPLEMENTATION = (
        CYTHON if set(IMPLEMENTATIONS.values()) == {CYTHON}
        else PYTHON if set(IMPLEMENTATIONS.values()) == {PYTHON}
        else "mixed"
    )
    active = Implementation.from_modules(IMPLEMENTATION, _modules)
    parse_topic = active.parse_topic
    Topic = active.Topic
    Validator = active.Validator
    Message = active.Message
    Reject = active.Reject
    Ring = active.Ring
    Compressor = active.Compressor
    decode_frames = active.decode_frames
    TelemetryInsert = active.TelemetryInsert
    del _modules

__all__ = [
    "CYTHON", "Compressor", "IMPLEMENTATION", "IMPLEMENTATIONS", "MODULES", "PYTHON", "Implementation",
    "Message", "Reject", "decode_frames", "Ring", "TelemetryInsert", "Topic", "Validator",
    "extensions_disabled", "load", "parse_topic", "publish_fields",
]
