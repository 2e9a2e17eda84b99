"""Where a benchmark writes: raw records, committed summaries, figures and BENCHMARKS.md."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Paths:
    """All output locations under one root (the repository, or a test's tmp_path)."""

    root: Path = REPO_ROOT

    @property
    def out(self) -> Path:
        """Per-sample JSONL records and logs (gitignored)."""
        return self.root / "benchmarks" / "out"

    @property
    def results(self) -> Path:
        """Small JSON summaries BENCHMARKS.md is rendered from (committed)."""
        return self.root / "benchmarks" / "results"

    @property
    def figures(self) -> Path:
        """PNG figures BENCHMARKS.md embeds (committed)."""
        return self.root / "benchmarks" / "figures"

    @property
    def report(self) -> Path:
        """The rendered report."""
        return self.root / "BENCHMARKS.md"

    def link(self, path: Path) -> str:
        """``path`` relative to the report, for a Markdown link."""
        return path.relative_to(self.report.parent).as_posix()


def save_json(path: Path, data: Any) -> Path:
    """Write ``data`` as indented JSON, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return path


def load_json(path: Path) -> Any:
    """The JSON in ``path``, or ``None`` when it does not exist."""
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
