"""Figures: needle heatmaps, the question_weight sweep, and speed/memory against length."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # files only; never opens a window

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap  # noqa: E402

from .tables import accuracy_cells, k_tokens, needle_grid  # noqa: E402
from .throughput import Point  # noqa: E402

if TYPE_CHECKING:
    from .pairing import Frontier

# Red -> yellow -> green, the palette of the well-known Needle-in-a-Haystack plots.
NEEDLE_COLORS = LinearSegmentedColormap.from_list("needle", ["#F0496E", "#EBB839", "#0CD79F"])


def needle_heatmap(records: list[dict[str, Any]], system: str, path: Path, title: str) -> Path:
    """Depth (rows) by length (columns) accuracy of one system; grey cells were not run."""
    depths, lengths, grid = needle_grid(records, system)
    fig, ax = plt.subplots(figsize=(1.1 * len(lengths) + 2.5, 0.45 * len(depths) + 1.8))
    cmap = NEEDLE_COLORS.with_extremes(bad="#d9d9d9")
    image = ax.imshow(grid, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    for row, values in enumerate(grid):
        for col, value in enumerate(values):
            text = "not run" if math.isnan(value) else f"{100 * value:.0f}%"
            ax.text(col, row, text, ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(lengths)), [k_tokens(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{100 * d:.0f}%" for d in depths])
    ax.set_xlabel("document length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="accuracy", fraction=0.05)
    return _save(fig, path)


def sweep_plot(records: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Accuracy against question_weight, one line per (task, length)."""
    cells = accuracy_cells(records, ("task", "length", "question_weight"))
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for task, length in sorted({(r["task"], r["length"]) for r in records}):
        weights = sorted(w for t, n, w in cells if (t, n) == (task, length))
        values = [
            100 * cells[(task, length, w)][0] / max(1, cells[(task, length, w)][1]) for w in weights
        ]
        ax.plot(weights, values, marker="o", label=f"{task} {k_tokens(length)}")
    ax.set_xlabel("question_weight (0 = InfLLM)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-5, 105)
    ax.set_title(title, fontsize=10)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def speed_memory_plot(points: list[Point], modes: Sequence[str], path: Path, title: str) -> Path:
    """Prefill tokens/s and peak memory growth against length, one line per mode."""
    fig, (speed_ax, memory_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for mode in modes:
        mine = sorted(
            (p for p in points if p.mode == mode and p.status == "ok"), key=lambda p: p.length
        )
        if not mine:
            continue
        line = speed_ax.plot(
            [p.length for p in mine], [p.tokens_per_second for p in mine], marker="o", label=mode
        )[0]
        exact = [p for p in mine if p.exact]
        memory_ax.plot(
            [p.length for p in exact], [p.growth_mib for p in exact], marker="o", label=mode
        )
        bounds = [p for p in mine if not p.exact]  # the peak was set while loading
        memory_ax.scatter(
            [p.length for p in bounds],
            [p.growth_mib for p in bounds],
            facecolors="none",
            edgecolors=line.get_color(),
        )
    if any(not p.exact for p in points if p.status == "ok"):
        memory_ax.set_title("hollow: upper bound (peak set while loading)", fontsize=8)
    all_lengths = sorted({p.length for p in points})
    for ax, label in ((speed_ax, "prefill tokens/s"), (memory_ax, "peak memory growth (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_lengths, [k_tokens(n) for n in all_lengths])
        ax.minorticks_off()
        ax.set_xlabel("document length (tokens)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def frontier(points: Frontier, path: Path) -> Path:
    """Accuracy against prefill and decode tokens/s, one point per system (see
    :func:`benchmarks.pairing.frontier_points`); ``full`` as a dashed line."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    if points.full is not None:
        accuracy, samples = points.full
        for ax in axes:
            ax.axhline(
                accuracy, linestyle="--", color="grey", label=f"full, in window ({samples} samples)"
            )
    for point in points.points:
        for ax, speed in zip(axes, (point.prefill, point.decode), strict=True):
            ax.scatter([speed], [point.accuracy], marker="s" if point.system == "rag" else "o")
            ax.annotate(point.system, (speed, point.accuracy), fontsize=8, xytext=(4, 4), **_OFFSET)
    far_text = " and ".join(k_tokens(n) for n in points.lengths)
    axes[0].set_ylabel(f"accuracy at {far_text} ({points.samples} samples)")
    axes[0].set_xlabel(f"prefill tokens/s at {k_tokens(points.longest)}")
    axes[1].set_xlabel(f"decode tokens/s at {k_tokens(points.longest)}")
    axes[0].set_ylim(-0.05, 1.05)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8, loc="lower right")
    return _save(fig, path)


_OFFSET: dict[str, Any] = {"textcoords": "offset points"}


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
