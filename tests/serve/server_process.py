"""A real ``quickllama serve`` process on a free port, for the server's tests.

:func:`start_server` runs the installed command (the one users run) on the tiny random
model of :func:`fakes.tiny_model_dir`, waits until ``GET /health`` says ready, yields a
:class:`ServerProcess`, and on exit stops it: SIGTERM (uvicorn's graceful shutdown), then
SIGKILL if it has not exited within ``STOP_SECONDS``. The server's output goes to a log
file whose tail is part of every error, so a server that fails to start says why.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from fakes import tiny_model_dir

START_SECONDS = 120.0
"""Longest wait for ``/health`` to say ready (loading torch on the shared CPU is slow)."""
STOP_SECONDS = 30.0
"""Longest wait for the process to exit after SIGTERM before it is killed."""


@dataclass
class ServerProcess:
    """A running server: where it listens, its process and its log."""

    base_url: str
    """``http://127.0.0.1:<port>`` (no trailing slash, no ``/v1``)."""
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    """The server's stdout and stderr."""
    model: str = ""
    """The served model name, as ``/health`` reports it."""

    def log(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = STOP_SECONDS) -> int:
        """SIGTERM, wait up to ``timeout`` seconds (then SIGKILL); the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def quickllama_command() -> list[str]:
    """The installed ``quickllama`` script of this interpreter's environment."""
    script = Path(sys.executable).with_name("quickllama")
    if not script.exists():
        raise RuntimeError(f"{script} is missing: install the project with pip install -e .[dev]")
    return [str(script)]


@contextlib.contextmanager
def start_server(*extra_args: str, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """Run ``quickllama serve --model <tiny model> --port <free port> *extra_args``.

    ``--model`` and ``--memory-dir`` default to the tiny model and a fresh temporary
    directory (removed on exit) unless ``extra_args`` gives them. ``env`` is added to this
    process's environment. Yields once ``/health`` is 200; stops the server on exit.
    """
    args = list(extra_args)
    scratch = Path(tempfile.mkdtemp(prefix="qllm-serve-test-"))
    if "--model" not in args:
        args = ["--model", tiny_model_dir(), *args]
    if "--memory-dir" not in args:
        args += ["--memory-dir", str(scratch / "memories")]
    port = free_port()
    log_path = scratch / "server.log"
    command = [*quickllama_command(), "serve", "--port", str(port), *args]
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True
        )
    server = ServerProcess(f"http://127.0.0.1:{port}", process, port, log_path)
    try:
        server.model = _wait_ready(server)
        yield server
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def _wait_ready(server: ServerProcess) -> str:
    """Poll ``/health`` until 200; the model name. Raises with the log if it never is."""
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            status = server.process.returncode
            raise RuntimeError(f"the server exited with status {status}:\n{server.log()[-4000:]}")
        with contextlib.suppress(httpx.TransportError):
            reply = httpx.get(f"{server.base_url}/health", timeout=5)
            if reply.status_code == 200:
                return str(reply.json()["model"])
        time.sleep(0.2)
    raise RuntimeError(f"the server was not ready in {START_SECONDS} s:\n{server.log()[-4000:]}")


def chat_body(tokens: int, stream: bool) -> dict:
    """A chat completion body whose answer is exactly ``tokens`` long (no early end)."""
    return {
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": tokens,
        "min_new_tokens": tokens,
        "stream": stream,
    }
