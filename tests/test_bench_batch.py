"""The batch benchmark pairs sequential and batched runs of the same requests."""

from __future__ import annotations

from benchmarks import batch
from benchmarks.paths import Paths, load_json


def test_batch_runs_both_workloads_and_the_answers_agree(tiny_engine, tmp_path):
    paths = Paths(tmp_path)
    paths.results.mkdir(parents=True)
    data = batch.run_batch(
        tiny_engine, paths, [384], [1, 3], max_new_tokens=6, command="python -m benchmarks batch"
    )
    rows = data["rows"]
    assert [(r["workload"], r["concurrency"]) for r in rows] == [
        ("memory", 1),
        ("memory", 3),
        ("new", 1),
        ("new", 3),
    ]
    for row in rows:
        assert row["identical"], row
        for run in ("sequential", "batched"):
            summary = row[run]
            assert summary["tokens_per_second"] > 0 and summary["wall_seconds"] > 0
            assert summary["p50_latency"] <= summary["p95_latency"]
    assert max(r["largest_batch"] for r in rows) >= 1
    assert load_json(paths.results / batch.RESULTS)["rows"] == rows
    section = batch.batch_section(paths)
    assert section is not None and section.count("| NO") == 0
    assert section.count(" 384 ") == 4 + 2  # the table's rows, the two unbatched lines
    for row in rows:
        if row["concurrency"] == 1:
            assert row["unbatched_identical"] and row["unbatched"]["tokens_per_second"] > 0
        else:
            assert "unbatched" not in row


def test_decode_rates_measure_each_concurrency(tiny_engine):
    rates = batch.decode_rates(tiny_engine, [1, 2], length=256, tokens=4)
    assert [r["concurrency"] for r in rates] == [1, 2]
    assert all(r["tokens_per_second"] > 0 for r in rates)
