"""Tiny random-weight causal LMs of several architectures, built from configs (no downloads)."""

from __future__ import annotations

import torch
import transformers

from qllm_core import QLLMConfig

TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
)
ARCHITECTURES: dict[str, tuple[str, str, dict]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
    # partial rotary: only half of each head is rotated
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"partial_rotary_factor": 0.5, "pad_token_id": 0}),
}
TINY_ENGINE_CONFIG = QLLMConfig(
    mode="qllm",
    n_init=4,
    n_local=64,
    block_size=16,
    topk=2,
    repr_topk=2,
    exec_block_size=32,
    max_cached_blocks=4,
    prefill_chunk_size=128,
)


def make_tiny_model(
    arch: str = "llama", *, vocab_size: int = 256, seed: int = 0
) -> transformers.PreTrainedModel:
    """A random-weight causal LM of ``arch`` with two layers and hidden size 64."""
    config_name, model_name, extra = ARCHITECTURES[arch]
    config = getattr(transformers, config_name)(vocab_size=vocab_size, **TINY, **extra)
    torch.manual_seed(seed)
    return getattr(transformers, model_name)(config).eval()
