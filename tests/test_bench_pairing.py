"""Pairing: systems compared sample by sample, as both report sections show them."""

from __future__ import annotations

from benchmarks.pairing import outcomes, pair, paired_rows


def _record(system: str, sample: str, correct: bool, status: str = "ok") -> dict[str, object]:
    return {"system": system, "sample_id": sample, "correct": correct, "status": status}


def test_outcomes_leave_out_skipped_records_and_keep_the_last_of_a_pair():
    records = [
        _record("qllm", "a", True),
        _record("qllm", "b", False, status="error"),  # answered, wrong: counts
        _record("full", "a", False, status="skipped"),
        _record("rag", "a", False),
        _record("rag", "a", True),  # a rerun of the same pair replaces the first
    ]
    assert outcomes(records) == {"qllm": {"a": True, "b": False}, "rag": {"a": True}}


def test_pair_counts_each_shared_sample_once_and_names_the_losses():
    mine = {"a": True, "b": False, "c": True, "d": False, "e": True, "only-mine": True}
    base = {"a": False, "b": True, "c": True, "d": False, "e": False, "only-base": False}
    p = pair(mine, base)
    assert (p.wins, p.lost, p.both, p.neither) == (2, ("b",), 1, 1)
    assert p.losses == 1 and p.samples == 5


def test_paired_rows_skip_the_baseline_and_systems_with_no_shared_sample():
    correct = {
        "qllm": {"a": True, "b": False, "c": False},
        "reread": {"a": True, "b": True, "c": False},
        "late": {"z": True},  # ran none of the baseline's samples
        "rag": {"a": False, "c": True},
    }
    rows = paired_rows(correct, "qllm", ["qllm", "reread", "late", "rag", "absent"])
    assert rows == [["reread", 1, 0, 1, 1, 3], ["rag", 1, 1, 0, 0, 2]]
    assert paired_rows(correct, "missing-baseline", list(correct)) == []
