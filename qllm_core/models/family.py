"""Model families: what the engine reads from a model, in one place per family.

The engine drives a RoPE decoder through transformers' own seams, so the families it
runs share one shape: a base model with a ``rotary_emb`` module, attention layers that
call the attention registry, and a config naming its layers, heads and head size. A
:class:`ModelFamily` holds where those live for one family; :func:`family_of` finds a
model's. Families that follow the common shape share :data:`ROPE_DECODER`; adding one
whose names differ is one entry in :data:`FAMILIES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from ..errors import UnsupportedModelError


class KVShape(NamedTuple):
    """Per token: ``layers`` x ``kv_heads`` keys and values of ``head_dim`` features."""

    layers: int
    kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class ModelFamily:
    """Where one family keeps what the engine needs."""

    name: str
    model_types: tuple[str, ...]
    """``config.model_type`` values of the family."""
    rotary_attr: str = "rotary_emb"
    """The base model's rotary module (cos/sin for positions)."""
    kv_heads_field: str = "num_key_value_heads"
    """Config field of the key/value heads (absent: as many as the attention heads)."""

    def base_model(self, model: PreTrainedModel) -> nn.Module:
        """The decoder stack that holds the rotary module; raises when there is none."""
        base = getattr(model, model.base_model_prefix, None)
        if base is None or not isinstance(getattr(base, self.rotary_attr, None), nn.Module):
            raise UnsupportedModelError(
                f"{type(model).__name__} has no `{model.base_model_prefix}.{self.rotary_attr}` "
                "module: the engine drives RoPE decoder models (Llama, Mistral, Qwen2/3, "
                "Phi-3, ...) only"
            )
        return base

    def kv_shape(self, config: PretrainedConfig) -> KVShape:
        """Layers, key/value heads and head size, from the (text) config."""
        text = config.get_text_config()
        heads = text.num_attention_heads
        kv_heads = getattr(text, self.kv_heads_field, None) or heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        return KVShape(text.num_hidden_layers, kv_heads, head_dim)


ROPE_DECODER = ModelFamily("rope-decoder", ("llama", "mistral", "qwen2", "qwen3", "phi3"))
"""The common shape; the model types listed are those the tests drive (tiny models)."""
FAMILIES: tuple[ModelFamily, ...] = (ROPE_DECODER,)


def family_of(config: PretrainedConfig) -> ModelFamily:
    """The family of a model's config; :data:`ROPE_DECODER` for a type no entry lists."""
    model_type = getattr(config, "model_type", "")
    return next((f for f in FAMILIES if model_type in f.model_types), ROPE_DECODER)


def eos_token_ids(model: PreTrainedModel, tokenizer: Any) -> frozenset[int]:
    """Tokens that end an answer: the generation config's, the model config's, the tokenizer's."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(v) for v in value)
    return frozenset(ids)
