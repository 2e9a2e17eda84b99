"""Read once, ask many: document memories, their persistence and the engine's cache (tiny model)."""

from __future__ import annotations

import json

import pytest
import torch

from qllm_core import (
    ConfigError,
    DocumentMemory,
    InputTooLongError,
    MemoryFileError,
)
from qllm_core.answering.reread import SEPARATOR, Passage, reread_ids
from qllm_core.inputs.prompt import build_document_prompt, build_prompt, encode_text
from qllm_core.memory.cache import MemoryCache
from qllm_core.memory.request import RequestMemory, RequestPlan
from qllm_core.models.forward import NativeForward

QUESTION = "What is the colour number of item 42?"


def aligned_document(tokenizer, multiple: int) -> str:
    """A document whose prompt head + text is a multiple of ``multiple`` tokens long."""
    words = [f"Item {i} of the list is the colour number {i * 7 % 13}." for i in range(40)]
    document = " ".join(words)
    while len(build_document_prompt(tokenizer, document).input_ids) % multiple:
        document += " ."
    return document


@pytest.fixture
def engine(tiny_engine):
    """The tiny engine, its question given no retrieval weight."""
    tiny_engine.config = tiny_engine.config.replace(question_weight=0.0)
    return tiny_engine


def layer_states(memory: DocumentMemory) -> dict[str, torch.Tensor]:
    assert isinstance(memory.state, RequestMemory)
    return {
        f"{i}.{name}": tensor.clone()
        for i, layer in memory.state.layers.items()
        for name, tensor in layer.state().items()
    }


def test_answer_from_memory_equals_reading_the_whole_prompt(engine, tokenizer):
    """Same tokens, same logits: prefix from memory + question == one read of the prompt."""
    document = aligned_document(tokenizer, engine.config.exec_block_size)
    memory = engine.read(document)
    assert memory.mode == "qllm" and len(memory.state.layers) == 2
    assert memory.tokens > engine.config.n_local + engine.config.n_init  # blocks were made
    layout = memory.prompt.with_question(tokenizer, QUESTION)
    plan = RequestPlan(layout.question_span, record_from=layout.question_span[1])

    fresh = engine.new_forward(engine.config, plan)
    expected = engine.pipeline.prefill(fresh, layout.input_ids, engine.config)
    forked = memory.fork(plan).forward(engine.model, engine.attached)
    got = forked(layout.input_ids[memory.tokens :])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    reference = engine.generate(
        layout.input_ids, question_span=layout.question_span, max_new_tokens=12
    )
    answer = engine.answer(memory, QUESTION, max_new_tokens=12)
    assert answer.text == reference.text
    assert answer.stats.memory_tokens == memory.tokens
    assert answer.stats.tokens_read == len(layout.input_ids) - memory.tokens


def test_asking_leaves_the_memory_unchanged(tiny_engine, tokenizer):
    document = aligned_document(tokenizer, 1) * 2
    memory = tiny_engine.read(document)
    before = layer_states(memory)
    first = tiny_engine.answer(memory, QUESTION, max_new_tokens=24)
    tiny_engine.answer(memory, "Which item has colour number 3?", max_new_tokens=24)
    second = tiny_engine.answer(memory, QUESTION, max_new_tokens=24)
    after = layer_states(memory)
    assert before.keys() == after.keys()
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=0, msg=name)
    assert first.text == second.text


def test_full_memory_equals_full_attention_over_the_prompt(tiny_engine, tokenizer):
    document = aligned_document(tokenizer, 1)
    memory = tiny_engine.read(document, mode="full")
    layout = memory.prompt.with_question(tokenizer, QUESTION)
    expected = NativeForward(tiny_engine.model)(layout.input_ids)
    step = memory.fork(RequestPlan(None, 0)).forward(tiny_engine.model, tiny_engine.attached)
    torch.testing.assert_close(step(layout.input_ids[memory.tokens :]), expected)
    answer = tiny_engine.answer(memory, QUESTION, max_new_tokens=10)
    reference = tiny_engine.generate(layout.input_ids, mode="full", max_new_tokens=10)
    assert answer.text == reference.text
    assert tiny_engine.answer(memory, QUESTION, max_new_tokens=10).text == answer.text


def test_auto_reads_a_short_document_with_full_attention(tiny_engine, tokenizer):
    tiny_engine.config = tiny_engine.config.replace(mode="auto", full_attention_max_tokens=1000)
    assert tiny_engine.read("A short note: the code is 7.").mode == "full"
    document = aligned_document(tokenizer, 1)  # 600-700 tokens: no room for QUESTION_ROOM
    assert tiny_engine.read(document).mode == "qllm"


def test_full_memory_refuses_a_question_past_the_window(tiny_engine, tokenizer):
    tiny_engine.config = tiny_engine.config.replace(full_attention_max_tokens=1200)
    document = aligned_document(tokenizer, 1)
    memory = tiny_engine.read(document, mode="full")
    with pytest.raises(InputTooLongError, match="mode='qllm'"):
        tiny_engine.answer(memory, QUESTION, max_new_tokens=1200)


def test_mode_cannot_change_for_a_memory(tiny_engine):
    memory = tiny_engine.read("Some text to remember. " * 5)
    with pytest.raises(ConfigError, match="read the document again"):
        tiny_engine.answer(memory, QUESTION, mode="full")


def test_reread_from_memory_keeps_the_question_passages(tiny_engine, tokenizer):
    tiny_engine.config = tiny_engine.config.replace(reread_tokens=256)
    document = aligned_document(tokenizer, 1) * 2
    memory = tiny_engine.read(document)
    answer = tiny_engine.answer(memory, QUESTION, max_new_tokens=5)
    assert 0 < answer.stats.reread_tokens <= 256
    assert answer.stats.retrieved_blocks  # the passages, with document char spans
    assert all(b.char_start is not None for b in answer.stats.retrieved_blocks)


def test_reread_from_memory_of_the_whole_document_equals_the_per_question_full_read(tiny_engine):
    """A budget covering the document re-reads the per-question prompt (question first)."""
    tiny_engine.config = tiny_engine.config.replace(reread_tokens=4096)
    document = "Item 42 is blue. " * 60
    answer = tiny_engine.answer(tiny_engine.read(document, mode="qllm"), QUESTION, max_new_tokens=8)
    full = tiny_engine.answer(document, QUESTION, max_new_tokens=8, mode="full")
    assert answer.stats.reread_tokens == tiny_engine.count_tokens(document)
    assert answer.text == full.text


def test_reread_from_memory_reads_its_passages_in_the_per_question_prompt(tiny_engine, tokenizer):
    """Exactly full attention over the per-question prompt holding only the chosen passages."""
    tiny_engine.config = tiny_engine.config.replace(reread_tokens=160, reread_margin=4)
    document = aligned_document(tokenizer, 1) * 2
    answer = tiny_engine.answer(tiny_engine.read(document), QUESTION, max_new_tokens=8)
    memory_start = build_document_prompt(tokenizer, document).document_span[0]
    layout = build_prompt(tokenizer, document, QUESTION)
    shift = layout.document_span[0] - memory_start
    spans = sorted(
        (b.token_start + shift, b.token_end + shift) for b in answer.stats.retrieved_blocks
    )
    passages = [Passage(start, end, 0.0) for start, end in spans]
    assert 0 < answer.stats.reread_tokens == sum(p.end - p.start for p in passages) <= 160
    separator = encode_text(tokenizer, SEPARATOR)
    ids = reread_ids(layout.input_ids, passages, layout.document_span, separator)
    reference = tiny_engine.generate(ids, mode="full", max_new_tokens=8)
    assert answer.text == reference.text


@pytest.mark.parametrize("mode", ["qllm", "full"])
def test_saved_and_loaded_memory_gives_the_same_answer(tiny_engine, tokenizer, tmp_path, mode):
    document = aligned_document(tokenizer, 1) * 2
    memory = tiny_engine.read(document, mode=mode)
    expected = tiny_engine.answer(memory, QUESTION, max_new_tokens=20)
    memory.save(tmp_path / "memory")
    loaded = tiny_engine.load_memory(tmp_path / "memory")
    assert loaded.mode == mode and loaded.tokens == memory.tokens
    assert loaded.prompt == memory.prompt
    assert loaded.document_sha256 == memory.document_sha256
    assert loaded.identity == memory.identity == tiny_engine.identity
    assert loaded.nbytes == memory.nbytes > 0
    got = tiny_engine.answer(loaded, QUESTION, max_new_tokens=20)
    assert got.text == expected.text
    saved, restored = memory.state.layer_states(), loaded.state.layer_states()
    assert len(saved) == len(restored) == tiny_engine.model.config.num_hidden_layers
    for before, after in zip(saved, restored, strict=True):
        assert before.keys() == after.keys()
        for name, tensor in before.items():
            torch.testing.assert_close(after[name], tensor, rtol=0, atol=0, msg=name)
    again = DocumentMemory.load(tmp_path / "memory", tiny_engine)  # the same, as a classmethod
    assert tiny_engine.answer(again, QUESTION, max_new_tokens=20).text == expected.text


@pytest.fixture
def saved(tiny_engine, tokenizer, tmp_path):
    path = tmp_path / "memory"
    tiny_engine.read(aligned_document(tokenizer, 1) * 2).save(path)
    return path


def edit_manifest(path, **changes):
    manifest = json.loads((path / "memory.json").read_text())
    manifest.update(changes)
    (path / "memory.json").write_text(json.dumps(manifest))


def test_load_refuses_a_missing_memory(tiny_engine, tmp_path):
    with pytest.raises(MemoryFileError, match="memory.json is missing"):
        DocumentMemory.load(tmp_path, tiny_engine)


def test_load_refuses_an_unknown_version(tiny_engine, saved):
    edit_manifest(saved, version=99)
    with pytest.raises(MemoryFileError, match="format version 99"):
        DocumentMemory.load(saved, tiny_engine)


def test_load_refuses_a_manifest_that_is_not_json(tiny_engine, saved):
    (saved / "memory.json").write_text("{not json")
    with pytest.raises(MemoryFileError, match="not valid JSON"):
        DocumentMemory.load(saved, tiny_engine)


def test_load_refuses_a_truncated_file(tiny_engine, saved):
    layer = saved / "layer-001.safetensors"
    layer.write_bytes(layer.read_bytes()[:-100])
    with pytest.raises(MemoryFileError, match="truncated or edited"):
        DocumentMemory.load(saved, tiny_engine)


def test_load_refuses_an_edited_file(tiny_engine, saved):
    layer = saved / "layer-000.safetensors"
    data = bytearray(layer.read_bytes())
    data[-5] ^= 0xFF
    layer.write_bytes(bytes(data))
    with pytest.raises(MemoryFileError, match="truncated or edited"):
        DocumentMemory.load(saved, tiny_engine)


def test_load_refuses_a_missing_layer_file(tiny_engine, saved):
    (saved / "layer-001.safetensors").unlink()
    with pytest.raises(MemoryFileError, match="is missing"):
        DocumentMemory.load(saved, tiny_engine)


def _config_of(path):
    from qllm_core import QLLMConfig

    return QLLMConfig(**json.loads((path / "memory.json").read_text())["config"])


def test_memory_for_reuses_the_memory_of_the_same_document(tiny_engine):
    document = "The vault code is 4417. " * 20
    first, reused = tiny_engine.memory_for(document)
    assert not reused
    again, reused = tiny_engine.memory_for(document)
    assert reused and again is first
    _, reused = tiny_engine.memory_for(document + " More.")
    assert not reused
    tiny_engine.config = tiny_engine.config.replace(topk=3)
    _, reused = tiny_engine.memory_for(document)
    assert not reused  # another config reads again


class _Sized:
    def __init__(self, nbytes):
        self.nbytes = nbytes


def test_memory_cache_evicts_the_least_recently_used_beyond_its_bytes():
    cache = MemoryCache(max_bytes=100)
    cache.put("a", _Sized(40))
    cache.put("b", _Sized(40))
    assert cache.get("a") is not None  # "b" is now the least recently used
    cache.put("c", _Sized(40))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    cache.put("huge", _Sized(101))  # larger than the bound: not kept, nothing evicted
    assert cache.get("huge") is None and len(cache) == 2 and cache.nbytes == 80
    off = MemoryCache(max_bytes=0)
    off.put("a", _Sized(1))
    assert len(off) == 0
