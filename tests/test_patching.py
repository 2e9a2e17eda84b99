"""Contract test: the transformers behaviour the engine's one seam relies on.

If a transformers upgrade moves where RoPE is applied or changes what an attention
function receives, these fail loudly.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_tiny_model

from qllm_core.models.patching import MEMORY_KWARG, AttachedModel


class _SpyMemory:
    """Records what the attention function hands over; returns zeros."""

    def __init__(self):
        self.calls = []

    def attend(self, layer_idx, q, k, v, scaling):
        self.calls.append((layer_idx, q, k, v, scaling))
        return torch.zeros_like(q)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_attention_receives_unrotated_unrepeated_keys_and_our_kwargs(arch):
    model = make_tiny_model(arch)
    attached = AttachedModel(model)
    ids = torch.arange(11)[None]
    spy = _SpyMemory()
    with torch.no_grad(), attached.qllm():
        model(input_ids=ids, use_cache=False, **{MEMORY_KWARG: spy})
    assert [c[0] for c in spy.calls] == [0, 1]  # module.layer_idx identifies the layer
    _, q, k, v, scaling = spy.calls[0]
    layer = model.model.layers[0]
    attn = layer.self_attn
    assert q.shape == (4, 11, attn.head_dim)  # (heads, q_len, head_dim), batch stripped
    assert k.shape == v.shape == (2, 11, attn.head_dim)  # kv heads, not repeated
    assert scaling == attn.scaling
    with torch.no_grad():
        hidden = layer.input_layernorm(model.model.embed_tokens(ids))
        expected = attn.k_proj(hidden).view(1, 11, -1, attn.head_dim)
        if hasattr(attn, "k_norm"):
            expected = attn.k_norm(expected)
    torch.testing.assert_close(k, expected[0].transpose(0, 1))  # RoPE left to the engine


def test_attach_is_reversible_and_outside_qllm_the_model_is_native():
    model = make_tiny_model("llama")
    rotary = model.model.rotary_emb
    attached = AttachedModel(model)
    assert model.model.rotary_emb is not rotary and attached.rotary is rotary
    with attached.qllm():
        assert model.config._attn_implementation == "quickllama"
    assert model.config._attn_implementation != "quickllama"
    with pytest.raises(RuntimeError, match="without a Q-LLM memory"), attached.qllm():
        model(input_ids=torch.arange(3)[None], use_cache=False)
    assert attached.detach() is model and model.model.rotary_emb is rotary
