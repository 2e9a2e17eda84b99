"""The FastAPI app of ``quickllama serve``: an OpenAI-compatible API over one engine.

:func:`create_app` builds everything from a :class:`ServeSettings` (and, in tests, an
engine already built); all state lives on the app (``app.state.server``, a
:class:`ServerState`), none in module globals, so Ray Serve builds one app per replica.
The engine loads in a background thread at startup; ``/health`` is 503 until it is ready
and again once the server drains (SIGTERM). The wire format is docs/SERVER.md.

Engine work never runs on the event loop: a request is built and its answer streamed in
worker threads (:mod:`qllm_integrations._async`). When a client goes away mid-stream,
or the request's deadline passes, the engine's stream is closed after the step in
progress, which frees the engine for the next request.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from qllm_core.errors import QLLMError
from qllm_core.inputs.prompt import encode_chat, encode_text
from qllm_integrations._async import iterate_in_thread, run_in_thread
from qllm_integrations.content import attached_text
from qllm_integrations.request import Request as ProviderRequest
from qllm_integrations.serve.completions import (
    Body,
    Reply,
    build_request,
    check_document_tokens,
)
from qllm_integrations.serve.documents import ServableEngine, key_hash
from qllm_integrations.serve.limits import (
    ASGIApp,
    BodyLimit,
    Message,
    Receive,
    Scope,
    Send,
    before_deadline,
    timed_out,
)
from qllm_integrations.serve.metrics import CONTENT_TYPE, CountResponses
from qllm_integrations.serve.openai_schema import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    DocumentRequest,
    TokenizeRequest,
    invalid,
    parse_request,
)
from qllm_integrations.serve.settings import ServeSettings
from qllm_integrations.serve.state import ServerState
from qllm_integrations.serve.streaming import (
    ClosingStream,
    answer_items,
    events,
    first_item,
    whole,
)

logger = logging.getLogger(__name__)

REPLICA_HEADER = "x-quickllama-replica"
"""Response header naming the process that answered (``hostname:pid``)."""

SHUTDOWN_WAIT = 30.0
"""Longest wait at exit for answers whose streams are closing (each takes one step)."""


def create_app(settings: ServeSettings, engine: ServableEngine | None = None) -> FastAPI:
    """The app serving ``engine``, or the one ``settings`` names (loaded in the background)."""
    state = ServerState(settings, engine)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if state.engine is not None:
            state.ready(state.engine)
        else:
            threading.Thread(target=state.load, name="quickllama-load", daemon=True).start()
        yield
        state.drain()
        if not await run_in_thread(state.in_flight.wait_idle, SHUTDOWN_WAIT):
            logger.warning("%d answers still open at exit", state.in_flight.count)

    app = FastAPI(title="quickllama", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = state
    # the last added runs first: every response is tagged, and counted (413s included)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(CountResponses, metrics=state.metrics)
    app.add_middleware(ReplicaHeader, replica=state.replica)
    _add_error_handlers(app)
    _add_routes(app, state)
    return app


def _add_routes(app: FastAPI, state: ServerState) -> None:
    settings = state.settings

    def owner(request: Request) -> str | None:
        """The caller's key hash (``None`` without keys); 401 for a missing or wrong key."""
        if not settings.api_keys:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip().encode() if scheme.lower() == "bearer" else b""
        matched = None
        for key in settings.api_keys:
            if hmac.compare_digest(given, key.encode()):
                matched = key
        if matched is None:
            raise APIError(
                401,
                "missing or wrong API key: send the header Authorization: Bearer <key> "
                "(OpenAI clients: api_key=)",
                "invalid_api_key",
            )
        return key_hash(matched)

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.status == "ok":
            return JSONResponse({"status": "ok", "model": state.model_name})
        body: dict[str, Any] = {"status": state.status}
        if state.status == "failed":
            body["message"] = state.failure
        return JSONResponse(body, status_code=503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models(_: str | None = Depends(owner)) -> dict[str, Any]:
        engine = state.serving()[0]
        model = {
            "id": state.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "quickllama",
            "max_model_len": engine.max_input_tokens,
        }
        return {"object": "list", "data": [model]}

    @app.post("/v1/tokenize")
    async def tokenize(request: Request, _: str | None = Depends(owner)) -> dict[str, Any]:
        engine = state.serving()[0]
        body = TokenizeRequest.model_validate(await _json(request))
        _check_model(state, body.model)
        tokens = await run_in_thread(_token_ids, engine, body)
        return {"tokens": tokens, "count": len(tokens), "max_model_len": engine.max_input_tokens}

    @app.post("/v1/chat/completions")
    async def chat(request: Request, key: str | None = Depends(owner)) -> Response:
        body = parse_request(await _json(request), ChatCompletionRequest)
        return await _complete(state, body, key, request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request, key: str | None = Depends(owner)) -> Response:
        body = parse_request(await _json(request), CompletionRequest)
        return await _complete(state, body, key, request, chat=False)

    @app.post("/v1/documents")
    async def post_document(request: Request, key: str | None = Depends(owner)) -> JSONResponse:
        _, store, _ = state.serving()
        text, mode = await _document_input(request)
        ticket = state.admission.admit()
        try:
            record = await run_in_thread(store.post, text, mode, key)
        finally:
            ticket.release()
        return JSONResponse(record, status_code=200 if record["reused"] else 201)

    @app.get("/v1/documents/{document_id}")
    async def get_document(document_id: str, key: str | None = Depends(owner)) -> Any:
        _, store, _ = state.serving()
        return await run_in_thread(store.record, document_id, key)

    @app.delete("/v1/documents/{document_id}")
    async def delete_document(document_id: str, key: str | None = Depends(owner)) -> Any:
        _, store, _ = state.serving()
        return await run_in_thread(store.delete, document_id, key)


async def _complete(
    state: ServerState, body: Body, key: str | None, client: Request, *, chat: bool
) -> Response:
    """Answer a parsed completion request: a JSON response, or an event stream."""
    engine, store, defaults = state.serving()
    _check_model(state, body.model)
    settings = state.settings
    ticket = state.admission.admit()
    deadline = time.monotonic() + settings.request_timeout

    def prepare() -> ProviderRequest:
        document = store.open(body.document_id, key) if body.document_id else None
        request = build_request(engine, state.model_name, body, defaults, document)
        check_document_tokens(engine, request, settings.max_document_tokens)
        return request

    try:
        try:
            request = await asyncio.wait_for(run_in_thread(prepare), settings.request_timeout)
        except asyncio.TimeoutError:
            raise timed_out(settings.request_timeout) from None
        reply = Reply(chat, state.model_name, request)
        produced = iterate_in_thread(lambda: answer_items(request, state))
        items = before_deadline(produced, deadline, settings.request_timeout, lambda: state.cutoff)
        if not body.stream:
            try:
                return await whole(reply, items, client)
            finally:
                ticket.release()
        first = await first_item(items, client)  # errors before the first token are HTTP errors
    except BaseException:
        ticket.release()
        raise

    async def close() -> None:
        await items.aclose()
        ticket.release()

    events_out = events(reply, first, items, body.include_usage)
    return ClosingStream(events_out, on_close=close, media_type="text/event-stream")


def _check_model(state: ServerState, model: str | None) -> None:
    """404 for a ``model`` other than the served one (``None``: the served one)."""
    if model is not None and model != state.model_name:
        raise APIError(
            404,
            f"model {model!r} is not served here; this server serves "
            f"{state.model_name!r} (GET /v1/models)",
            "model_not_found",
            param="model",
        )


def _token_ids(engine: ServableEngine, body: TokenizeRequest) -> list[int]:
    """Token ids as the providers count them locally.

    A prompt: caller text, special tokens split; messages: the chat template of the
    non-blank turns (the ``direct`` route's encoding).
    """
    turns = body.turns()
    if turns is None:
        return encode_text(engine.tokenizer, body.prompt or "")
    turns = [(role, text) for role, text in turns if text.strip()]
    return encode_chat(engine.tokenizer, turns) if turns else []


async def _json(request: Request) -> object:
    """The body as JSON; 400 when it is not."""
    raw = await request.body()
    try:
        return json.loads(raw)
    except ValueError as error:
        message = f"the request body is not valid JSON ({error})"
        raise APIError(400, message, "invalid_value") from None
    except RecursionError:
        message = "the request body nests arrays or objects too deeply to read; flatten it"
        raise APIError(400, message, "invalid_value") from None


async def _document_input(request: Request) -> tuple[str, str | None]:
    """``(text, mode)`` of a document post: JSON ``{"text", "mode"}`` or a multipart file."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise APIError(
                400,
                "a multipart document post needs a file field named 'file' (UTF-8 text)",
                "invalid_value",
                param="file",
            )
        name = upload.filename or "uploaded file"
        text = attached_text(await upload.read(), f"file {name!r}")
        mode = form.get("mode")
        return text, mode if isinstance(mode, str) and mode else None
    body = DocumentRequest.model_validate(await _json(request))
    return body.text, body.mode


class ReplicaHeader:
    """ASGI middleware: the ``x-quickllama-replica`` header on every response."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app = app
        self.header = (REPLICA_HEADER.encode(), replica.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app, adding the header to its response."""

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, tagged)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's shape (docs/SERVER.md, Errors)."""

    def reply(error: APIError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(APIError)
    async def api_error(_: Request, error: APIError) -> JSONResponse:
        return reply(error)

    @app.exception_handler(QLLMError)
    async def engine_error(_: Request, error: QLLMError) -> JSONResponse:
        return reply(APIError.from_engine(error))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        param = ".".join(str(part) for part in first["loc"])
        return reply(APIError(400, f"{param}: {first['msg']}", "invalid_value", param=param))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "error")
        body = APIError(error.status_code, str(error.detail), code).body()
        return JSONResponse(body, status_code=error.status_code)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, error: Exception) -> JSONResponse:
        # uvicorn logs the traceback (Starlette raises the error again after this reply)
        message = f"internal error ({type(error).__name__}); the server's log has the details"
        return JSONResponse(APIError(500, message, "internal_error").body(), status_code=500)

    @app.exception_handler(ValidationError)
    async def body_error(_: Request, error: ValidationError) -> JSONResponse:
        return reply(invalid(error))
