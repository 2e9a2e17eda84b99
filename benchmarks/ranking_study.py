"""Rankings scored offline on the per-layer dumps of :mod:`benchmarks.layers`, paired.

Every candidate ranks the same read's blocks; per sample, the blocks holding no fact that
rank above the last fact needed (:func:`benchmarks.passages_report.blocks_ahead`; 0: the
answer's block comes first). With ``P[l, h, g, i, b]`` the share of question token ``i``'s
attention (layer ``l``, query head ``g`` of KV head ``h``) that block ``b`` draws, and
``peak[l, b] = max_{h,g,i} P``, ``mean[l, b] = mean_{h,g,i} P``:

- ``peak``: ``mean_l peak[l, b]`` (the default since issue 28);
- ``mean``: ``mean_l mean[l, b]`` (the default before it);
- ``peak + neighbours w``: ``s_b + w (s_{b-1} + s_{b+1})`` with ``s`` = ``peak``, a
  three-tap smoothing over adjacent blocks (the block-level analogue of InfiniRetri's
  convolution over token scores);
- ``peak / mean^a``: ``s_b / (mean_l mean[l, b])^a``, the block's focused attention over
  the diffuse attention every question token gives it (a prior from the same question);
- ``peak, layers a-b``: the mean over those layers only;
- ``peak, k layers chosen elsewhere``: the ``k`` layers whose ``peak[l]`` alone puts the
  answer's block first most often on the *other* groups (documents; task and length for
  the synthetic sets), scored on the held-out group: layer selection without choosing on
  the samples it is scored on; ``+ neighbours`` smooths those scores as above.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate

from qllm_core.memory.retrieval import with_neighbours

from .passages import block_ranks, layer_relevance
from .passages_report import RANK_CUTS, blocks_ahead
from .paths import Paths, load_json

Scores = Callable[[dict[str, torch.Tensor]], torch.Tensor]
"""Per-layer score rows ``{"peak": (L, B), "mean": (L, B)}`` to one score per block (B,)."""
CHOSEN_LAYERS: tuple[int, ...] = (8, 12, 16)
"""How many layers ``peak, k layers chosen elsewhere`` keeps (each reported)."""
NEIGHBOURS = 0.25
"""The neighbours' weight of the smoothed candidates."""


def candidates(layers: int) -> dict[str, Scores]:
    """The fixed candidates of the module docstring for a model of ``layers`` layers."""
    half = layers // 2
    return {
        "peak": lambda r: r["peak"].mean(0),
        "mean": lambda r: r["mean"].mean(0),
        f"peak + neighbours {NEIGHBOURS}": lambda r: with_neighbours(r["peak"].mean(0), NEIGHBOURS),
        "peak / mean^0.5": lambda r: r["peak"].mean(0) / r["mean"].mean(0).clamp_min(1e-12) ** 0.5,
        f"peak, layers 0-{half - 1}": lambda r: r["peak"][:half].mean(0),
        f"peak, layers {half}-{layers - 1}": lambda r: r["peak"][half:].mean(0),
    }


def load_rows(folder: Path) -> list[dict[str, Any]]:
    """Per dump: its id, group, fact spans, block geometry and per-layer score rows."""
    out = []
    for path in sorted(folder.glob("*.pt")):
        dump = torch.load(path)
        out.append(
            {
                "sample_id": dump["sample_id"],
                "group": dump["sample_id"].rsplit("-", 1)[0],
                "spans": [tuple(s) for s in dump["fact_spans"]],
                "n_init": dump["n_init"],
                "block_size": dump["block_size"],
                "rows": {r: layer_relevance(dump["log_mass"], r) for r in ("peak", "mean")},
            }
        )
    return out


def ahead(sample: dict[str, Any], scores: torch.Tensor) -> int | None:
    """Blocks ahead of the sample's answer under ``scores`` (``None``: no block holds it)."""
    ranks = block_ranks(scores.tolist(), sample["spans"], sample["n_init"], sample["block_size"])
    return blocks_ahead(ranks)


def _layer_firsts(samples: list[dict[str, Any]], layers: int) -> list[int]:
    return [
        sum(ahead(s, s["rows"]["peak"][layer]) == 0 for s in samples) for layer in range(layers)
    ]


def chosen_elsewhere(
    samples: list[dict[str, Any]], layers: int, k: int, neighbours: float = 0.0
) -> dict[str, int | None]:
    """Blocks ahead per sample, each group ranked by the ``k`` layers chosen on the others
    (then :func:`with_neighbours`)."""
    out: dict[str, int | None] = {}
    for group in sorted({s["group"] for s in samples}):
        others = [s for s in samples if s["group"] != group]
        firsts = _layer_firsts(others, layers)
        chosen = sorted(range(layers), key=lambda layer: -firsts[layer])[:k]
        for sample in samples:
            if sample["group"] == group:
                scores = sample["rows"]["peak"][chosen].mean(0)
                out[sample["sample_id"]] = ahead(sample, with_neighbours(scores, neighbours))
    return out


def study(folder: Path) -> dict[str, Any]:
    """Blocks ahead per candidate and sample, and each layer's own count of firsts."""
    samples = load_rows(folder)
    if not samples:
        raise FileNotFoundError(f"no dumps in {folder}: run `python -m benchmarks layers` first")
    layers = samples[0]["rows"]["peak"].shape[0]
    ahead_of = {
        name: {s["sample_id"]: ahead(s, scores(s["rows"])) for s in samples}
        for name, scores in candidates(layers).items()
    }
    if len({s["group"] for s in samples}) > 1:
        for k in CHOSEN_LAYERS:
            for weight in (0.0, NEIGHBOURS):
                name = f"peak, {k} layers chosen elsewhere" + (
                    f" + neighbours {weight}" if weight else ""
                )
                ahead_of[name] = chosen_elsewhere(samples, layers, k, weight)
    return {
        "samples": len(samples),
        "ahead": ahead_of,
        "layer_firsts": _layer_firsts(samples, layers),
    }


def study_table(result: dict[str, Any], baseline: str = "peak") -> str:
    """Per candidate: firsts, fewer than 3 and 10 ahead, median ahead; paired with ``baseline``."""
    base = result["ahead"][baseline]
    rows = []
    for name, per in result["ahead"].items():
        known = {k: v for k, v in per.items() if v is not None}
        paired = [(v, base[k]) for k, v in known.items() if base.get(k) is not None]
        rows.append(
            [name, f"{len(known)}/{len(per)}"]
            + [sum(v < cut for v in known.values()) for cut in RANK_CUTS]
            + [
                f"{statistics.median(known.values()):.0f}" if known else "-",
                f"{sum(a < b for a, b in paired)}/{sum(a > b for a, b in paired)}/"
                f"{sum(a == b for a, b in paired)}",
            ]
        )
    headers = ["ranking", "answer in a block", *(f"< {c} ahead" for c in RANK_CUTS)]
    return tabulate(
        rows, [*headers, "median ahead", f"vs {baseline}: closer/farther/same"], tablefmt="github"
    )


def ranking_sections(paths: Paths) -> list[str]:
    """One BENCHMARKS.md section per ``results/ranking-*.json``."""
    out = []
    for path in sorted(paths.results.glob("ranking-*.json")):
        data = load_json(path)
        meta, result = data["meta"], data["study"]
        firsts = ", ".join(f"{layer}: {n}" for layer, n in enumerate(result["layer_firsts"]))
        out.append(
            "\n".join(
                [
                    f"## Ranking study (`{path.stem.removeprefix('ranking-')}`)",
                    "",
                    f"- Command: `{meta['command']}` ({meta['date']})",
                    f"- Machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores; "
                    f"model: {meta['model']}",
                    f"- {result['samples']} samples, each read once as the default reads it; "
                    "every ranking scores the blocks of that same read, offline, from each "
                    "layer's question attention (`benchmarks/ranking_study.py` gives the "
                    "formulas). Blocks holding no fact ranked above the answer's, per sample; "
                    "the last column pairs each ranking with today's default per sample.",
                    "",
                    study_table(result),
                    "",
                    f"Each layer alone, samples whose answer's block it ranks first: {firsts}.",
                    "",
                ]
            )
        )
    return out
