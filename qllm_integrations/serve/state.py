"""What one app holds: settings, engine, documents, admission, metrics and its status.

A :class:`ServerState` lives on its app (``app.state.server``); nothing is kept in module
globals, so each Ray Serve replica (or test) has its own. Its status goes ``loading`` ->
``ok`` (or ``failed``) -> ``draining``; requests are served only while it is ``ok``.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable
from typing import Literal

from qllm_integrations.serve.documents import DocumentStore, ServableEngine
from qllm_integrations.serve.limits import Admission, InFlight
from qllm_integrations.serve.metrics import ServerMetrics
from qllm_integrations.serve.openai_schema import service_unavailable
from qllm_integrations.serve.settings import ServeSettings
from qllm_integrations.settings import ProviderSettings

logger = logging.getLogger(__name__)

Status = Literal["loading", "ok", "failed", "draining"]


class ServerState:
    """Everything one app holds: settings, engine, documents, admission, metrics, status."""

    def __init__(self, settings: ServeSettings, engine: ServableEngine | None) -> None:
        self.settings = settings
        self.engine = engine
        self.status: Status = "loading"
        self.failure = ""
        """Why loading failed (status ``failed``)."""
        self.model_name = settings.served_model_name or ""
        self.store: DocumentStore | None = None
        self.defaults: ProviderSettings | None = None
        self.admission = Admission(settings.max_queue)
        self.in_flight = InFlight()
        self.cutoff = math.inf
        """When requests still running are stopped (``time.monotonic()``): set on drain."""
        self.metrics = ServerMetrics(lambda: self.admission.depth, self._held)
        self.replica = f"{socket.gethostname()}:{os.getpid()}"
        self.on_failure: list[Callable[[], None]] = []
        """Called (from the loading thread) when the engine cannot be loaded: the command
        line stops the server."""

    def load(self) -> None:
        """Load the engine the settings name (blocking; run in a thread), then be ready."""
        try:
            self.ready(self.settings.engine_spec().load(progress=False))
        except Exception as error:
            self.status, self.failure = "failed", f"{type(error).__name__}: {error}"
            logger.error("the model could not be loaded: %s", self.failure)
            for callback in self.on_failure:
                callback()

    def ready(self, engine: ServableEngine) -> None:
        """Serve ``engine``."""
        self.engine = engine
        self.model_name = self.settings.served_model_name or engine.model_name
        self.store = DocumentStore(
            engine,
            self.settings.memory_path(),
            max_document_tokens=self.settings.max_document_tokens,
        )
        self.defaults = ProviderSettings(engine=engine, progress=False)
        if self.status == "loading":
            self.status = "ok"
            logger.info("serving %s (replica %s)", self.model_name, self.replica)

    def drain(self) -> None:
        """Refuse new requests from now on; stop those in flight after ``--shutdown-timeout``."""
        if self.status != "draining":
            self.status = "draining"
            self.cutoff = time.monotonic() + self.settings.shutdown_timeout

    def serving(self) -> tuple[ServableEngine, DocumentStore, ProviderSettings]:
        """The engine, documents and defaults; 503 while loading, failed or draining."""
        if self.status != "ok":
            raise service_unavailable(self._why())
        assert self.engine and self.store and self.defaults  # set by ready()
        return self.engine, self.store, self.defaults

    def _why(self) -> str:
        return {
            "loading": "the model is still loading; retry when GET /health says ok",
            "failed": f"the model could not be loaded ({self.failure})",
            "draining": "the server is shutting down; send the request to another one",
        }.get(self.status, "")

    def _held(self) -> tuple[int, int]:
        if self.store is None:
            return 0, 0
        return len(self.store.memories), self.store.memories.nbytes
