"""Named benchmark sizes: which lengths, depths and how many samples."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

K = 1024


@dataclass(frozen=True)
class Size:
    """How much of each experiment to run."""

    name: str
    needle_lengths: tuple[int, ...]
    """Document lengths (tokens) of the needle heatmap's columns."""
    needle_depths: tuple[float, ...]
    """Needle depths of the heatmap's rows (0.0 start, 1.0 end)."""
    task_lengths: tuple[int, ...]
    """Lengths for passkey, kv and multi_needle."""
    task_samples: int
    """Samples per (task, length) for passkey, kv and multi_needle (random depths)."""
    sweep_weights: tuple[float, ...]
    """question_weight values of the sweep (mode qllm)."""
    sweep_lengths: tuple[int, ...]
    sweep_samples: int
    """Samples per (task, length) in the sweep, for needle and kv."""
    speed_lengths: tuple[int, ...]
    """Lengths of the speed/memory points (one fresh process each) for the engine modes."""
    full_max_tokens: int
    """Longest document run in ``full`` mode; longer ones are reported as not run."""
    max_new_tokens: int | None = None
    """Cap on answer tokens (only for plumbing tests; real sizes use each task's own)."""
    tasks: tuple[str, ...] = ("passkey", "kv", "multi_needle")
    """Tasks run at ``task_lengths`` (``run``'s main part, and every sample of ``compare``)."""


SIZES: dict[str, Size] = {
    # End-to-end plumbing only (the smoke test, on a tiny random model).
    "tiny": Size(
        "tiny",
        needle_lengths=(192, 320),
        needle_depths=(0.0, 1.0),
        task_lengths=(256,),
        task_samples=1,
        sweep_weights=(0.0, 4.0),
        sweep_lengths=(256,),
        sweep_samples=1,
        speed_lengths=(),
        full_max_tokens=192,
        max_new_tokens=4,
    ),
    # About ten minutes on a 2-core CPU with the embedded model.
    "quick": Size(
        "quick",
        needle_lengths=(1 * K, 4 * K),
        needle_depths=(0.0, 0.5, 1.0),
        task_lengths=(2 * K,),
        task_samples=1,
        sweep_weights=(0.0, 1.0, 2.0, 4.0, 8.0),
        sweep_lengths=(2 * K,),
        sweep_samples=1,
        speed_lengths=(1 * K, 4 * K),
        full_max_tokens=8 * K,
    ),
    # The accuracy comparison at 4x the embedded model's window (``compare``): about 1-2 h per
    # engine system on a 2-core CPU. 4K and 8K are the in-window reference lengths.
    "standard": Size(
        "standard",
        needle_lengths=(),
        needle_depths=(),
        task_lengths=(4 * K, 8 * K, 16 * K, 32 * K),
        task_samples=5,
        sweep_weights=(),
        sweep_lengths=(),
        sweep_samples=0,
        speed_lengths=(),
        full_max_tokens=8 * K,
        tasks=("needle", "multi_needle", "two_hop"),
    ),
    # Hours: run on purpose, on a quiet machine.
    "full": Size(
        "full",
        needle_lengths=(4 * K, 8 * K, 16 * K, 32 * K, 64 * K, 128 * K),
        needle_depths=(0.0, 0.25, 0.5, 0.75, 1.0),
        task_lengths=(4 * K, 16 * K, 32 * K),
        task_samples=3,
        sweep_weights=(0.0, 1.0, 2.0, 4.0, 8.0),
        sweep_lengths=(16 * K,),
        sweep_samples=3,
        speed_lengths=(4 * K, 16 * K, 32 * K, 64 * K),
        full_max_tokens=16 * K,
    ),
}
SIZES["long"] = dataclasses.replace(SIZES["standard"], name="long", task_lengths=(64 * K, 128 * K))
"""Far beyond the window (issue 22): 8x and 16x the embedded model's trained context, the
tasks, samples and generator of ``standard``. A 128K read takes about 4 minutes here."""
