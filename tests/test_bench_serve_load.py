"""The load benchmark on a real ``quickllama serve`` (tiny model): its accounting, and that
its exactly-once check fails on a lost, duplicated or incomplete answer."""

from __future__ import annotations

import copy
import json

import psutil
import pytest
from fakes import tiny_model_dir

from benchmarks import serve_load
from benchmarks.followup import FOLLOW_UP
from benchmarks.paths import Paths, load_json
from benchmarks.serve_clients import FOLLOW, NEW, Job, exactly_once_problems, level_summary
from benchmarks.serve_load_report import serve_load_section
from qllm_core.spec import EngineSpec

LOAD = serve_load.Load(
    concurrency=(3,), requests=6, length=1200, documents=2, new_share=0.34, max_new_tokens=4
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One run: the server with room for one request at a time (the rest: 429), then
    the same requests in-process. Every server process it started is gone afterwards."""
    paths = Paths(tmp_path_factory.mktemp("serve-load"))
    data = serve_load.run_serve_load(
        EngineSpec(source=tiny_model_dir()),
        paths,
        LOAD,
        max_queue=1,
        command="python -m benchmarks serve-load",
    )
    servers = [
        p for p in psutil.Process().children(recursive=True) if "serve" in " ".join(p.cmdline())
    ]
    assert servers == []
    return paths, data


def _records(paths, system):
    lines = (paths.out / "serve_load" / "records.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["system"] == system]


def test_every_request_is_accounted_for(run):
    paths, data = run
    assert list(data["systems"]) == ["server", serve_load.IN_PROCESS]
    assert load_json(paths.results / serve_load.RESULTS) == json.loads(json.dumps(data))
    documents = data["systems"]["server"]["documents"]
    assert [d["id"][:4] for d in documents] == ["doc-", "doc-"]
    assert all(d["tokens"] > 1000 for d in documents)
    for name, entry in data["systems"].items():
        [level] = entry["levels"]
        assert level["concurrency"] == 3 and level["requests"] == 6
        assert level["new_documents"] == 2
        assert level["accepted"] + level["rate_limited"] + level["errors"] == 6
        assert level["completed"] == level["accepted"] >= 1
        assert level["exactly_once"] and level["problems"] == []
        ids = [i for i in level["response_ids"] if i is not None]
        assert len(ids) == len(set(ids)) == level["accepted"]
        assert level["p50_latency"] <= level["p95_latency"] <= level["p99_latency"]
        wall = level["wall_seconds"]  # rounded to the millisecond
        assert level["completed"] / (wall + 0.0005) <= level["requests_per_second"]
        assert level["requests_per_second"] <= level["completed"] / (wall - 0.0005)
        records = _records(paths, name)
        assert sorted(r["job"] for r in records) == list(range(6))
        assert sum(r["kind"] == NEW for r in records) == 2
    server = data["systems"]["server"]["levels"][0]
    assert server["rate_limited"] >= 1  # three clients at once, room for one
    assert server["errors"] == 0
    assert list(server["replicas"].values()) == [server["completed"]]  # one process answered
    local = data["systems"][serve_load.IN_PROCESS]["levels"][0]
    assert local["completed"] == 6 and local["replicas"] == {}


def test_the_section_shows_both_systems_and_the_ratio(run):
    paths, data = run
    section = serve_load_section(paths)
    assert section is not None
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]
    assert [row.split("|")[1].strip() for row in rows] == ["server", serve_load.IN_PROCESS]
    server, local = (data["systems"][s]["levels"][0] for s in ("server", serve_load.IN_PROCESS))
    ratio = server["requests_per_second"] / local["requests_per_second"]
    assert f"{ratio:.2f}x" in rows[0]
    assert "| yes " in rows[0] and "| yes " in rows[1] and "NO" not in section
    assert "`--max-queue 1`" in section


def test_the_exactly_once_check_fails_on_each_broken_promise(run):
    paths, _ = run
    records = _records(paths, "server")
    jobs = [Job(r["job"], r["kind"], "", "") for r in records]
    accepted = [i for i, r in enumerate(records) if r["status"] == 200]
    assert exactly_once_problems(records, jobs, 4) == []
    first = accepted[0]

    def broken(change):
        copied = copy.deepcopy(records)
        change(copied)
        return exactly_once_problems(copied, jobs, 4)

    def lose(rs):
        rs[first] = None

    assert broken(lose) == [f"request {jobs[first].index}: lost (no answer, no error)"]
    twice = broken(lambda rs: rs[first]["finish_reasons"].append("stop"))
    assert twice == [f"request {jobs[first].index}: 2 finish_reason chunks"]
    assert "0 usage chunks" in broken(lambda rs: rs[first]["usage_tokens"].clear())[0]
    assert "3 of 4 tokens" in broken(lambda rs: rs[first]["usage_tokens"].__setitem__(0, 3))[0]
    assert "accepted, then" in broken(lambda rs: rs[first].__setitem__("error", "cut"))[0]
    other = next(i for i, r in enumerate(records) if i != first)

    def duplicate(rs):
        rs[other] = copy.deepcopy(rs[first]) | {"job": jobs[other].index}

    [problem] = broken(duplicate)
    assert "also answered request" in problem
    cut = copy.deepcopy(records)
    cut[first]["usage_tokens"].clear()  # a stream that ended before its usage chunk
    summary = level_summary(cut, jobs, wall=1.0, tokens=4)
    assert not summary["exactly_once"] and summary["completed"] == len(accepted) - 1


def test_follow_ups_take_turns_over_the_documents_and_questions():
    class Sample:
        def __init__(self, n):
            self.document, self.question = f"doc {n}", f"q {n}"

    load = serve_load.Load(requests=4, new_share=0.0)
    jobs = serve_load.level_jobs(None, load, [Sample(0), Sample(1)], 0)
    assert [(j.kind, j.posted, j.document, j.question) for j in jobs] == [
        (FOLLOW, 0, "doc 0", "q 0"),
        (FOLLOW, 1, "doc 1", "q 1"),
        (FOLLOW, 0, "doc 0", FOLLOW_UP),
        (FOLLOW, 1, "doc 1", FOLLOW_UP),
    ]
