"""``quickllama serve``: the OpenAI-compatible server on uvicorn (or Ray Serve replicas).

    quickllama serve                                  # the embedded model, 127.0.0.1:8000
    quickllama serve --model ./my-llama --host 0.0.0.0 --api-key "$KEY"
    quickllama serve --replicas 2                     # Ray Serve, one engine per replica

Flags are checked before anything heavy is imported: a bad one prints the usage and a
message and exits 2. SIGTERM (or Ctrl-C) drains: ``/health`` says ``draining``, new
connections are refused, requests in flight get ``--shutdown-timeout`` seconds to finish
and are cancelled after; the process then exits 0 (130 after Ctrl-C).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import socket
import sys
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

import uvicorn

from qllm_core.config import PRESETS
from qllm_core.errors import ConfigError
from qllm_core.spec import DTYPES
from qllm_integrations.serve.settings import API_KEY_ENV_VAR, ServeSettings, keys_from_env

if TYPE_CHECKING:
    from qllm_integrations.serve.app import ServerState

EXIT_USAGE = 2
EXIT_LOAD_FAILED = 1
UVICORN_GRACE = 2
"""Seconds uvicorn waits past --shutdown-timeout before it cancels the app's tasks."""
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``quickllama serve`` (docs/SERVER.md)."""
    defaults = ServeSettings()
    parser = argparse.ArgumentParser(
        prog="quickllama serve",
        description="Serve a model over an OpenAI-compatible HTTP API (docs/SERVER.md).",
    )
    add = parser.add_argument
    add("--model", help="model directory, .gguf file or hub id (default: embedded SmolLM2-135M)")
    add("--preset", choices=sorted(PRESETS), help="engine config preset")
    add("--device", help="cpu, cuda, cuda:1, ... (default: CUDA when available)")
    add("--dtype", choices=DTYPES, help="weights' dtype (default: float32 on CPU)")
    add("--host", default=defaults.host, help=f"address to bind (default {defaults.host})")
    add("--port", type=int, default=defaults.port, help=f"port (default {defaults.port})")
    add(
        "--api-key",
        action="append",
        dest="api_keys",
        help=f"a key clients must send (repeat for several; default: ${API_KEY_ENV_VAR}, "
        "comma-separated; none: no key needed)",
    )
    add("--memory-dir", help="where document memories are kept (default: the cache dir)")
    add(
        "--max-queue",
        type=int,
        default=defaults.max_queue,
        help=f"requests accepted at once; one more is a 429 (default {defaults.max_queue})",
    )
    add(
        "--request-timeout",
        type=float,
        default=defaults.request_timeout,
        help=f"seconds a request may take; past it, 504 (default {defaults.request_timeout:g})",
    )
    add(
        "--max-body-bytes",
        type=int,
        default=defaults.max_body_bytes,
        help=f"largest request body; larger is a 413 (default {defaults.max_body_bytes})",
    )
    add("--max-document-tokens", type=int, help="longest document (default: the engine's)")
    add(
        "--shutdown-timeout",
        type=float,
        default=defaults.shutdown_timeout,
        help=f"seconds requests in flight get on SIGTERM (default {defaults.shutdown_timeout:g})",
    )
    add("--served-model-name", help="the model name clients send (default: the model's)")
    add("--log-level", choices=LOG_LEVELS, default=defaults.log_level)
    add("--replicas", type=int, help="run N Ray Serve replicas (needs quickllama[ray])")
    return parser


def settings_from(args: argparse.Namespace) -> ServeSettings:
    """The settings of parsed flags (keys from the environment when no --api-key).

    Raises:
        ConfigError: a value out of range, named by its flag.
    """
    return ServeSettings(
        model=args.model,
        preset=args.preset,
        device=args.device,
        dtype=args.dtype,
        host=args.host,
        port=args.port,
        api_keys=tuple(args.api_keys) if args.api_keys else keys_from_env(),
        memory_dir=args.memory_dir,
        max_queue=args.max_queue,
        request_timeout=args.request_timeout,
        max_body_bytes=args.max_body_bytes,
        max_document_tokens=args.max_document_tokens,
        shutdown_timeout=args.shutdown_timeout,
        served_model_name=args.served_model_name,
        log_level=args.log_level,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``quickllama serve``; the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as exit_:  # --help, or a usage error already printed
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    try:
        settings = settings_from(args)
        if args.replicas is not None and args.replicas < 1:
            raise ConfigError(f"--replicas must be a whole number >= 1, got {args.replicas}")
        if args.replicas is None:
            check_port_free(settings.host, settings.port)
    except ConfigError as error:
        parser.print_usage(sys.stderr)
        sys.stderr.write(f"quickllama serve: error: {error}\n")
        return EXIT_USAGE
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if args.replicas is not None:
        return _run_replicas(settings, args.replicas)
    serve(settings)


def check_port_free(host: str, port: int) -> None:
    """Refuse, before the model loads, an address this process cannot listen on.

    Raises:
        ConfigError: the port is taken (or the host is not this machine's), naming the flags.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ConfigError(
                f"cannot listen on {host}:{port} ({error.strerror}); pass another --port, "
                "or stop what listens there"
            ) from None


def serve(settings: ServeSettings) -> NoReturn:
    """Run one uvicorn server until SIGTERM or Ctrl-C, then end the process (:func:`_exit`).

    Its status: 0, 1 when the model could not be loaded, 130 after Ctrl-C.
    """
    from qllm_integrations.serve.app import create_app

    app = create_app(settings)
    state: ServerState = app.state.server
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # the app stops its requests at --shutdown-timeout; uvicorn cancels what is left
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout) + UVICORN_GRACE,
    )
    server = _DrainingServer(config, state)
    state.on_failure.append(server.stop)
    # uvicorn raises the signal it handled again once it has shut down; by then every
    # request has finished or been cancelled, so SIGTERM ends here with status 0.
    signal.signal(signal.SIGTERM, _drained)
    try:
        server.run()
    except KeyboardInterrupt:
        status = 130
    else:
        status = EXIT_LOAD_FAILED if state.failure else 0
    _exit(status)


def _exit(status: int) -> NoReturn:
    """End the process now, once the server has shut down.

    Its answers are closed and its documents written (each is renamed into place whole).
    Not through the interpreter's own exit: a thread of the engine may still be inside
    torch for a moment after its stream closed, and torch's thread pools, destroyed at
    interpreter exit under such a thread, abort the process (``terminate called without
    an active exception``, status -6; seen under load when SIGTERM cut an answer).
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, which tells the app to drain as it starts shutting down."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """SIGTERM or SIGINT: drain (``/health`` 503), then uvicorn's graceful shutdown."""
        self.state.drain()
        super().handle_exit(sig, frame)

    def stop(self) -> None:
        """Shut down (from any thread): the engine could not be loaded."""
        self.should_exit = True


def _drained(sig: int, frame: FrameType | None) -> None:
    """The SIGTERM handler after uvicorn's graceful shutdown: nothing is left to do."""


def _run_replicas(settings: ServeSettings, replicas: int) -> int:
    """Hand the settings to Ray Serve (:func:`qllm_integrations.serve.ray.run_replicas`)."""
    try:
        from qllm_integrations.serve.ray import run_replicas
    except ImportError as error:
        sys.stderr.write(
            f"quickllama serve: error: --replicas needs Ray Serve, which is not installed "
            f'({error.name}); install it with: pip install "quickllama[ray]"\n'
        )
        return EXIT_USAGE
    return run_replicas(settings, replicas)
