"""The engine against exact references: the model's own attention and one-shot prefill."""

from __future__ import annotations

import pytest
import torch
import transformers
from tiny_models import ARCHITECTURES, TINY, TINY_ENGINE_CONFIG, make_tiny_model
from transformers import DynamicCache, StaticCache

from qllm_core import QLLMConfig, QLLMEngine
from qllm_core.memory.request import RequestPlan
from qllm_core.models.forward import NativeForward

ARCHS = sorted(ARCHITECTURES)


class _NoTokenizer:
    eos_token_id = None


def _engine(arch: str, **config) -> QLLMEngine:
    return QLLMEngine(make_tiny_model(arch), _NoTokenizer(), config=QLLMConfig(**config))


def _feed(forward, ids: list[int], chunks: list[int]) -> torch.Tensor:
    """Feed ``ids`` in pieces; return each piece's last logits stacked."""
    out, start = [], 0
    for size in chunks:
        out.append(forward(ids[start : start + size]))
        start += size
    return torch.stack(out)


@pytest.mark.parametrize("arch", ARCHS)
def test_window_covering_input_equals_model_attention_prefill_and_decode(arch):
    # n_local >= input length: every key is local at its true position, so the engine
    # must reproduce the model's own attention exactly, in prefill and in decoding.
    engine = _engine(
        arch,
        n_init=4,
        n_local=256,
        block_size=16,
        topk=2,
        exec_block_size=32,
        prefill_chunk_size=64,
    )
    ids = torch.randint(0, 256, (157,), generator=torch.Generator().manual_seed(1)).tolist()
    chunks = [64, 64, 23, 1, 1, 1, 1, 1, 1]  # chunked prefill, then decoding
    with torch.no_grad():
        ours = _feed(engine.new_forward(), ids, chunks)
        native = _feed(engine.new_forward(engine.config.replace(mode="full")), ids, chunks)
    torch.testing.assert_close(ours, native, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_model_outside_engine_is_unchanged(arch):
    model = make_tiny_model(arch)
    ids = torch.arange(40)[None] % 256
    with torch.no_grad():
        before = model(ids).logits
        QLLMEngine(model, _NoTokenizer())
        after = model(ids).logits
    torch.testing.assert_close(before, after, atol=0, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3"])
def test_chunked_prefill_equals_one_shot(arch):
    engine = QLLMEngine(make_tiny_model(arch), _NoTokenizer(), config=TINY_ENGINE_CONFIG)
    ids = torch.randint(0, 256, (301,), generator=torch.Generator().manual_seed(2)).tolist()
    plan = RequestPlan(question_span=(5, 12), record_from=0)
    with torch.no_grad():
        one = engine.new_forward(plan=plan)
        one_shot = one(ids)
        chunked = engine.new_forward(plan=plan)
        for start in (0, 96, 160):
            last = chunked(ids[start : {0: 96, 96: 160, 160: 301}[start]])
    torch.testing.assert_close(last, one_shot, atol=1e-6, rtol=1e-5)
    assert one.memory.counts == chunked.memory.counts
    # the last execution block starts at 288; tokens before 288 - 64 + 1 have left the window
    assert len(one.memory.layers[0].store) == (288 - 64 + 1 - 4) // 16


def test_small_window_differs_from_full_attention():
    # guards the test above: with memory in play the result is not the model's own
    engine = _engine(
        "llama",
        n_init=4,
        n_local=32,
        block_size=8,
        topk=1,
        exec_block_size=16,
        prefill_chunk_size=64,
        max_cached_blocks=2,
    )
    ids = torch.randint(0, 256, (200,), generator=torch.Generator().manual_seed(3)).tolist()
    with torch.no_grad():
        ours = engine.new_forward()(ids)
        native = engine.new_forward(engine.config.replace(mode="full"))(ids)
    assert not torch.allclose(ours, native, atol=1e-3)


@pytest.mark.parametrize("mode", ["qllm", "infllm", "streaming"])
def test_modes_run_past_the_trained_context(mode):
    engine = _engine(
        "llama",
        n_init=4,
        n_local=32,
        block_size=8,
        topk=2,
        exec_block_size=16,
        prefill_chunk_size=64,
        max_cached_blocks=4,
    )
    engine.model.config.max_position_embeddings = 64
    ids = (torch.arange(999) % 251).tolist()
    with torch.no_grad():
        forward = engine.new_forward(
            engine.config.replace(mode=mode), RequestPlan(question_span=(2, 9), record_from=900)
        )
        logits = forward(ids)
    assert torch.isfinite(logits).all()
    layer = forward.memory.layers[0]
    assert layer.init_k.shape[1] == 4
    assert len(layer.recent) <= 32 + 8 + 16
    if mode == "streaming":
        assert len(layer.store) == 0 and not forward.memory.counts
    else:
        assert len(layer.store) == (992 - 32 + 1 - 4) // 8  # last exec block starts at 992
        assert forward.memory.counts  # retrievals after record_from were counted
        assert (layer.question is not None) == (mode != "streaming")


@pytest.mark.parametrize("arch", ARCHS)
def test_decoding_into_reserved_buffers_equals_the_dynamic_cache(arch):
    """``NativeForward.reserve``: same logits, step by step, as transformers' DynamicCache."""
    model = make_tiny_model(arch)
    ids = torch.randint(0, 256, (70,), generator=torch.Generator().manual_seed(1)).tolist()
    dynamic, reserved = NativeForward(model), NativeForward(model)
    torch.testing.assert_close(reserved(ids[:60]), dynamic(ids[:60]))
    reserved.reserve(10)
    assert isinstance(reserved.cache, StaticCache)  # every tiny architecture is windowless
    for token in ids[60:]:
        torch.testing.assert_close(reserved([token]), dynamic([token]))


def test_a_sliding_window_cache_is_kept_dynamic():
    """Layers that roll a window of their own are not moved into static buffers."""
    torch.manual_seed(0)
    config = transformers.MistralConfig(vocab_size=256, **TINY, sliding_window=16)
    model = transformers.MistralForCausalLM(config).eval()
    step = NativeForward(model)
    step(list(range(40)))
    step.reserve(4)
    assert isinstance(step.cache, DynamicCache)
    assert step([7]).shape == (256,)
