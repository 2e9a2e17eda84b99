"""Next-token choice and stop strings."""

from __future__ import annotations

import torch

from qllm_core.sampling import TextAccumulator, next_token


class _CharTokenizer:
    """Token i is the character chr(i)."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def _feed(acc: TextAccumulator, text: str) -> list[str]:
    out = []
    for ch in text:
        out.append(acc.add(ord(ch)))
        if acc.stopped:
            break
    out.append(acc.flush())
    return out


def test_stop_string_cuts_text_and_is_never_emitted_in_part():
    acc = TextAccumulator(_CharTokenizer(), ["END", "\n\n"])
    pieces = _feed(acc, "answer: 42 ENDING")
    assert acc.stopped and acc.text == "answer: 42 "
    assert "".join(pieces) == "answer: 42 "
    assert all("E" not in p for p in pieces)


def test_without_stop_every_character_arrives():
    acc = TextAccumulator(_CharTokenizer(), [])
    pieces = _feed(acc, "héllo")
    assert pieces[:5] == list("héllo") and not acc.stopped


def test_greedy_and_seeded_sampling():
    logits = torch.tensor([0.0, 3.0, 2.9, -5.0])
    assert next_token(logits, temperature=0, top_p=1, generator=None) == 1
    draws = [
        next_token(logits, temperature=1.0, top_p=1.0, generator=torch.Generator().manual_seed(s))
        for s in range(40)
    ]
    assert set(draws) >= {1, 2}
    again = [
        next_token(logits, temperature=1.0, top_p=1.0, generator=torch.Generator().manual_seed(s))
        for s in range(40)
    ]
    assert draws == again
    nucleus = {
        next_token(logits, temperature=1.0, top_p=0.5, generator=torch.Generator().manual_seed(s))
        for s in range(40)
    }
    assert nucleus == {1}  # token 1 alone holds over half the mass
