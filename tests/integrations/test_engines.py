"""The process-wide engine registry: lazy, cached by key, thread-safe."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qllm_core.config import QLLMConfig
from qllm_core.errors import ConfigError
from qllm_integrations import engines


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Replace the loader by a slow fake; yields the keys it was called with."""
    seen: list[Any] = []

    def fake_load(key: Any) -> object:
        seen.append(key)
        time.sleep(0.05)
        return object()

    engines.clear_engines()
    monkeypatch.setattr(engines, "_load", fake_load)
    yield seen
    engines.clear_engines()


def test_same_key_shares_one_engine(loads: list[Any]) -> None:
    config = QLLMConfig(n_local=512, exec_block_size=256)
    first = engines.get_engine("some/model", config=config, device="cpu")
    again = engines.get_engine(
        "some/model", config=QLLMConfig(n_local=512, exec_block_size=256), device="cpu"
    )
    assert first is again
    assert len(loads) == 1


def test_each_part_of_the_key_matters(loads: list[Any]) -> None:
    base = engines.get_engine(None)
    others = [
        engines.get_engine("other"),
        engines.get_engine(None, config=QLLMConfig()),
        engines.get_engine(None, device="cpu"),
        engines.get_engine(None, dtype="float32"),
    ]
    assert len({id(e) for e in [base, *others]}) == 5
    assert len(engines.cached_engines()) == 5


def test_paths_are_normalized(loads: list[Any], tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    a = engines.get_engine(str(model_dir))
    b = engines.get_engine(str(tmp_path / "." / "model") + "/")
    assert a is b
    assert loads[0][0] == str(model_dir.resolve())
    assert engines.get_engine(None, dtype="torch.float32") is engines.get_engine(
        None, dtype="float32"
    )


def test_concurrent_first_use_loads_once(loads: list[Any]) -> None:
    results: list[object] = []
    barrier = threading.Barrier(8)

    def use() -> None:
        barrier.wait()
        results.append(engines.get_engine("shared"))

    threads = [threading.Thread(target=use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1
    assert len({id(r) for r in results}) == 1


def test_clear_engines_forgets(loads: list[Any]) -> None:
    first = engines.get_engine("x")
    engines.clear_engines()
    assert engines.get_engine("x") is not first
    assert len(loads) == 2


def test_unknown_dtype_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="dtype"):
        engines._torch_dtype("float33")
    assert str(engines._torch_dtype("bfloat16")) == "torch.bfloat16"
