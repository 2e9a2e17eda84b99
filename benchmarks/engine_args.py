"""The benchmark commands' engine options, read into the core's ``EngineSpec`` and back.

``--model``, ``--preset``, ``--set FIELD=VALUE`` and ``--device`` describe the engine a
command loads; :func:`to_args` writes a spec back as those options, so a child process
(a throughput point) loads the same engine.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from qllm_core.errors import ConfigError
from qllm_core.spec import EngineSpec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--model``, ``--preset``, ``--set`` and ``--device`` to ``parser``."""
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


def from_arguments(args: argparse.Namespace) -> EngineSpec:
    """The spec that :func:`add_arguments`' options describe (a bad one exits with why)."""
    overrides: dict[str, Any] = {}
    for item in args.overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects FIELD=VALUE, got {item!r}")
        try:
            overrides[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key.strip()] = raw
    try:
        return EngineSpec(
            source=args.model, preset=args.preset, overrides=overrides, device=args.device
        )
    except (ConfigError, TypeError) as error:  # TypeError: a field QLLMConfig lacks
        raise SystemExit(str(error)) from error


def to_args(spec: EngineSpec) -> list[str]:
    """The options that :func:`from_arguments` reads back into ``spec``.

    Raises ``ValueError`` for a spec these options cannot say: a full ``config`` (give
    ``preset`` and ``overrides``) or a ``dtype``.
    """
    if spec.config is not None or spec.dtype is not None:
        raise ValueError(
            "a benchmark's engine is given as preset and overrides (no config= or dtype=), "
            f"so that a child process can load it from options; got {spec}"
        )
    args: list[str] = []
    if spec.source is not None:
        args += ["--model", spec.source]
    if spec.preset is not None:
        args += ["--preset", spec.preset]
    for key, value in spec.overrides.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    if spec.device is not None:
        args += ["--device", spec.device]
    return args


def load_engine(spec: EngineSpec) -> Any:
    """The engine ``spec`` describes, decoding greedily with no repetition guard.

    Every recorded result was decoded so (an engine's own defaults may add a guard:
    ``GenerationOptions.default_for``); a variant that wants one names it in its options,
    so a resumed run answers its new samples exactly as its first ones.
    """
    from qllm_core.options import GenerationOptions

    engine = spec.load(progress=False)
    engine.generation_defaults = GenerationOptions()
    return engine
