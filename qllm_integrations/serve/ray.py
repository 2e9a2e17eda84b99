"""Scale-out on Ray Serve: the server's app on N replicas, one engine each (extra ``ray``).

Each replica of :class:`QuickllamaReplica` loads its own engine (one GPU each on a GPU
cluster) and serves the very app of :func:`~qllm_integrations.serve.app.create_app`, so the
routes, errors and headers are those of one ``quickllama serve`` (docs/SERVER.md), behind
Ray Serve's HTTP proxy. Replicas share documents through the ``--memory-dir`` they all
mount; a request naming a document is routed to a replica that holds its memory already
(:mod:`qllm_integrations.serve.ray_router`). Ray Serve replaces a replica that dies; the
requests it was running fail (their clients get an error), the others are not touched.

Three ways in:

- ``quickllama serve --replicas N ...``: :func:`run_replicas` (starts or joins Ray, serves
  until SIGTERM or Ctrl-C);
- ``serve run qllm_integrations.serve.ray:app replicas=N model=... memory_dir=...``:
  :func:`app`, a Ray Serve application builder taking the ``quickllama serve`` flags;
- from Python: ``serve.run(build_app(settings, replicas=N))``.

Load: a replica takes at most ``--max-queue`` requests at once (Ray Serve's
``max_ongoing_requests``), and each Serve proxy queues at most as many more; beyond, the
proxy answers 429 with ``Retry-After`` (Ray Serve's own body, not OpenAI's error shape).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import typing
from types import FrameType, NoneType, UnionType
from typing import TYPE_CHECKING, Any

import ray
from ray import serve
from ray.serve.config import BackpressureConfig
from ray.serve.deployment import Application

from qllm_core.errors import ConfigError
from qllm_integrations.serve.ray_router import DOCUMENTS_STAT, DocumentAffinityRouter
from qllm_integrations.serve.settings import ServeSettings, keys_from_env

if TYPE_CHECKING:
    from fastapi import FastAPI

    from qllm_integrations.serve.app import ServerState
    from qllm_integrations.serve.documents import ServableEngine

logger = logging.getLogger(__name__)

APP_NAME = "quickllama"
"""The Ray Serve application's name (``serve status``, ``serve.delete``)."""
ROUTING_STATS_PERIOD_S = 1.0
"""How often Serve asks each replica which document memories it holds."""
RETRY_AFTER_S = 1.0
"""``Retry-After`` of the 429 a Serve proxy answers when every replica and its queue are full."""
REPLICA_FLAGS = ("replicas", "num_gpus", "num_cpus")
"""Arguments of :func:`app` that are not :class:`ServeSettings` fields."""


@serve.ingress()
class QuickllamaReplica:
    """One replica: its own engine, serving :func:`~qllm_integrations.serve.app.create_app`.

    The engine is loaded in the constructor, so Serve routes nothing to a replica before
    its model is ready (and a model that cannot load fails the deployment, with the error).
    """

    def __init__(self, settings: ServeSettings) -> None:
        self._settings = settings
        # blocks this replica's user code thread only: Serve's own calls go on meanwhile
        self._engine = settings.engine_spec().load(progress=False)
        self._state: ServerState | None = None

    def __serve_build_asgi_app__(self) -> FastAPI:
        """The server's app over this replica's engine (Serve calls this once, after init)."""
        from qllm_integrations.serve.app import create_app

        engine: ServableEngine = self._engine
        app = create_app(self._settings, engine)
        self._state = app.state.server
        return app

    async def check_health(self) -> None:
        """Serve's health check: the app is serving (it becomes so right after startup)."""
        state = self._server()
        while state.status == "loading":
            await asyncio.sleep(0.01)
        if state.status == "failed":
            raise RuntimeError(f"the replica cannot serve: {state.failure}")

    def record_routing_stats(self) -> dict[str, list[str]]:
        """What the request router knows of this replica: the documents it holds in RAM."""
        store = self._server().store
        held = [] if store is None else [str(key) for key in store.memories.keys()]
        return {DOCUMENTS_STAT: held}

    def _server(self) -> ServerState:
        if self._state is None:
            raise RuntimeError("the replica's app is not built yet")
        return self._state


def build_app(
    settings: ServeSettings,
    *,
    replicas: int = 1,
    num_gpus: float = 0.0,
    num_cpus: float = 1.0,
) -> Application:
    """The Ray Serve application: ``replicas`` engines built from ``settings``.

    ``num_gpus`` and ``num_cpus`` are reserved per replica (``num_gpus=1``: each replica
    sees its own GPU as ``cuda``, i.e. ``cuda:0``). ``settings.host`` and ``port`` are not
    used here: they are the Serve proxy's (:func:`run_replicas`).

    Raises:
        ConfigError: ``replicas`` below 1, a negative ``num_gpus`` or ``num_cpus``.
    """
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ConfigError(f"--replicas must be a whole number >= 1, got {replicas!r}")
    if num_gpus < 0 or num_cpus < 0:
        raise ConfigError(f"num_gpus and num_cpus must be >= 0, got {num_gpus} and {num_cpus}")
    deployment = serve.deployment(
        num_replicas=replicas,
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus},
        max_ongoing_requests=settings.max_queue,
        max_queued_requests=settings.max_queue,
        backpressure_config=BackpressureConfig(status_code=429, retry_after_s=RETRY_AFTER_S),
        graceful_shutdown_timeout_s=max(settings.shutdown_timeout, 1.0),
        request_router_config={
            "request_router_class": DocumentAffinityRouter,
            "request_routing_stats_period_s": ROUTING_STATS_PERIOD_S,
        },
    )(QuickllamaReplica)
    return deployment.bind(settings)


def app(args: dict[str, str]) -> Application:
    """Application builder for ``serve run qllm_integrations.serve.ray:app key=value ...``.

    Keys: those of :func:`settings_from_args`, plus ``replicas``, ``num_gpus`` (``1`` for
    GPU replicas; default 0) and ``num_cpus`` (default 1) as for :func:`build_app`.

    Raises:
        ConfigError: an unknown key or a bad value, named.
    """
    settings = settings_from_args(args)
    replicas = _parse("replicas", args.get("replicas", "1"), int)
    num_gpus = _parse("num_gpus", args.get("num_gpus", "0"), float)
    num_cpus = _parse("num_cpus", args.get("num_cpus", "1"), float)
    return build_app(settings, replicas=replicas, num_gpus=num_gpus, num_cpus=num_cpus)


def settings_from_args(args: dict[str, str]) -> ServeSettings:
    """The settings of ``serve run`` arguments (``key=value``, every value a string).

    Keys are :class:`ServeSettings` fields, i.e. ``quickllama serve`` flags with ``_`` for
    ``-`` (``model``, ``memory_dir``, ``max_queue``, ...; ``api_keys`` comma-separated,
    default ``$QUICKLLAMA_API_KEY``); those of :data:`REPLICA_FLAGS` are skipped.

    Raises:
        ConfigError: an unknown key or a bad value, named.
    """
    fields = typing.get_type_hints(ServeSettings)
    values: dict[str, Any] = {"api_keys": keys_from_env()}
    for key, text in args.items():
        if key in REPLICA_FLAGS:
            continue
        if key not in fields:
            known = sorted({*fields, *REPLICA_FLAGS})
            raise ConfigError(f"serve run: unknown argument {key!r}; known: {known}")
        values[key] = _parse(key, str(text), fields[key])
    return ServeSettings(**values)


def _parse(key: str, text: str, annotation: Any) -> Any:
    """``text`` as a value of ``annotation`` (``int | None``: an int; a tuple: split at ``,``)."""
    if isinstance(annotation, UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(kind for kind in typing.get_args(annotation) if kind is not NoneType)
    if typing.get_origin(annotation) is tuple:
        return tuple(part.strip() for part in text.split(",") if part.strip())
    try:
        return annotation(text)
    except ValueError:
        message = f"serve run: {key}={text!r} is not of type {annotation.__name__}"
        raise ConfigError(message) from None


def run_replicas(settings: ServeSettings, replicas: int) -> int:
    """``quickllama serve --replicas N``: serve on Ray until SIGTERM or Ctrl-C; exit status.

    Joins the Ray cluster of ``RAY_ADDRESS`` (or one ``ray start`` left on this machine),
    else starts one here; starts Serve's proxy on ``settings.host:port``; deploys
    :func:`build_app` (one GPU per replica where ``--device`` names CUDA, or is unset and
    the cluster has GPUs) and waits until every replica has loaded its model. On SIGTERM or
    SIGINT it deletes the application (replicas get ``--shutdown-timeout`` seconds to finish
    their requests), shuts Serve down unless other applications run on it, and leaves Ray.
    Returns 0 (130 after Ctrl-C), or 1 when the deployment fails (a model that cannot load).
    """
    connect = not ray.is_initialized()
    if connect:
        ray.init(logging_level=logging.getLevelName(settings.log_level.upper()))
    stop = _StopOnSignal()
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        application = build_app(settings, replicas=replicas, num_gpus=_gpus_per_replica(settings))
        serve.run(application, name=APP_NAME, route_prefix="/")
        model = settings.model or "the embedded model"
        where = f"http://{settings.host}:{settings.port}"
        logger.info("serving %s on %s with %d replica(s)", model, where, replicas)
        stop.wait()
    except RuntimeError as error:  # Serve's DEPLOY_FAILED, with the replicas' error
        logger.error("the replicas could not be deployed: %s", error)
        return 1
    finally:
        stop.restore()
        _leave(connect)
    return 130 if stop.signal == signal.SIGINT else 0


class _StopOnSignal:
    """SIGTERM and SIGINT set an event (instead of killing the process) until restored."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._event = threading.Event()
        self._previous = {sig: signal.signal(sig, self._handle) for sig in _SIGNALS}

    def _handle(self, sig: int, frame: FrameType | None) -> None:
        self.signal = sig
        self._event.set()

    def wait(self) -> None:
        """Block until a signal came."""
        self._event.wait()

    def restore(self) -> None:
        """The handlers there were before."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _leave(disconnect: bool) -> None:
    """Delete the application, then Serve once nothing else runs on it, then leave Ray."""
    serve.delete(APP_NAME)
    if not serve.status().applications:
        serve.shutdown()
    if disconnect:
        ray.shutdown()


def _gpus_per_replica(settings: ServeSettings) -> float:
    """1 where ``--device`` names CUDA, or is unset and the (connected) cluster has GPUs."""
    if settings.device is not None:
        return 1.0 if settings.device.startswith("cuda") else 0.0
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
