"""``quickllama serve``: an OpenAI-compatible HTTP server over one engine (extra ``serve``).

The wire contract is docs/SERVER.md. Nothing heavy is imported here: ``create_app`` (and
with it FastAPI) is resolved on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qllm_integrations._lazy import lazy_attributes

if TYPE_CHECKING:
    from qllm_integrations.serve.app import create_app
    from qllm_integrations.serve.settings import ServeSettings

_LAZY = {
    "create_app": "qllm_integrations.serve.app",
    "ServeSettings": "qllm_integrations.serve.settings",
}

__all__ = ["ServeSettings", "create_app"]  # noqa: F822 (resolved by __getattr__)


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
