"""Two-pass answering (``reread_tokens``) and mode ``auto``: exact checks on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from qllm_core import ConfigError, QLLMConfig, QLLMEngine
from qllm_core.answering.reread import (
    SEPARATOR,
    Passage,
    RereadBudget,
    choose_passages,
    max_reread_length,
    reread_ids,
)
from qllm_core.inputs.prompt import build_prompt, encode_text
from qllm_core.memory.retrieval import (
    block_log_mass,
    block_relevance,
    block_scores,
    with_neighbours,
)

DOC = " ".join(f"Item {i} of the list is the colour number {i * 7 % 13}." for i in range(90))
QUESTION = "What is the colour number of item 42?"


def test_block_relevance_is_the_softmax_mass_per_block():
    torch.manual_seed(0)
    queries = torch.randn(2, 3, 5, 8)  # (H, G, n, D)
    keys = torch.randn(4, 2, 6, 8)  # (B, H, S, D)
    scaling = 0.3
    relevance = block_relevance(block_log_mass(queries, keys, scaling))
    expected = torch.zeros(4, dtype=torch.float64)
    for h in range(2):
        flat = keys[:, h].reshape(-1, 8).double()  # (B * S, D)
        for g in range(3):
            for i in range(5):
                probs = (flat @ queries[h, g, i].double() * scaling).softmax(0)
                expected += probs.view(4, 6).sum(1)
    expected /= 2 * 3 * 5
    torch.testing.assert_close(relevance.double(), expected, atol=1e-6, rtol=1e-5)
    assert math.isclose(float(relevance.sum()), 1.0, rel_tol=1e-5)


def test_choose_passages_keeps_start_and_end_then_best_blocks_with_margins():
    # prompt: 10 template tokens, document at [10, 200); blocks of 20 from n_init = 30:
    # block b holds [30 + 20 b, 50 + 20 b); 7 blocks end at 170; tail [170, 200) is kept.
    relevance = torch.tensor([0.05, 0.1, 0.5, 0.05, 0.2, 0.05, 0.05])
    passages = choose_passages(
        relevance,
        document_span=(10, 200),
        n_init=30,
        block_size=20,
        budget=RereadBudget(110, margin=2),
    )
    # always: head [10, 30) (20 tokens) and tail [170, 200) (30 tokens) -> 60 left;
    # block 2 [70, 90) widened to [68, 92) (24), block 4 [110, 130) -> [108, 132) (24);
    # block 1 [50, 70) -> [48, 72) adds 20 more than block 2's span: 68 > 60, skipped
    spans = [(p.start, p.end) for p in passages]
    assert spans == [(10, 30), (68, 92), (108, 132), (170, 200)]
    assert sum(e - s for s, e in spans) <= 110
    scores = {(p.start, p.end): p.score for p in passages}
    assert scores[(10, 30)] == 0 and scores[(170, 200)] == 0
    assert scores[(68, 92)] == pytest.approx(0.5) and scores[(108, 132)] == pytest.approx(0.2)


def test_choose_passages_merges_neighbours_and_clips_to_the_document():
    relevance = torch.tensor([0.6, 0.4])  # blocks [4, 12) and [12, 20); document [2, 20)
    passages = choose_passages(
        relevance, document_span=(2, 20), n_init=4, block_size=8, budget=RereadBudget(100, 3)
    )
    assert [(p.start, p.end) for p in passages] == [(2, 20)]
    assert passages[0].score == pytest.approx(0.6)  # the best block's, not the merged sum


def test_reread_ids_puts_a_separator_in_every_gap():
    ids = list(range(100, 130))  # document at [5, 25)
    passages = [Passage(5, 8, 0.0), Passage(12, 15, 1.0), Passage(15, 18, 0.5)]
    out = reread_ids(ids, passages, (5, 25), separator=[-1])
    assert out == ids[:5] + ids[5:8] + [-1] + ids[12:18] + [-1] + ids[25:]
    bound = max_reread_length(len(ids), 20, budget=9, block_size=3, separator=1)
    assert len(out) <= bound


def test_reread_of_the_whole_document_equals_full_attention(tiny_engine):
    """A budget covering the document re-reads the prompt unchanged: the answer is ``full``'s."""
    config = tiny_engine.config.replace(reread_tokens=4096)
    engine = QLLMEngine(tiny_engine.model, tiny_engine.tokenizer, config=config, progress=False)
    two_pass = engine.answer(DOC, QUESTION, max_new_tokens=8)
    full = engine.answer(DOC, QUESTION, max_new_tokens=8, mode="full")
    layout = build_prompt(engine.tokenizer, DOC, QUESTION)
    assert two_pass.stats.reread_tokens == layout.document_span[1] - layout.document_span[0]
    assert two_pass.text == full.text
    assert two_pass.stats.mode == "qllm"


def test_reread_answers_from_its_passages_with_full_attention(tiny_engine):
    """The answer is exactly full attention over the prompt with only the chosen passages."""
    config = tiny_engine.config.replace(reread_tokens=160, reread_margin=4)
    engine = QLLMEngine(tiny_engine.model, tiny_engine.tokenizer, config=config, progress=False)
    answer = engine.answer(DOC, QUESTION, max_new_tokens=8)
    layout = build_prompt(engine.tokenizer, DOC, QUESTION)
    spans = sorted((b.token_start, b.token_end) for b in answer.stats.retrieved_blocks)
    assert 0 < answer.stats.reread_tokens == sum(e - s for s, e in spans) <= 160
    passages = [Passage(s, e, 0.0) for s, e in spans]
    separator = encode_text(engine.tokenizer, SEPARATOR)
    ids = reread_ids(layout.input_ids, passages, layout.document_span, separator)
    assert len(ids) < len(layout.input_ids)
    reference = engine.generate(ids, mode="full", max_new_tokens=8)
    assert answer.text == reference.text


def test_reread_that_cannot_fit_the_window_is_refused_before_reading(tiny_engine):
    config = tiny_engine.config.replace(reread_tokens=4000, full_attention_max_tokens=1024)
    engine = QLLMEngine(tiny_engine.model, tiny_engine.tokenizer, config=config, progress=False)
    with pytest.raises(ConfigError, match="reread_tokens"):
        engine.answer(DOC * 3, QUESTION, max_new_tokens=8)


def test_auto_mode_reads_with_full_attention_when_the_prompt_fits(tiny_engine):
    config = tiny_engine.config.replace(mode="auto")
    engine = QLLMEngine(tiny_engine.model, tiny_engine.tokenizer, config=config, progress=False)
    answer = engine.answer(DOC, QUESTION, max_new_tokens=6)
    assert answer.stats.mode == "full"
    assert answer.text == engine.answer(DOC, QUESTION, max_new_tokens=6, mode="full").text
    tokens = answer.stats.tokens_read + 6
    capped = QLLMEngine(
        engine.model,
        engine.tokenizer,
        config=config.replace(full_attention_max_tokens=tokens - 1),
        progress=False,
    )
    beyond = capped.answer(DOC, QUESTION, max_new_tokens=6)
    assert beyond.stats.mode == "qllm"
    assert beyond.text == engine.answer(DOC, QUESTION, max_new_tokens=6, mode="qllm").text
    exact = QLLMEngine(
        engine.model,
        engine.tokenizer,
        config=config.replace(full_attention_max_tokens=tokens),
        progress=False,
    )
    assert exact.answer(DOC, QUESTION, max_new_tokens=6).stats.mode == "full"


@pytest.mark.parametrize(
    ("field", "value"),
    [("reread_tokens", -1), ("reread_tokens", 8), ("reread_margin", -2), ("reread_tokens", True)],
)
def test_reread_fields_are_validated(field, value):
    with pytest.raises(ConfigError, match=field):
        QLLMConfig(block_size=16, n_local=64, exec_block_size=32, **{field: value})


def test_auto_is_the_default_mode():
    assert QLLMConfig().mode == "auto"
    assert QLLMConfig.preset("smollm2").mode == "auto"


@pytest.mark.parametrize("ranking", ["mean", "peak", "token_peak"])
def test_each_ranking_is_its_formula_over_the_attention_shares(ranking):
    torch.manual_seed(1)
    log_mass = torch.randn(2, 3, 5, 7)  # (H, G, n, B)
    shares = log_mass.double().softmax(-1)
    expected = {
        "mean": lambda: shares.mean(dim=(0, 1, 2)),
        "peak": lambda: torch.stack([shares[..., b].max() for b in range(7)]),
        "token_peak": lambda: torch.stack(
            [torch.stack([shares[:, :, i, b].max() for i in range(5)]).mean() for b in range(7)]
        ),
    }[ranking]()
    torch.testing.assert_close(block_relevance(log_mass, ranking).double(), expected)


def test_peak_ranks_one_focused_query_above_diffuse_mass():
    # block 0 gets a little from every query; block 1 nearly all of one query's attention
    log_mass = torch.zeros(1, 1, 4, 3)
    log_mass[..., 0] = 1.0
    log_mass[0, 0, 2, 1] = 6.0
    assert int(block_relevance(log_mass, "mean").argmax()) == 0
    assert int(block_relevance(log_mass, "peak").argmax()) == 1
    assert int(block_relevance(log_mass, "token_peak").argmax()) == 0
    with pytest.raises(ValueError, match="choose one of"):
        block_relevance(log_mass, "median")


def test_sized_reread_stops_below_the_ratio_once_the_floor_is_kept():
    # document [0, 100), n_init 0, blocks of 10; nothing always kept
    relevance = torch.tensor([0.1, 1.0, 0.6, 0.45, 0.05, 0.0, 0.0, 0.0, 0.0, 0.0])
    common = {"document_span": (0, 100), "n_init": 0, "block_size": 10}
    sized = choose_passages(relevance, budget=RereadBudget(80, ratio=0.5), **common)
    assert [(p.start, p.end) for p in sized] == [(10, 30)]  # blocks 1, 2; 0.45 < 0.5
    floor = choose_passages(relevance, budget=RereadBudget(80, 0, 30, 0.5), **common)
    assert [(p.start, p.end) for p in floor] == [(10, 40)]  # block 3 fills the floor
    full = choose_passages(relevance, budget=RereadBudget(80), **common)
    assert sum(p.end - p.start for p in full) == 80


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("reread_ranking", "median"),
        ("reread_min_tokens", 5000),
        ("reread_score_ratio", 1.5),
        ("reread_neighbours", -0.1),
        ("reread_neighbours", True),
    ],
)
def test_reread_options_out_of_range_are_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        QLLMConfig(reread_tokens=3072, **{field: value})


@pytest.mark.parametrize("ranking", ["peak", "token_peak"])
def test_each_ranking_reaches_the_reread(tiny_engine, ranking):
    """The re-read's passages are the best blocks under the configured ranking."""
    config = tiny_engine.config.replace(reread_tokens=160, reread_margin=0)
    mean = QLLMEngine(tiny_engine.model, tiny_engine.tokenizer, config=config, progress=False)
    other = QLLMEngine(
        tiny_engine.model,
        tiny_engine.tokenizer,
        config=config.replace(reread_ranking=ranking),
        progress=False,
    )
    spans = [
        sorted(
            (b.token_start, b.token_end)
            for b in e.answer(DOC, QUESTION, max_new_tokens=2).stats.retrieved_blocks
        )
        for e in (mean, other)
    ]
    assert spans[0] != spans[1]


@pytest.mark.parametrize(("ranking", "neighbours"), [("mean", 0.0), ("peak", 0.0), ("peak", 0.5)])
def test_single_pass_evidence_ranks_blocks_as_the_reread_would(tiny_engine, ranking, neighbours):
    """One set of scores: the single pass's best evidence block is the re-read's best passage."""
    config = tiny_engine.config.replace(
        mode="qllm", reread_ranking=ranking, reread_neighbours=neighbours, reread_margin=0
    )
    engines = [
        QLLMEngine(
            tiny_engine.model,
            tiny_engine.tokenizer,
            config=config.replace(reread_tokens=tokens),
            progress=False,
        )
        for tokens in (0, 160)
    ]
    single, reread = (e.answer(DOC, QUESTION, max_new_tokens=1) for e in engines)
    assert single.stats.reread_tokens == 0 < reread.stats.reread_tokens
    best, passage = single.stats.retrieved_blocks[0], reread.stats.retrieved_blocks[0]
    assert best.score == pytest.approx(passage.score, rel=1e-6)
    layout = build_prompt(tiny_engine.tokenizer, DOC, QUESTION)
    doc_start, doc_end = layout.document_span
    for block in single.stats.retrieved_blocks:  # the template's blocks are no evidence
        assert block.token_end > doc_start and block.token_start < doc_end


def test_reread_tokens_zero_alone_turns_a_sized_reread_off():
    sized = QLLMConfig.preset("smollm2")
    assert sized.reread_min_tokens > 0
    single = sized.replace(reread_tokens=0)
    assert single.reread_tokens == 0 and single.reread_min_tokens == sized.reread_min_tokens
    with pytest.raises(ConfigError, match="reread_min_tokens"):
        sized.replace(reread_min_tokens=-1, reread_tokens=0)


def test_neighbours_add_a_share_of_each_adjacent_block():
    scores = torch.tensor([1.0, 0.0, 4.0, 2.0])
    expected = torch.tensor([1.0, 0.5 * (1 + 4), 4 + 0.5 * (0 + 2), 2 + 0.5 * 4])
    torch.testing.assert_close(with_neighbours(scores, 0.5), expected)
    assert with_neighbours(scores, 0.0) is scores
    per_layer = torch.stack([scores, 3 * scores])  # mean over layers: 2 * scores
    torch.testing.assert_close(block_scores(per_layer, 0.5), 2 * expected)
    assert block_scores(torch.zeros(0, 0), 0.5).shape == (0,)


def test_block_scores_average_the_named_layers_only():
    per_layer = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    torch.testing.assert_close(block_scores(per_layer, layers=(0, 2)), torch.tensor([2.0, 0.5]))
    # rows of layers 4, 7 and 9 (a recorder that skipped the others)
    picked = block_scores(per_layer, layers=(7,), layer_ids=[4, 7, 9])
    torch.testing.assert_close(picked, torch.tensor([0.0, 1.0]))
    assert block_scores(per_layer, layers=(5,)).shape == (0,)


@pytest.mark.parametrize("layers", [(), (1, 1), (-1,), [1, 2], (1.5,)])
def test_reread_layers_must_name_distinct_layers(layers):
    with pytest.raises(ConfigError, match="reread_layers"):
        QLLMConfig(reread_layers=layers)


def test_a_layer_past_the_model_is_refused_before_reading(tiny_engine):
    layers = tiny_engine.model.config.num_hidden_layers
    engine = QLLMEngine(
        tiny_engine.model,
        tiny_engine.tokenizer,
        config=tiny_engine.config.replace(reread_layers=(0, layers)),
        progress=False,
    )
    with pytest.raises(ConfigError, match=f"past the model's {layers}"):
        engine.answer(DOC, QUESTION, max_new_tokens=2)


def test_the_reread_ranks_by_the_named_layers(tiny_engine):
    """The re-read's passages and the evidence follow ``reread_layers``."""
    config = tiny_engine.config.replace(mode="qllm", reread_tokens=160, reread_margin=0)
    spans = []
    for layers in (None, (0,), (1,)):
        engine = QLLMEngine(
            tiny_engine.model,
            tiny_engine.tokenizer,
            config=config.replace(reread_layers=layers),
            progress=False,
        )
        blocks = engine.answer(DOC, QUESTION, max_new_tokens=1).stats.retrieved_blocks
        spans.append(sorted((b.token_start, b.token_end) for b in blocks))
    assert spans[1] != spans[2]
