"""Coverage-guided fuzzing of the envelope validator: both builds, same input, same record.

Run: ``python tests/fuzz/fuzz_envelope.py [CORPUS_DIR] [-max_total_time=N]``; seeds are in
``tests/fuzz/corpus/envelope`` (copy them to a scratch folder, libFuzzer adds to it) and
``-dict=tests/fuzz/envelope.dict`` supplies envelope keys and JSON edge tokens.
The first input byte picks the topic, the rest is the payload. Any exception,
or any difference between the compiled and the pure record, stops the run with
the offending input saved by libFuzzer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for tests.equivalence
from tests.equivalence import ENVELOPE_TOPICS, typed  # noqa: E402

with atheris.instrument_imports():
    from autocore._fast import _envelope_py

from autocore import _fast

TOPICS = ENVELOPE_TOPICS

COMPILED = _fast.load(_fast.CYTHON)
PURE = _fast.load(_fast.PYTHON)
COMPILED_VALIDATOR = COMPILED.Validator()
PURE_VALIDATOR = PURE.Validator()
COMPILED_TOPICS = [COMPILED.parse_topic(t) for t in TOPICS]
PURE_TOPICS = [PURE.parse_topic(t) for t in TOPICS]
assert PURE.Validator is _envelope_py.Validator


def test_one_input(data: bytes) -> None:
    if not data:
        return
    which = data[0] % len(TOPICS)
    payload = data[1:]
    compiled = COMPILED_VALIDATOR.validate(COMPILED_TOPICS[which], payload)
    pure = PURE_VALIDATOR.validate(PURE_TOPICS[which], payload)
    if compiled.as_tuple() != pure.as_tuple() or (
        type(pure).__name__ == "Message" and typed(compiled.data) != typed(pure.data)
    ):
        raise AssertionError(
            f"builds differ on {TOPICS[which]} {payload!r}:\n{compiled!r}\n{pure!r}"
        )


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
