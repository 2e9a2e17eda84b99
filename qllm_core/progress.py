"""A progress bar for long prefills, shown on stderr in tokens per second."""

from __future__ import annotations

import sys
from typing import Protocol


class ProgressLike(Protocol):
    """What the engine needs from a progress bar."""

    def update(self, n: int = 1) -> object:
        """Advance the bar by ``n`` tokens."""
        ...

    def close(self) -> None:
        """Finish the bar (it stays on screen)."""
        ...


def prefill_progress(total_tokens: int, enabled: bool | None = None) -> ProgressLike:
    """A tqdm bar over ``total_tokens`` prompt tokens.

    Args:
        total_tokens: tokens the prefill will read.
        enabled: ``True`` always shows the bar, ``False`` never; ``None`` shows it only
            when stderr is a terminal.

    """
    from tqdm import tqdm

    if enabled is None:
        enabled = _stderr_is_terminal()
    return tqdm(
        total=total_tokens,
        desc="reading",
        unit="tok",
        unit_scale=True,
        disable=not enabled,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
    )


def _stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())
