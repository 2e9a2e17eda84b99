"""Which model and engine settings a benchmark uses, passable to a child process."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EngineSpec:
    """A model source plus config choices; ``None`` everywhere means the embedded model."""

    model: str | None = None
    """Local model directory, ``.gguf`` file or hub id; ``None``: embedded SmolLM2-135M."""
    preset: str | None = None
    """A ``QLLMConfig`` preset name; ``None``: the engine's own default for the model."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Config fields set on top of the preset."""
    device: str | None = None

    def core(self) -> Any:
        """The same engine as a ``qllm_core.spec.EngineSpec`` (the one resolution)."""
        from qllm_core.spec import EngineSpec as CoreSpec

        return CoreSpec(
            source=self.model, preset=self.preset, overrides=self.overrides, device=self.device
        )

    def config(self) -> Any:
        """The ``QLLMConfig`` to build the engine with."""
        return self.core().resolved_config()

    def load(self) -> Any:
        """Load the model and build a ``QLLMEngine`` (no progress bars)."""
        return self.core().load(progress=False)

    def to_args(self) -> list[str]:
        """Command-line arguments that :func:`add_arguments` parses back into this spec."""
        args: list[str] = []
        if self.model is not None:
            args += ["--model", self.model]
        if self.preset is not None:
            args += ["--preset", self.preset]
        for key, value in self.overrides.items():
            args += ["--set", f"{key}={json.dumps(value)}"]
        if self.device is not None:
            args += ["--device", self.device]
        return args


def add_arguments(parser: Any) -> None:
    """Add ``--model``, ``--preset``, ``--set`` and ``--device`` to an argparse parser."""
    parser.add_argument(
        "--model",
        default=None,
        help="model directory, .gguf file or hub id (default: embedded SmolLM2)",
    )
    parser.add_argument("--preset", default=None, help="QLLMConfig preset name")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a QLLMConfig field (repeatable)",
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")


def from_arguments(args: Any) -> EngineSpec:
    """The spec that :func:`add_arguments`' options describe."""
    overrides: dict[str, Any] = {}
    for item in args.overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects FIELD=VALUE, got {item!r}")
        try:
            overrides[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key.strip()] = raw
    return EngineSpec(model=args.model, preset=args.preset, overrides=overrides, device=args.device)
