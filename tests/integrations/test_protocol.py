"""The typed engine boundary: the real engine and the fake both satisfy EngineProtocol.

mypy proves it (``_real_engine_conforms`` in ``qllm_core/protocol.py``, ``_fake_conforms``
in ``fakes.py``); this test runs mypy on the fake, so a drift fails the suite, not only
``make lint``, and checks the members at run time too.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from fakes import FakeEngine

from qllm_core.protocol import EngineProtocol, TextStream

FAKES = Path(__file__).with_name("fakes.py")


def _members(protocol: type) -> set[str]:
    return {
        name
        for name, _ in inspect.getmembers(protocol)
        if not name.startswith("_") or name in ("__iter__", "__enter__", "__exit__")
    }


def test_the_fake_has_every_member_at_run_time(real_tiny_engine: object) -> None:
    fake = FakeEngine()
    for engine in (fake, real_tiny_engine):
        missing = [m for m in _members(EngineProtocol) if not hasattr(engine, m)]
        assert not missing, f"{type(engine).__name__} lacks {missing}"
    stream = fake.stream("a document to read", "a question?")
    assert not [m for m in _members(TextStream) if not hasattr(stream, m)]
    stream.close()


@pytest.mark.slow  # mypy takes half a minute to minutes on a small CPU
def test_mypy_checks_the_fake_against_the_protocol() -> None:
    api = pytest.importorskip("mypy.api")
    out, err, status = api.run([str(FAKES), "--follow-imports=silent"])
    assert status == 0, out + err
