"""BENCHMARKS.md section of the passages benchmark: ranking apart from reading, paired."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

from tabulate import tabulate

from .pairing import pair, paired_rows
from .paths import Paths, load_json

RANK_CUTS: tuple[int, ...] = (1, 3, 10)
"""Reported: no other block ahead of the answer's (first), fewer than 3, fewer than 10."""
HEATMAP = "heatmap"
"""The task set of needles at fixed depths and lengths (``passages.heatmap_samples``)."""
HEATMAP_SYSTEMS = {"peak-sized": "the default: its re-read", "qllm": "the paper's single pass"}
"""The systems of the heatmap's figures and tables, answered from the same reads."""
RECORDED = ("qllm-reread", "qllm", "rag")
"""Systems of ``compare-<set>.json`` paired with the variants, when that file has them."""


def passages_sections(paths: Paths) -> list[str]:
    """One section per ``results/passages-*.json``."""
    out = []
    for path in sorted(paths.results.glob("passages-*.json")):
        data = load_json(path)
        name = path.stem.removeprefix("passages-")
        recorded = load_json(paths.results / f"compare-{name}.json") or {}
        out.append(passages_section(name, data, recorded.get("records", [])))
    return out


def passages_section(name: str, data: dict[str, Any], recorded: list[dict[str, Any]]) -> str:
    """Rank of the answer's block per ranking, then each variant's answers, paired."""
    meta, reads, answers = data["meta"], data["reads"], data["answers"]
    correct = _correct_by_system(answers, recorded, {r["sample_id"] for r in reads})
    oracle = correct.get("oracle", {})
    fair = sorted(s for s, ok in oracle.items() if ok)
    machine = meta["machine"]
    commands = meta.get("commands") or [meta["command"]]  # summaries written before 12-06
    lines = [
        f"## Retrieval apart from reading (`{name}`)",
        "",
        "- Commands: " + ", then ".join(f"`{c}`" for c in commands) + f" ({meta['date']})",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, {machine['ram_gib']} GiB RAM",
        f"- {len(reads)} samples read once each (mode `qllm`, median read "
        f"{statistics.median(r['read_seconds'] for r in reads):.0f} s); every variant "
        "re-reads from that one read, exactly as the engine configured so would "
        "(`benchmarks/passages.py`). `oracle`: the fact's own "
        f"{meta['oracle_tokens']} tokens in place of the document, the model's ceiling. "
        f"Fair samples (the oracle answers them): {len(fair)} of {len(oracle)}.",
        "",
        "### Where the block holding the answer ranks",
        "",
        "Per sample, how many blocks holding no fact rank above the last of its facts (all "
        "are needed; 0: the facts come first). A fact in the always-kept start or end of the "
        "document has no block and is counted apart.",
        "",
        _rank_table(reads),
        "",
        "### Answers per variant",
        "",
        "`inside`: every fact was inside the re-read; `misread`: inside but answered wrong "
        "(the model); `not re-read`: outside and wrong (the ranking); `repeats`: answers in "
        "which a run of six words occurs twice (a loop); `-` for the single pass `qllm`, "
        "which re-reads nothing. Answer seconds: what each system adds to the read they "
        "share (its re-read and decoding; for `rag`, reading its chunks and decoding, "
        "its indexing apart: see the speed per length).",
        "",
        _answer_table(answers, correct, fair),
        "",
        "### Speed per length",
        "",
        "Medians per document length. `read`: the one `qllm` read every variant and the "
        "single pass share (tokens/s over the whole prompt); for `rag`, indexing the "
        "document (splitting and embedding; `-` where records predate its timing). "
        "`answer`: the re-read and the decoding (for `rag`: reading its chunks and "
        "decoding). `decode tok/s`: tokens generated over decoding seconds (`-` where "
        "records predate the count).",
        "",
        _speed_table(reads, answers),
        "",
    ]
    if len({r["task"] for r in reads}) > 1:
        lines += [
            "### Right answers per task and length",
            "",
            "(in k): the samples whose facts were all inside what the system read.",
            "",
            _task_table(reads, answers, correct),
            "",
        ]
    if name == HEATMAP:
        lines += _heatmap_part(reads, answers)
    before = "mean-3072" if len(correct.get("mean-3072", {})) == len(reads) else "qllm-reread"
    for baseline, what in ((before, "the default before this benchmark"), ("rag", "RAG")):
        if baseline in correct:
            lines += [
                f"### Paired with `{baseline}` ({what}), per sample",
                "",
                _pair_table(correct, baseline, _groups(reads)),
                "",
            ]
    return "\n".join(lines)


def _correct_by_system(
    answers: list[dict[str, Any]], recorded: list[dict[str, Any]], samples: set[str]
) -> dict[str, dict[str, bool]]:
    out: dict[str, dict[str, bool]] = {}
    for record in answers:
        out.setdefault(record["variant"], {})[record["sample_id"]] = bool(record["correct"])
    for record in recorded:
        if record["system"] in RECORDED and record["sample_id"] in samples:
            if record.get("status") == "ok":
                out.setdefault(record["system"], {})[record["sample_id"]] = bool(record["correct"])
    return out


def _rank_table(reads: list[dict[str, Any]]) -> str:
    rankings = sorted({name for r in reads for name in r["ranks"]})
    rows = []
    for ranking in rankings:
        worst = [blocks_ahead(r["ranks"][ranking]) for r in reads]
        in_blocks = [w for w in worst if w is not None]
        rows.append(
            [ranking, f"{len(in_blocks)}/{len(worst)}"]
            + [f"{sum(w < k for w in in_blocks)}" for k in RANK_CUTS]
            + [f"{statistics.median(in_blocks):.0f}" if in_blocks else "-"]
        )
    headers = ["ranking", "answer in a block"] + [f"< {k} ahead" for k in RANK_CUTS]
    return tabulate(rows, [*headers, "median ahead"], tablefmt="github")


def blocks_ahead(ranks: Sequence[int | None]) -> int | None:
    """Blocks holding no fact that rank above the last fact needed (``None``: no block).

    0 when the facts' blocks fill the first places, whatever the number of facts.
    """
    known = [r for r in ranks if r is not None]
    return max(known) - (len(set(known)) - 1) if known else None


def _answer_table(
    answers: list[dict[str, Any]], correct: dict[str, dict[str, bool]], fair: list[str]
) -> str:
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for record in answers:
        by_variant.setdefault(record["variant"], []).append(record)
    rows = []
    for name, right in correct.items():
        records = by_variant.get(name, [])
        located = records and all(r["inside"] is not None for r in records)  # a re-read
        inside = [r for r in records if r["inside"]]
        tokens = [r["reread_tokens"] for r in records]
        seconds = [r["prefill_seconds"] + r["decode_seconds"] for r in records]
        rows.append(
            [
                name,
                f"{sum(right.values())}/{len(right)}",
                f"{sum(right.get(s, False) for s in fair)}/{sum(s in right for s in fair)}",
                f"{len(inside)}/{len(records)}" if located else "-",
                sum(not r["correct"] for r in inside) if located else "-",
                sum(not r["inside"] and not r["correct"] for r in records) if located else "-",
                sum(has_repeat(r["answer"]) for r in records) if records else "-",
                _spread(tokens),
                f"{statistics.median(seconds):.1f}" if seconds else "-",
            ]
        )
    headers = [
        "system",
        "right",
        "right (fair)",
        "inside",
        "misread",
        "not re-read",
        "repeats",
        "re-read tokens (10/50/90%)",
        "median answer s",
    ]
    return tabulate(rows, headers, tablefmt="github")


def _speed_table(reads: list[dict[str, Any]], answers: list[dict[str, Any]]) -> str:
    read_of = {r["sample_id"]: r for r in reads}
    cells: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for a in answers:
        if a["variant"] != "oracle" and a["sample_id"] in read_of:
            cells.setdefault((a["length"], a["variant"]), []).append(a)
    rows = []
    for (length, system), records in sorted(cells.items()):
        mine = [read_of[a["sample_id"]] for a in records]
        if system == "rag":
            timed = [a["index_seconds"] for a in records if "index_seconds" in a]
            read = statistics.median(timed) if len(timed) == len(records) else None
            rate = None
        else:
            read = statistics.median(r["read_seconds"] for r in mine)
            rate = statistics.median(r["prompt_tokens"] / r["read_seconds"] for r in mine)
        answer = [a["prefill_seconds"] + a["decode_seconds"] for a in records]
        decode = [
            a["tokens_generated"] / a["decode_seconds"]
            for a in records
            if a.get("tokens_generated") and a["decode_seconds"] > 0
        ]
        rows.append(
            [
                f"{length // 1024}K",
                system,
                len(records),
                "-" if read is None else f"{read:.0f}",
                "-" if rate is None else f"{rate:.0f}",
                f"{statistics.median(answer):.1f}",
                "-" if read is None else f"{read + statistics.median(answer):.0f}",
                f"{statistics.median(decode):.1f}" if len(decode) == len(records) else "-",
            ]
        )
    headers = [
        "length",
        "system",
        "samples",
        "read s",
        "read tok/s",
        "answer s",
        "per question s",
        "decode tok/s",
    ]
    return tabulate(rows, headers, tablefmt="github")


def has_repeat(answer: str, words: int = 6) -> bool:
    """Whether some run of ``words`` words occurs twice in ``answer`` (a looping answer)."""
    tokens = answer.split()
    runs = [tuple(tokens[i : i + words]) for i in range(len(tokens) - words + 1)]
    return len(set(runs)) < len(runs)


def _spread(values: list[int]) -> str:
    """The 10th, 50th and 90th percentiles of ``values``, as ``p10/p50/p90``."""
    if len(values) < 2:
        return f"{values[0]}" if values else "-"
    deciles = statistics.quantiles(values, n=10, method="inclusive")
    return f"{deciles[0]:.0f}/{statistics.median(values):.0f}/{deciles[-1]:.0f}"


def _pair_table(
    correct: dict[str, dict[str, bool]], baseline: str, group_of: dict[str, str]
) -> str:
    """Wins, losses and ties against ``baseline``, and where (task and length) each loss is."""
    rows = paired_rows(correct, baseline, list(correct))
    for row in rows:
        lost = Counter(
            group_of[s] for s in pair(correct[row[0]], correct[baseline]).lost if s in group_of
        )
        row.append(", ".join(f"{g}: {n}" for g, n in sorted(lost.items())) or "none")
    headers = ["system", "wins", "losses", "both right", "both wrong", "paired", "losses in"]
    return tabulate(rows, headers, tablefmt="github")


def _groups(reads: list[dict[str, Any]]) -> dict[str, str]:
    """Each sample's task and length, e.g. ``needle 32K``."""
    return {r["sample_id"]: f"{r['task']} {r['length'] // 1024}K" for r in reads}


def _task_table(
    reads: list[dict[str, Any]],
    answers: list[dict[str, Any]],
    correct: dict[str, dict[str, bool]],
) -> str:
    task_of = _groups(reads)
    groups = sorted(set(task_of.values()), key=lambda g: (g.split()[0], int(g.split()[1][:-1])))
    inside = {(r["variant"], r["sample_id"]) for r in answers if r["inside"]}
    rows = []
    for name, right in correct.items():
        row = [name]
        for group in groups:
            mine = [s for s in right if task_of.get(s) == group]
            cell = f"{sum(right[s] for s in mine)}/{len(mine)}" if mine else "-"
            if mine and any(r["variant"] == name and r["inside"] is not None for r in answers):
                cell += f" (in {sum((name, s) in inside for s in mine)})"
            row.append(cell)
        rows.append(row)
    return tabulate(rows, ["system", *groups], tablefmt="github")


def _heatmap_part(reads: list[dict[str, Any]], answers: list[dict[str, Any]]) -> list[str]:
    """Per system of :data:`HEATMAP_SYSTEMS`: right answers by needle depth and length."""
    depth = {r["sample_id"]: r["depth"] for r in reads}
    lengths = sorted({r["length"] for r in reads})
    lines = ["### Needle depth x length", ""]
    for system, what in HEATMAP_SYSTEMS.items():
        cells: dict[tuple[float, int], list[int]] = {}
        for a in answers:
            if a["variant"] == system and a["sample_id"] in depth:
                cell = cells.setdefault((depth[a["sample_id"]], a["length"]), [0, 0])
                cell[0] += bool(a["correct"])
                cell[1] += 1
        rows = [
            [f"{100 * d:.0f}%"]
            + [f"{cells[d, n][0]}/{cells[d, n][1]}" if (d, n) in cells else "-" for n in lengths]
            for d in sorted({d for d, _ in cells})
        ]
        headers = ["depth", *(f"{n // 1024}K" for n in lengths)]
        lines += [
            f"`{system}` ({what}): right answers per cell.",
            "",
            f"![heatmap, {system}](benchmarks/figures/heatmap-{system}.png)",
            "",
            tabulate(rows, headers, tablefmt="github"),
            "",
        ]
    return lines
