"""Validation of request arguments that are not text: token ids and question spans.

Text is checked by :func:`qllm_core.inputs.documents.check_text`, decoding options by
:meth:`qllm_core.options.GenerationOptions.from_kwargs`; each raises a named
:class:`~qllm_core.errors.QLLMError` that says how to fix the input.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedModel

from ..errors import EmptyInputError, InvalidInputError


def vocab_size(model: PreTrainedModel) -> int:
    """Rows of the input embedding: every valid token id is below it."""
    embeddings = model.get_input_embeddings()
    weight = getattr(embeddings, "weight", None)
    if isinstance(weight, torch.Tensor):
        return int(weight.shape[0])
    return int(model.config.vocab_size)


def token_ids(input_ids: object, vocab_size: int) -> list[int]:
    """``input_ids`` (a sequence of ints or an integer tensor) as a checked list of ids."""
    if isinstance(input_ids, torch.Tensor):
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise InvalidInputError(f"input_ids must hold integers, got a {input_ids.dtype} tensor")
        values: list[Any] = input_ids.flatten().tolist()
    elif isinstance(input_ids, str | bytes | bytearray) or not isinstance(input_ids, Sequence):
        raise InvalidInputError(
            f"input_ids must be a sequence of token ids or a tensor, got "
            f"{type(input_ids).__name__}; pass text to answer()/stream() instead"
        )
    else:
        values = list(input_ids)
    if not values:
        raise EmptyInputError("input_ids is empty; pass at least one token")
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise InvalidInputError(
                f"input_ids[{i}] must be an int token id, got {type(value).__name__} {value!r}"
            )
        if not 0 <= int(value) < vocab_size:
            raise InvalidInputError(
                f"input_ids[{i}] = {value} is not a token id of this model (0 to "
                f"{vocab_size - 1}); encode text with the engine's tokenizer"
            )
    return [int(v) for v in values]


def question_span(span: object, length: int) -> tuple[int, int] | None:
    """``question_span`` checked against a prompt of ``length`` tokens."""
    if span is None:
        return None
    ok = (
        isinstance(span, tuple | list)
        and len(span) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in span)
    )
    if not ok or not 0 <= span[0] < span[1] <= length:  # type: ignore[index]
        raise InvalidInputError(
            f"question_span {span!r} must be (start, end) with 0 <= start < end <= {length}, "
            "the question's token positions in input_ids"
        )
    return int(span[0]), int(span[1])  # type: ignore[index]
