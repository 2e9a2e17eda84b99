"""EngineSpec and the process-wide engine registry: lazy, cached by key, thread-safe."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qllm_core.config import QLLMConfig
from qllm_core.errors import ConfigError
from qllm_core.spec import EngineSpec
from qllm_integrations import engines


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[EngineSpec]]:
    """Replace the loader by a slow fake; yields the specs it was called with."""
    seen: list[EngineSpec] = []

    def fake_load(spec: EngineSpec) -> object:
        seen.append(spec)
        time.sleep(0.05)
        return object()

    engines.clear_engines()
    monkeypatch.setattr(engines, "_load", fake_load)
    yield seen
    engines.clear_engines()


def test_same_key_shares_one_engine(loads: list[EngineSpec]) -> None:
    config = QLLMConfig(n_local=512, exec_block_size=256)
    first = engines.get_engine(EngineSpec("some/model", config=config, device="cpu"))
    again = engines.get_engine(
        EngineSpec("some/model", config=QLLMConfig(n_local=512, exec_block_size=256), device="cpu")
    )
    assert first is again
    assert len(loads) == 1


def test_equivalent_specs_share_one_engine(loads: list[EngineSpec]) -> None:
    default = engines.get_engine()
    assert engines.get_engine(EngineSpec(preset="smollm2")) is default
    assert engines.get_engine(EngineSpec(config=QLLMConfig.preset("smollm2"))) is default
    assert len(loads) == 1


def test_each_part_of_the_key_matters(loads: list[EngineSpec]) -> None:
    base = engines.get_engine(EngineSpec())
    others = [
        engines.get_engine(EngineSpec("other")),
        engines.get_engine(EngineSpec(config=QLLMConfig())),
        engines.get_engine(EngineSpec(overrides={"topk": 2})),
        engines.get_engine(EngineSpec(device="cpu")),
        engines.get_engine(EngineSpec(dtype="float32")),
    ]
    assert len({id(e) for e in [base, *others]}) == 6
    assert len(loads) == 6
    assert engines.get_engine(EngineSpec()) is base  # all six stay cached, none reloaded
    assert len(loads) == 6


def test_paths_are_normalized(loads: list[EngineSpec], tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    a = engines.get_engine(EngineSpec(str(model_dir)))
    b = engines.get_engine(EngineSpec(str(tmp_path / "." / "model") + "/"))
    assert a is b
    assert loads[0].key()[0] == str(model_dir.resolve())
    assert engines.get_engine(EngineSpec(dtype="torch.float32")) is engines.get_engine(
        EngineSpec(dtype="float32")
    )


def test_concurrent_first_use_loads_once(loads: list[EngineSpec]) -> None:
    results: list[object] = []
    barrier = threading.Barrier(8)

    def use() -> None:
        barrier.wait()
        results.append(engines.get_engine(EngineSpec("shared")))

    threads = [threading.Thread(target=use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1
    assert len({id(r) for r in results}) == 1


def test_clear_engines_forgets(loads: list[EngineSpec]) -> None:
    first = engines.get_engine(EngineSpec("x"))
    engines.clear_engines()
    assert engines.get_engine(EngineSpec("x")) is not first
    assert len(loads) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dtype": "float33"}, "dtype 'float33'"),
        ({"preset": "nope"}, "unknown preset 'nope'"),
        ({"preset": "llama3", "config": QLLMConfig()}, "not both"),
        ({"overrides": {"topk": 0}}, "topk"),
    ],
)
def test_spec_is_validated_on_construction(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EngineSpec(**kwargs)


def test_spec_resolves_the_config() -> None:
    assert EngineSpec().resolved_config() == QLLMConfig.default_for(None)
    assert EngineSpec("some/model").resolved_config() == QLLMConfig()
    assert EngineSpec(preset="llama3", overrides={"topk": 4}).resolved_config() == (
        QLLMConfig.preset("llama3", topk=4)
    )
    assert str(EngineSpec(dtype="bfloat16").torch_dtype()) == "torch.bfloat16"
    assert EngineSpec().torch_dtype() is None
