"""The GPU check's throughput points and its results: measured inside the venv, taken home.

:func:`points_main` runs in the venv (``python -m benchmarks.gpu_check --points REQUEST``):
one fresh process per (length, backend, mode), history rows saved. :func:`import_results`
takes a lent machine's summary into this checkout. Only the standard library is imported at
the top, so that :mod:`benchmarks.gpu_check` can import this before the venv exists.
"""

from __future__ import annotations

import datetime
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

RESULT_NAME = "gpu_check.json"
POINT_FLOOR_S = 15.0
"""A point is not started with less time than this left."""


def points_main(request_path: Path) -> int:
    """Measure every (length, backend, mode) in a fresh process each; history rows saved."""
    from qllm_core.spec import EngineSpec

    from . import machine, report
    from .paths import Paths
    from .throughput import Point, measure_in_subprocess

    request = json.loads(request_path.read_text(encoding="utf-8"))
    deadline = time.monotonic() + request["deadline_in_s"]
    device = request["device"]
    by_backend: dict[str, list[Any]] = {}
    for length in request["lengths"]:
        cap = request["point_cap_s"][str(length)]
        for backend in request["backends"]:
            spec = EngineSpec(overrides={"attention_backend": backend}, device=device)
            for mode in request["modes"]:
                left = deadline - time.monotonic()
                started = time.monotonic()
                if left < POINT_FLOOR_S:
                    point = Point(mode, length, "timeout", message="not run: budget spent")
                else:
                    point = measure_in_subprocess(
                        spec, mode, length, timeout=min(cap, left), memory_fraction=0.75
                    )
                by_backend.setdefault(backend, []).append(point)
                print(
                    f"  {backend:>6} {mode:>4} {length:>7} tokens: {point.status}, "
                    f"{point.tokens_per_second:.0f} tok/s, peak growth {point.growth_mib:.0f} "
                    f"MiB ({time.monotonic() - started:.0f} s) {point.message[:120]}",
                    flush=True,
                )
    paths = Paths(Path(request["root"]))
    paths.root.mkdir(parents=True, exist_ok=True)
    facts = machine.describe(device)
    points_out, rows = [], []
    for backend, points in by_backend.items():
        points_out += [{"backend": backend} | asdict(p) for p in points]
        engine = next((p.engine for p in points if p.engine), None)
        if engine is None:
            continue  # nothing measured: no history row
        meta = {
            "date": utc_now(seconds=True),
            "machine": facts | {"device": f"{device}, attention_backend={backend}"},
            "config": engine["config"],
        }
        summary = {"meta": meta, "points": [asdict(p) for p in points]}
        history = report.add_to_history(paths, summary)
        rows.append(history[-1])
        time.sleep(1.1)  # rows are keyed by date: keep the next one's distinct
    report.write_report(paths)
    reply = {"points": points_out, "history_rows": rows}
    request_path.with_name("points_reply.json").write_text(json.dumps(reply), encoding="utf-8")
    return 0


def import_results(folder: Path) -> int:
    """Take a lent machine's ``gpu_check.json`` into this checkout and re-render the report."""
    from . import report
    from .paths import REPO_ROOT, Paths, load_json, save_json

    source = folder / RESULT_NAME if folder.is_dir() else folder
    summary = load_json(source)
    if summary is None:
        print(f"no {RESULT_NAME} in {folder}")
        return 1
    if summary.get("kind") != "gpu":
        print(f"{source} is from a {summary.get('kind')}, not a GPU machine: not imported")
        return 1
    paths = Paths(REPO_ROOT)
    save_json(paths.results / RESULT_NAME, summary)
    history = load_json(paths.results / report.THROUGHPUT_HISTORY) or []
    dates = {row["date"] for row in summary.get("history_rows", [])}
    history = [h for h in history if h["date"] not in dates] + summary.get("history_rows", [])
    save_json(paths.results / report.THROUGHPUT_HISTORY, history)
    report.write_report(paths)
    print(f"imported {source}: {len(dates)} throughput rows; wrote {paths.report}")
    return 0


def points_table(points: list[dict[str, Any]]) -> str:
    """Tokens/s per (length, backend): qllm, full and their ratio."""
    cells: dict[tuple[int, str], dict[str, dict[str, Any]]] = {}
    for p in points:
        cells.setdefault((p["length"], p["backend"]), {})[p["mode"]] = p

    def speed(p: dict[str, Any] | None) -> str:
        if p is None:
            return "-"
        if p["status"] != "ok":
            return p["status"]
        return f"{p['tokens_per_second']:.0f} ({p['peak_mib']:.0f} MiB)"

    lines = [
        f"{'tokens':>8} {'backend':>7} {'qllm tok/s (peak)':>22} {'full tok/s (peak)':>22} ratio"
    ]
    for (length, backend), modes in sorted(cells.items()):
        q, f = modes.get("qllm"), modes.get("full")
        ratio = "-"
        if q and f and q["status"] == f["status"] == "ok" and f["tokens_per_second"]:
            ratio = f"{q['tokens_per_second'] / f['tokens_per_second']:.2f}x"
        lines.append(f"{length:>8} {backend:>7} {speed(q):>22} {speed(f):>22} {ratio}")
    return "\n".join(lines)


def utc_now(seconds: bool = False) -> str:
    """The time now in UTC, to the minute (or the second)."""
    pattern = "%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC"
    return datetime.datetime.now(datetime.timezone.utc).strftime(pattern)
