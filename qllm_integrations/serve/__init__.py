"""``quickllama serve``: an OpenAI-compatible HTTP server over one engine (extra ``serve``).

The wire contract is docs/SERVER.md. Nothing heavy is imported here: ``create_app`` (and
with it FastAPI) is resolved on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qllm_integrations.serve.app import create_app
    from qllm_integrations.serve.settings import ServeSettings

_LAZY = {
    "create_app": "qllm_integrations.serve.app",
    "ServeSettings": "qllm_integrations.serve.settings",
}

__all__ = ["ServeSettings", "create_app"]  # noqa: F822 (resolved by __getattr__)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'qllm_integrations.serve' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
