"""Representative keys, the question vector and block retrieval."""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from qllm_core import QLLMConfig
from qllm_core.kernels.rope import RotaryTable
from qllm_core.memory.request import LayerContext, LayerMemory, RequestPlan
from qllm_core.memory.retrieval import question_vector, representative_keys, select_blocks

DIM = 16


class _IdentityRotary(nn.Module):
    """cos = 1, sin = 0 at every position: isolates retrieval from RoPE."""

    def forward(self, x, position_ids):
        shape = (*position_ids.shape, DIM)
        return torch.ones(shape, dtype=x.dtype), torch.zeros(shape, dtype=x.dtype)


def test_representative_keys_average_the_most_attended_tokens_of_each_block():
    keys = torch.randn(2, 8, 4)  # two heads, two blocks of four tokens
    scores = torch.zeros(2, 8)
    scores[0, [1, 2, 6]] = torch.tensor([5.0, 3.0, 1.0])
    scores[1, [0, 2, 5, 7]] = torch.tensor([1.0, 2.0, 4.0, 3.0])
    reps = representative_keys(keys, scores, block_size=4, repr_topk=2)
    assert reps.shape == (2, 2, 4)  # (blocks, heads, head_dim)
    torch.testing.assert_close(reps[0, 0], (keys[0, 1] + keys[0, 2]) / 2)
    torch.testing.assert_close(reps[0, 1], (keys[1, 0] + keys[1, 2]) / 2)
    torch.testing.assert_close(reps[1, 1], (keys[1, 5] + keys[1, 7]) / 2)
    # block 1 of head 0: token 6, then the first of the zero-scored ties
    top = scores[0, 4:].topk(2).indices + 4
    torch.testing.assert_close(reps[1, 0], keys[0, top].mean(dim=0))


def test_question_vector_keeps_best_scored_queries_per_head_and_averages_groups():
    queries = torch.randn(1, 2, 5, 4)  # one key head, a group of two query heads
    scores = torch.tensor([[0.0, 9.0, 1.0, 8.0, 0.5]])
    vec = question_vector(queries, scores, repr_topk=2)
    expected = queries[0, :, [1, 3]].mean(dim=(0, 1))
    torch.testing.assert_close(vec[0], expected)


def test_question_weight_steers_selection():
    reprs = torch.zeros(3, 1, 2)
    reprs[0, 0] = torch.tensor([1.0, 0.0])  # matches the current tokens
    reprs[2, 0] = torch.tensor([0.0, 1.0])  # matches the question
    current, question = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert select_blocks(reprs, current, question, 0.0, topk=1) == [0]  # InfLLM
    assert select_blocks(reprs, current, question, 4.0, topk=1) == [2]  # Q-LLM
    assert select_blocks(reprs, current, None, 4.0, topk=1) == [0]  # no question
    assert select_blocks(reprs, current, question, 4.0, topk=5) == [0, 1, 2]


def _unit(seed: int) -> torch.Tensor:
    v = torch.randn(DIM, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def _layer(mode: str, question_span, *, repr_topk=2) -> LayerMemory:
    config = QLLMConfig(
        mode=mode,
        n_init=4,
        n_local=32,
        block_size=8,
        topk=1,
        repr_topk=repr_topk,
        exec_block_size=16,
        max_cached_blocks=2,
        question_weight=8.0,
    )
    rope = RotaryTable(_IdentityRotary(), device=torch.device("cpu"), dtype=torch.float32)
    plan = RequestPlan(question_span, record_from=96)
    cpu, dtype = torch.device("cpu"), torch.float32
    return LayerMemory(LayerContext(config, plan, rope, cpu, dtype, Counter()), 1, DIM)


def _planted_stream(length=128):
    """Keys: noise, except block 5 (positions 44..51) along `needle` and block 2 along `decoy`.

    Queries: the question (positions 1..3) along `needle`; everything after position 96
    along `decoy`, so the current tokens alone would pick the decoy block.
    """
    gen = torch.Generator().manual_seed(7)
    needle, decoy = _unit(1), _unit(2)
    keys = 0.05 * torch.randn(1, length, DIM, generator=gen)
    queries = 0.05 * torch.randn(2, length, DIM, generator=gen)
    keys[0, 44:52] += 3 * needle
    keys[0, 20:28] += 3 * decoy
    queries[:, 1:4] += 3 * needle
    queries[:, 96:] += 3 * decoy
    values = torch.randn(1, length, DIM, generator=gen)
    return queries, keys, values


def _retrieved(mode: str) -> Counter:
    layer = _layer(mode, question_span=(1, 4))
    q, k, v = _planted_stream()
    layer.attend(q, k, v, scaling=DIM**-0.5)
    return layer.counts


def test_block_planted_to_match_the_question_is_retrieved():
    assert _retrieved("qllm").most_common(1)[0][0] == 5
    # the same stream without the question term picks the decoy: the question did it
    assert _retrieved("infllm").most_common(1)[0][0] == 2


def test_representatives_pick_the_most_attended_tokens():
    gen = torch.Generator().manual_seed(3)
    probe = _unit(5)
    keys = 0.05 * torch.randn(1, 112, DIM, generator=gen)
    queries = 0.05 * torch.randn(2, 112, DIM, generator=gen)
    keys[0, 46] += 4 * probe  # block 5 covers positions 44..51
    keys[0, 49] += 2 * probe
    queries[:, 50:80] += 4 * probe  # later queries attend to tokens 46 and 49 most
    layer = _layer("qllm", question_span=None)
    layer.attend(queries, keys, torch.randn(1, 112, DIM, generator=gen), scaling=DIM**-0.5)
    assert len(layer.store) >= 6
    torch.testing.assert_close(layer.store.representatives[5, 0], (keys[0, 46] + keys[0, 49]) / 2)
