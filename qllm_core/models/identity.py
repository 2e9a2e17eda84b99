"""A model's and tokenizer's identity: what a saved document memory must match."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from transformers import PreTrainedModel


def model_identity(model: PreTrainedModel, tokenizer: Any, name: str) -> dict[str, str]:
    """Names and hashes of a model and its tokenizer.

    ``model`` (``name``), ``model_sha256`` (the config, and the weights' names, shapes and
    dtypes) and ``tokenizer_sha256`` (the tokenizer's full definition and chat template).
    """
    model_config = model.config.to_dict()
    model_config.pop("_name_or_path", None)
    model_config.pop("transformers_version", None)
    shapes = [(key, list(p.shape), str(p.dtype)) for key, p in model.state_dict().items()]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else repr(tokenizer.get_vocab())
    return {
        "model": name,
        "model_sha256": sha256_json({"config": model_config, "weights": shapes}),
        "tokenizer_sha256": sha256_json(
            {"definition": definition, "chat_template": tokenizer.chat_template}
        ),
    }


def sha256_json(value: Any) -> str:
    """SHA-256 of ``value`` as canonical JSON (sorted keys), hex."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
