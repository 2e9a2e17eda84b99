"""Aggregate records and points into Markdown tables (numbers only from measurements)."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from tabulate import tabulate

from .throughput import Point

NOT_RUN = "not run"


def system_order(records: Iterable[dict[str, Any]]) -> list[str]:
    """Systems in the order they first appear."""
    return list(dict.fromkeys(r["system"] for r in records))


def k_tokens(length: int) -> str:
    """``4096`` -> ``4K``; lengths under 1K stay as they are."""
    return f"{length // 1024}K" if length >= 1024 and length % 1024 == 0 else str(length)


def accuracy_cells(
    records: Iterable[dict[str, Any]], key: Sequence[str]
) -> dict[tuple[Any, ...], tuple[int, int]]:
    """``(correct, scored)`` per value of ``key`` fields; skipped records are not scored."""
    cells: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0])
    for record in records:
        cell = cells[tuple(record[k] for k in key)]
        if record["status"] != "skipped":
            cell[0] += bool(record["correct"])
            cell[1] += 1
    return {k: (v[0], v[1]) for k, v in cells.items()}


def fraction(cell: tuple[int, int] | None) -> str:
    """``(3, 4)`` -> ``75% (3/4)``; nothing scored -> ``not run``."""
    if cell is None or cell[1] == 0:
        return NOT_RUN
    return f"{100 * cell[0] / cell[1]:.0f}% ({cell[0]}/{cell[1]})"


def accuracy_table(records: list[dict[str, Any]], task: str) -> str:
    """Systems (rows) by document length (columns) for one task."""
    mine = [r for r in records if r["task"] == task]
    cells = accuracy_cells(mine, ("system", "length"))
    lengths = sorted({r["length"] for r in mine})
    rows = [
        [system] + [fraction(cells.get((system, n))) for n in lengths]
        for system in system_order(mine)
    ]
    return tabulate(rows, ["system"] + [k_tokens(n) for n in lengths], tablefmt="github")


def overall_table(records: list[dict[str, Any]]) -> str:
    """Systems (rows) by task (columns), all lengths pooled."""
    cells = accuracy_cells(records, ("system", "task"))
    tasks = list(dict.fromkeys(r["task"] for r in records))
    rows = [
        [system] + [fraction(cells.get((system, t))) for t in tasks]
        for system in system_order(records)
    ]
    return tabulate(rows, ["system"] + tasks, tablefmt="github")


def needle_grid(
    records: list[dict[str, Any]], system: str
) -> tuple[list[float], list[int], list[list[float]]]:
    """``(depths, lengths, accuracy[depth][length])`` of one system; NaN where not run."""
    mine = [r for r in records if r["task"] == "needle" and r["system"] == system]
    cells = accuracy_cells(mine, ("depth", "length"))
    depths = sorted({r["depth"] for r in mine})
    lengths = sorted({r["length"] for r in mine})
    grid = [[_ratio(cells.get((d, n))) for n in lengths] for d in depths]
    return depths, lengths, grid


def evidence_table(records: list[dict[str, Any]]) -> str:
    """How often a system's retrieval held a planted fact, and accuracy with and without."""
    rows = []
    for system in system_order(records):
        mine = [r for r in records if r["system"] == system and r["status"] == "ok"]
        if not any(_retrieves(r) for r in mine):
            continue
        hit = [r for r in mine if r.get("evidence_rank") is not None]
        miss = [r for r in mine if r.get("evidence_rank") is None]
        ranks = [r["evidence_rank"] for r in hit]
        rows.append(
            [
                system,
                fraction((len(hit), len(mine))),
                f"{statistics.median(ranks):.0f}" if ranks else "-",
                fraction((sum(r["correct"] for r in hit), len(hit))),
                fraction((sum(r["correct"] for r in miss), len(miss))),
            ]
        )
    return tabulate(
        rows,
        ["system", "fact retrieved", "median rank", "correct when retrieved", "correct when not"],
        tablefmt="github",
    )


def sweep_table(records: list[dict[str, Any]]) -> str:
    """question_weight (rows) by task and length (columns)."""
    cells = accuracy_cells(records, ("question_weight", "task", "length"))
    columns = sorted({(r["task"], r["length"]) for r in records})
    weights = sorted({r["question_weight"] for r in records})
    rows = [[f"{w:g}"] + [fraction(cells.get((w, t, n))) for t, n in columns] for w in weights]
    return tabulate(
        rows, ["question_weight"] + [f"{t} {k_tokens(n)}" for t, n in columns], tablefmt="github"
    )


def time_table(records: list[dict[str, Any]]) -> str:
    """Mean seconds per question (whole request) and prefill tokens/s, by system and length."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        if record["status"] == "ok":
            groups[(record["system"], record["length"])].append(record)
    lengths = sorted({r["length"] for r in records})
    rows = []
    for system in system_order(records):
        row = [system]
        for n in lengths:
            group = groups.get((system, n))
            if not group:
                row.append(NOT_RUN)
                continue
            seconds = statistics.fmean(r["total_seconds"] for r in group)
            # RAG's prefill reads the retrieved chunks, not the document: no comparable tok/s.
            speeds = [
                r["prefill_tokens_per_second"]
                for r in group
                if r.get("prefill_tokens_per_second") and "chunks" not in (r.get("extra") or {})
            ]
            speed = f", {statistics.fmean(speeds):.0f} tok/s" if speeds else ""
            row.append(f"{seconds:.1f} s{speed}")
        rows.append(row)
    return tabulate(rows, ["system"] + [k_tokens(n) for n in lengths], tablefmt="github")


def losses(records: list[dict[str, Any]], system: str = "qllm") -> list[str]:
    """Every (task, length) where another system scored higher than ``system``."""
    cells = accuracy_cells(records, ("task", "length", "system"))
    lines = []
    for task, length in sorted({(r["task"], r["length"]) for r in records}):
        mine = cells.get((task, length, system))
        if mine is None or mine[1] == 0:
            continue
        better = [
            f"{other} {fraction(cell)}"
            for other in system_order(records)
            if other != system
            and (cell := cells.get((task, length, other)))
            and cell[1]
            and cell[0] / cell[1] > mine[0] / mine[1]
        ]
        if better:
            lines.append(
                f"- {task} {k_tokens(length)}: {system} {fraction(mine)}; " + ", ".join(better)
            )
    return lines


def points_table(points: list[Point], modes: Sequence[str]) -> str:
    """Prefill tokens/s and peak memory growth per length; ratios when qllm and full both ran."""
    by_key = {(p.mode, p.length): p for p in points}
    lengths = sorted({p.length for p in points})
    ratio = "qllm" in modes and "full" in modes
    headers = ["tokens"] + [f"{m} tok/s" for m in modes] + [f"{m} peak +MiB" for m in modes]
    if ratio:
        headers += ["speed qllm/full", "memory qllm/full"]
    rows = []
    for n in lengths:
        cells = [by_key.get((m, n)) for m in modes]
        row = [k_tokens(n)] + [_speed(p) for p in cells] + [_memory(p) for p in cells]
        if ratio:
            q, f = by_key.get(("qllm", n)), by_key.get(("full", n))
            row += [_ratio_text(q, f, "tokens_per_second"), _ratio_text(q, f, "growth_mib")]
        rows.append(row)
    return tabulate(rows, headers, tablefmt="github")


def _retrieves(record: dict[str, Any]) -> bool:
    """Whether the system chose memory blocks or chunks for this record."""
    extra = record.get("extra") or {}
    return bool(extra.get("retrieved_blocks") or extra.get("chunks"))


def _speed(point: Point | None) -> str:
    if point is None:
        return NOT_RUN
    return f"{point.tokens_per_second:.0f}" if point.status == "ok" else point.status


def _memory(point: Point | None) -> str:
    if point is None:
        return NOT_RUN
    if point.status != "ok":
        return point.status
    return f"{point.growth_mib:.0f}" + ("" if point.exact else " (≤)")


def _ratio_text(q: Point | None, f: Point | None, field: str) -> str:
    if q is None or f is None or q.status != "ok" or f.status != "ok":
        return "-"
    denominator = getattr(f, field)
    return f"{getattr(q, field) / denominator:.2f}" if denominator else "-"


def _ratio(cell: tuple[int, int] | None) -> float:
    return cell[0] / cell[1] if cell and cell[1] else math.nan


def history_table(history: list[dict[str, Any]]) -> str:
    """One row per throughput run: date, machine, then ``qllm / full`` tokens/s per length."""
    lengths = sorted(
        {int(n) for run in history for by in run["tokens_per_second"].values() for n in by}
    )

    def speed(run: dict[str, Any], mode: str, n: int) -> str:
        value = run["tokens_per_second"].get(mode, {}).get(str(n))
        return "-" if value is None else f"{value:.0f}"

    def window(config: dict[str, Any]) -> str:
        return f"{config['n_local']} / {config['topk']} / {config['exec_block_size']}"

    rows = [
        [run["date"], run["machine"], run["software"], window(run["config"])]
        + [f"{speed(run, 'qllm', n)} / {speed(run, 'full', n)}" for n in lengths]
        for run in history
    ]
    headers = ["date", "machine", "software", "n_local / topk / exec"]
    headers += [k_tokens(n) for n in lengths]
    return tabulate(rows, headers, tablefmt="github")
