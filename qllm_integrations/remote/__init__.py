"""The providers' client of a quickllama server: the one implementation of the wire format.

A provider given ``base_url`` loads no model: the routing seam
(:func:`qllm_integrations.routing.provider_text_request`, ``provider_chat_request``) builds
a :class:`RemoteRequest` instead of a local :class:`~qllm_integrations.request.Request`,
with the same surface. The
wire format is docs/SERVER.md's: OpenAI's chat and completion objects, quickllama's own
fields at the top level of the body, and the provider metadata in the reply's
``quickllama`` field, passed through unchanged, so evidence, usage and memory reuse read as
they do locally.

- :mod:`.errors`: error replies as the same named errors (:mod:`qllm_core.errors`), plus
  :class:`ServerBusyError` (429), :class:`ServerUnavailableError` (unreachable, timed out,
  loading, draining), :class:`InvalidAPIKeyError` and :class:`ServerError`.
- :mod:`.client`: :class:`RemoteClient`, shared per :class:`ServerSpec`: retries of 429,
  502, 503 and network errors after ``Retry-After``; ``read_once`` through
  ``/v1/documents`` (a document known on this side is posted once, its id kept per hash and
  mode; a document the server must find in the messages is sent with ``read_once: true``).
- :mod:`.request`: :class:`RemoteRequest`, sync over the shared client, async over its own.
- :mod:`.wire`: server-sent events and replies read back into an
  :class:`~qllm_core.results.Answer`.

This package imports ``httpx``, but neither LangChain nor LlamaIndex nor torch.
"""

from qllm_integrations.remote.client import RemoteClient, ServerSpec, client_for, wire_options
from qllm_integrations.remote.errors import (
    InvalidAPIKeyError,
    ServerBusyError,
    ServerError,
    ServerUnavailableError,
    error_from_body,
    parse_retry_after,
)
from qllm_integrations.remote.request import RemoteRequest
from qllm_integrations.remote.wire import sse_data

__all__ = [
    "InvalidAPIKeyError",
    "RemoteClient",
    "RemoteRequest",
    "ServerBusyError",
    "ServerError",
    "ServerSpec",
    "ServerUnavailableError",
    "client_for",
    "error_from_body",
    "parse_retry_after",
    "sse_data",
    "wire_options",
]
