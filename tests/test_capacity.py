"""Requests whose keys and values cannot be held are refused before reading, with the fixes."""

from __future__ import annotations

import pytest
import torch
from test_engine_api import DOC, QUESTION

from qllm_core import InsufficientMemoryError, QLLMEngine
from qllm_core.errors import ConfigError
from qllm_core.memory import capacity


def _engine(tiny_engine, **changes):
    config = tiny_engine.config.replace(**changes)
    return QLLMEngine(tiny_engine.model, tiny_engine.tokenizer, config=config, progress=False)


def test_kv_bytes_per_token_counts_every_layer_head_and_dtype(tiny_engine):
    config = tiny_engine.model.config  # 2 layers, 2 key heads of 16 dims
    assert capacity.kv_bytes_per_token(config, torch.float32) == 2 * 2 * 2 * 16 * 4
    assert capacity.kv_bytes_per_token(config, torch.bfloat16) == 2 * 2 * 2 * 16 * 2


def test_request_over_the_free_ram_is_refused_up_front(tiny_engine, monkeypatch):
    tokens = tiny_engine.count_tokens(DOC)
    need = tokens * capacity.kv_bytes_per_token(tiny_engine.model.config, torch.float32)
    monkeypatch.setattr(capacity, "available_ram_bytes", lambda: need // 2)
    with pytest.raises(InsufficientMemoryError, match="offload_dtype='float16'.*offload_dir"):
        tiny_engine.answer(DOC, QUESTION, max_new_tokens=2)
    # streaming keeps only a window; full keeps them on the device (here RAM as well)
    assert tiny_engine.answer(DOC, QUESTION, mode="streaming", max_new_tokens=2).text is not None
    with pytest.raises(InsufficientMemoryError, match="use mode 'qllm'"):
        tiny_engine.answer(DOC, QUESTION, mode="full", max_new_tokens=2)


def test_the_check_counts_the_offload_dtype(tiny_engine, monkeypatch):
    tokens = tiny_engine.count_tokens(DOC) + 64  # the prompt's template and the answer
    need_fp32 = tokens * capacity.kv_bytes_per_token(tiny_engine.model.config, torch.float32)
    monkeypatch.setattr(capacity, "available_ram_bytes", lambda: need_fp32 * 3 // 4)
    with pytest.raises(InsufficientMemoryError):
        tiny_engine.answer(DOC, QUESTION, max_new_tokens=2)
    half = _engine(tiny_engine, offload_dtype="float16")
    assert half.answer(DOC, QUESTION, max_new_tokens=2).stats.tokens_read > 0


def test_disk_tier_is_checked_against_its_disk(tiny_engine, tmp_path, monkeypatch):
    monkeypatch.setattr(capacity, "available_ram_bytes", lambda: 0)  # RAM is not where they go
    on_disk = _engine(tiny_engine, offload_dir=str(tmp_path))
    ram = _engine(tiny_engine)
    with pytest.raises(InsufficientMemoryError, match="RAM"):
        ram.answer(DOC, QUESTION, max_new_tokens=2)
    answer = on_disk.answer(DOC, QUESTION, max_new_tokens=2)
    monkeypatch.setattr(capacity.shutil, "disk_usage", lambda _: type("U", (), {"free": 10}))
    with pytest.raises(InsufficientMemoryError, match="free disk space in offload_dir"):
        on_disk.answer(DOC, QUESTION, max_new_tokens=2)
    assert answer.stats.tokens_read > 0


def test_disk_tier_gives_the_same_answer_as_ram(tiny_engine, tmp_path):
    ram = tiny_engine.answer(DOC, QUESTION, max_new_tokens=8)
    disk = _engine(tiny_engine, offload_dir=str(tmp_path)).answer(DOC, QUESTION, max_new_tokens=8)
    assert disk.text == ram.text
    assert disk.stats.retrieved_blocks == ram.stats.retrieved_blocks
    assert list(tmp_path.iterdir()) == []


def test_offload_dir_that_is_not_a_directory_is_a_config_error(tiny_engine, tmp_path):
    engine = _engine(tiny_engine, offload_dir=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="offload_dir .* not a writable directory"):
        engine.answer(DOC, QUESTION, max_new_tokens=2)


def _fake_cgroup(tmp_path, monkeypatch, membership, files):
    proc = tmp_path / "self-cgroup"
    proc.write_text(membership)
    for name, text in files.items():
        path = tmp_path / "fs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.setattr(capacity, "_CGROUP", proc)
    monkeypatch.setattr(capacity, "_CGROUP_ROOT", tmp_path / "fs")
    monkeypatch.setattr(capacity, "_meminfo_available", lambda: 64 * 2**30)


def test_a_cgroup_v2_limit_caps_the_available_ram(tmp_path, monkeypatch):
    gib = 2**30
    _fake_cgroup(
        tmp_path,
        monkeypatch,
        "0::/box/job\n",
        {
            "cgroup.controllers": "memory",
            "box/memory.max": str(4 * gib),  # the container's limit, on the parent
            "box/memory.current": str(3 * gib),
            "box/memory.stat": f"anon {2 * gib}\ninactive_file {gib // 2}\n",
            "box/job/memory.max": "max",
            "box/job/memory.current": str(3 * gib),
            "box/job/memory.stat": "inactive_file 0\n",
        },
    )
    assert capacity.available_ram_bytes() == gib + gib // 2


def test_a_cgroup_v1_limit_caps_the_available_ram(tmp_path, monkeypatch):
    gib = 2**30
    _fake_cgroup(
        tmp_path,
        monkeypatch,
        "4:memory:/job\n1:cpu:/job\n",
        {
            "memory/job/memory.limit_in_bytes": str(3 * gib),
            "memory/job/memory.usage_in_bytes": str(2 * gib),
            "memory/job/memory.stat": f"cache 100\ntotal_inactive_file {gib}\n",
            "memory/memory.limit_in_bytes": "9223372036854771712",  # v1's "no limit"
            "memory/memory.usage_in_bytes": str(50 * gib),
            "memory/memory.stat": "total_inactive_file 0\n",
        },
    )
    assert capacity.available_ram_bytes() == 2 * gib


def test_no_cgroup_limit_leaves_meminfo(tmp_path, monkeypatch):
    _fake_cgroup(tmp_path, monkeypatch, "0::/\n", {"cgroup.controllers": "", "memory.max": "max"})
    assert capacity.available_ram_bytes() == 64 * 2**30
