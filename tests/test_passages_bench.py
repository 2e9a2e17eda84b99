"""The passages benchmark answers each re-read variant exactly as the engine configured so."""

from __future__ import annotations

import dataclasses

import pytest
from test_reread import DOC, QUESTION

from benchmarks import passages
from benchmarks.passages_report import blocks_ahead, has_repeat, passages_sections
from benchmarks.paths import Paths, load_json
from benchmarks.tasks import Sample
from qllm_core import QLLMEngine

FACT = "Item 42 of the list is the colour number 8."


def _sample() -> Sample:
    start = DOC.index(FACT)
    return Sample(
        task="needle",
        sample_id="needle-test",
        length=0,
        depth=0.5,
        document=DOC,
        question=QUESTION,
        expected=("8",),
        evidence=((start, start + len(FACT)),),
        max_new_tokens=6,
    )


@pytest.mark.parametrize(
    "variant",
    [
        passages.Variant("mean", 160),
        passages.Variant("peak", 160),
        passages.Variant("token_peak", 128, min_tokens=64, ratio=0.5),
        passages.Variant("peak", 160, neighbours=1.0),
        passages.Variant("peak", 160, options=(("no_repeat_ngram_size", 2),)),
    ],
)
def test_a_variant_answers_as_the_engine_with_its_config(tiny_engine, monkeypatch, variant):
    monkeypatch.setitem(passages.VARIANTS, "under-test", variant)
    sample = _sample()
    layout = passages.sample_prompt(tiny_engine, sample)
    read, single = passages.read_sample(tiny_engine, sample, layout)
    assert single is None
    record = passages.answer_variant(tiny_engine, sample, layout, read, "under-test")
    config = tiny_engine.config.replace(mode="qllm", reread_margin=32, **variant.config_fields())
    engine = QLLMEngine(tiny_engine.model, tiny_engine.tokenizer, config=config, progress=False)
    answer = engine.answer(DOC, QUESTION, max_new_tokens=6, **dict(variant.options))
    assert record["answer"] == answer.text
    assert record["reread_tokens"] == answer.stats.reread_tokens
    assert record["tokens_generated"] == answer.stats.tokens_generated


def test_the_single_pass_answers_as_the_engine_without_a_reread(tiny_engine):
    sample = _sample()
    layout = passages.sample_prompt(tiny_engine, sample)
    _, record = passages.read_sample(tiny_engine, sample, layout, single_pass=True)
    config = tiny_engine.config.replace(mode="qllm", reread_tokens=0)
    engine = QLLMEngine(tiny_engine.model, tiny_engine.tokenizer, config=config, progress=False)
    answer = engine.answer(DOC, QUESTION, max_new_tokens=6)
    assert record is not None and record["variant"] == passages.SINGLE_PASS
    assert record["answer"] == answer.text
    assert record["finish_reason"] == answer.finish_reason
    assert record["tokens_generated"] == answer.stats.tokens_generated


def test_block_ranks_take_the_best_block_a_fact_touches():
    relevance = [0.1, 0.5, 0.3, 0.05]  # ranks: block 1 -> 0, 2 -> 1, 0 -> 2, 3 -> 3
    # n_init 4, blocks of 10: block b holds [4 + 10 b, 14 + 10 b)
    # (20, 26) touches blocks 1 and 2; (0, 3) lies in the initial tokens; (40, 50) touches
    # block 3 and what lies past the last block
    spans = [(5, 8), (20, 26), (0, 3), (40, 50), (12, 16)]
    assert passages.block_ranks(relevance, spans, n_init=4, block_size=10) == [2, 0, None, 3, 0]


def test_the_oracle_is_the_fact_alone_and_the_run_resumes(tiny_engine, tmp_path):
    sample = _sample()
    paths = Paths(tmp_path)
    summary = passages.run_passages(
        tiny_engine, [sample], paths, "test", ["mean-3072"], command="test"
    )
    by_variant = {r["variant"]: r for r in summary["answers"]}
    oracle = by_variant["oracle"]
    assert oracle["inside"] and oracle["reread_tokens"] <= passages.ORACLE_TOKENS
    assert by_variant["mean-3072"]["inside"]  # the budget covers the whole tiny document
    read = summary["reads"][0]
    assert set(read["ranks"]) == {"mean", "peak", "token_peak"}
    again = passages.run_passages(
        tiny_engine, [sample], paths, "test", ["mean-3072"], command="test"
    )
    assert len(again["answers"]) == 2  # nothing answered twice
    assert load_json(paths.results / "passages-test.json")["answers"] == again["answers"]
    (section,) = passages_sections(paths)
    assert "## Retrieval apart from reading (`test`)" in section
    assert "| oracle " in section and "| peak " in section
    speed = section.split("### Speed per length")[1].split("###")[0]
    (row,) = [line for line in speed.splitlines() if "| mean-3072 " in line]
    assert "| - " not in row  # read, answer and decode all timed for a new record


def test_blocks_ahead_counts_other_blocks_above_the_last_fact():
    assert blocks_ahead([0, 1, 2]) == 0  # three facts in the first three blocks
    assert blocks_ahead([0, 4]) == 3
    assert blocks_ahead([None]) is None


def test_has_repeat_finds_a_six_word_run_said_twice():
    loop = "The audit found that the fees rose. The audit found that the fees rose."
    assert has_repeat(loop)
    assert not has_repeat("The audit found that the fees rose in 2023, not in 2022.")


def test_the_heatmap_set_tabulates_and_draws_depth_by_length(tiny_engine, tmp_path):
    samples = [
        dataclasses.replace(_sample(), sample_id=f"needle-L{n}-d{d}", depth=d, length=n)
        for n in (0, 1)
        for d in (0.0, 1.0)
    ]
    paths = Paths(tmp_path)
    summary = passages.run_passages(
        tiny_engine, samples, paths, passages.HEATMAP, ["peak-sized", "qllm"], command="test"
    )
    assert {r["depth"] for r in summary["reads"]} == {0.0, 1.0}
    for system in ("peak-sized", "qllm"):
        assert (paths.figures / f"heatmap-{system}.png").stat().st_size > 1000
    (section,) = passages_sections(paths)
    part = section.split("### Needle depth x length")[1]
    assert "heatmap-peak-sized.png" in part and "heatmap-qllm.png" in part
    header = next(line for line in part.splitlines() if line.startswith("| depth"))
    assert header.split("|")[2:4] == [" 0K  ", " 0K  "] or "depth" in header
    cells = [
        line for line in part.splitlines() if line.startswith("| 0% ") or line.startswith("| 100% ")
    ]
    assert len(cells) == 4  # two depths, for each of the two systems
    assert all(line.count("/1") == 2 for line in cells)  # one answer per (depth, length)


def test_heatmap_samples_fill_whole_columns_first():
    from qllm_core.models.loading import load_tokenizer

    samples = passages.heatmap_samples(load_tokenizer(None), [2048, 1024])
    assert [(s.length, s.depth) for s in samples[:5]] == [
        (1024, d) for d in passages.HEATMAP_DEPTHS
    ]
    assert {s.task for s in samples} == {"needle"} and len(samples) == 10


def test_the_layer_dump_holds_what_the_read_ranks_by(tiny_engine, tmp_path):
    """Each layer's stored log mass gives back that layer's relevance under every ranking."""
    import torch

    from benchmarks import layers
    from qllm_core.memory.retrieval import RANKINGS, block_relevance

    sample = _sample()
    layout = passages.sample_prompt(tiny_engine, sample)
    with torch.inference_mode():
        memory = passages.read_prompt(tiny_engine, layout)[0].memory
        expected = {ranking: memory.block_relevance(ranking) for ranking in RANKINGS}
    folder = layers.dump_layers(tiny_engine, [sample], Paths(tmp_path), "test")
    dump = torch.load(folder / f"{sample.sample_id}.pt")
    lo, hi = layout.final_question_span
    assert dump["rank_ids"] == list(layout.input_ids[lo:hi])
    assert dump["fact_spans"] == passages.fact_spans(layout, sample)
    for ranking in RANKINGS:
        rows = torch.stack([block_relevance(m.float(), ranking) for m in dump["log_mass"]])
        assert rows.shape == expected[ranking].shape  # (layers, blocks)
        torch.testing.assert_close(rows, expected[ranking], atol=2e-3, rtol=0)
    stamp = (folder / f"{sample.sample_id}.pt").stat().st_mtime_ns
    layers.dump_layers(tiny_engine, [sample], Paths(tmp_path), "test")  # resumes: no re-read
    assert (folder / f"{sample.sample_id}.pt").stat().st_mtime_ns == stamp


def test_the_study_ranks_as_the_engine_ranks_the_dumped_read(tiny_engine, tmp_path):
    """``peak`` and ``mean`` of the study are the engine's rankings of the same scores."""
    import torch

    from benchmarks import layers, ranking_study
    from qllm_core.memory.retrieval import block_relevance

    sample = _sample()
    folder = layers.dump_layers(tiny_engine, [sample], Paths(tmp_path), "test")
    dump = torch.load(folder / f"{sample.sample_id}.pt")
    result = ranking_study.study(folder)
    (loaded,) = ranking_study.load_rows(folder)
    for ranking in ("peak", "mean"):
        rows = torch.stack([block_relevance(m.float(), ranking) for m in dump["log_mass"]])
        ranks = passages.block_ranks(
            rows.mean(dim=0).tolist(), dump["fact_spans"], dump["n_init"], dump["block_size"]
        )
        assert result["ahead"][ranking][sample.sample_id] == blocks_ahead(ranks)
        torch.testing.assert_close(loaded["rows"][ranking], rows)
    assert "vs peak" in ranking_study.study_table(result)


def test_layers_are_chosen_on_the_other_groups():
    """Layer 0 puts each fact's block (1) first, layer 1 block 0: a held-out group is ranked
    by layer 0 when the others show it locates, though layer 1 locates in its own group."""
    import torch

    from benchmarks.ranking_study import chosen_elsewhere

    def sample(group: str, index: int, good_layer: int) -> dict:
        peak = torch.full((2, 3), 0.1)
        peak[good_layer, 1] = 0.9
        peak[1 - good_layer, 0] = 0.9
        return {
            "sample_id": f"{group}-{index}",
            "group": group,
            "spans": [(4 + 2, 4 + 3)],  # n_init 4, blocks of 2: token 6 is in block 1
            "n_init": 4,
            "block_size": 2,
            "rows": {"peak": peak},
        }

    samples = [sample("a", 0, 0), sample("a", 1, 0), sample("b", 0, 0), sample("c", 0, 1)]
    ahead = chosen_elsewhere(samples, layers=2, k=1)
    assert ahead == {"a-0": 0, "a-1": 0, "b-0": 0, "c-0": 1}


def test_a_variant_of_named_layers_answers_as_the_engine(tiny_engine, monkeypatch, tmp_path):
    """Ranked from the layers dump, as the engine with ``reread_layers`` ranks."""
    import torch

    from benchmarks import layers

    variant = passages.Variant("peak", 160, neighbours=0.5, layers=(0,))
    monkeypatch.setitem(passages.VARIANTS, "under-test", variant)
    sample = _sample()
    layout = passages.sample_prompt(tiny_engine, sample)
    read, _ = passages.read_sample(tiny_engine, sample, layout)
    folder = layers.dump_layers(tiny_engine, [sample], Paths(tmp_path), "test")
    dump = torch.load(folder / f"{sample.sample_id}.pt")
    per_layer = passages.layer_relevance(dump["log_mass"], "peak")
    with pytest.raises(ValueError, match="layers"):
        passages.answer_variant(tiny_engine, sample, layout, read, "under-test")
    record = passages.answer_variant(tiny_engine, sample, layout, read, "under-test", per_layer)
    config = tiny_engine.config.replace(mode="qllm", reread_margin=32, **variant.config_fields())
    engine = QLLMEngine(tiny_engine.model, tiny_engine.tokenizer, config=config, progress=False)
    answer = engine.answer(DOC, QUESTION, max_new_tokens=6)
    assert record["answer"] == answer.text
    assert record["reread_tokens"] == answer.stats.reread_tokens
