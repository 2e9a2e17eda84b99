"""ChatQLLM: a LangChain chat model that reads whole documents with Q-LLM.

A translator: LangChain messages become ``(role, text)`` turns (content blocks as
:mod:`qllm_integrations.content` says), :mod:`qllm_integrations.routing` decides the
route and builds the request that runs the engine, and its answer becomes an
``AIMessage``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput, ModelProfile
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import InputTokenDetails, UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool

from qllm_core.errors import InvalidDocumentError
from qllm_core.inputs.documents import check_text
from qllm_core.protocol import EngineProtocol
from qllm_core.results import Answer
from qllm_integrations._async import run_in_thread
from qllm_integrations.content import (
    attached_text,
    decode_base64,
    is_text_mimetype,
    join_blocks,
    not_text,
)
from qllm_integrations.evidence import Evidence
from qllm_integrations.langchain.progress import async_progress_listener, progress_listener
from qllm_integrations.request import PROVIDER, ProviderRequest, answer_events, usage
from qllm_integrations.routing import provider_chat_request
from qllm_integrations.settings import ProviderSettings, call_options

_SKIPPED_BLOCKS = frozenset(
    {"reasoning", "thinking", "tool_call", "tool_call_chunk", "invalid_tool_call", "tool_use"}
)
"""Blocks of assistant turns that are not text the model should re-read."""


class LangChainSettings(ProviderSettings):
    """The provider settings plus LangChain's standard parameters and hooks, for both classes.

    Listed first among the bases of ``ChatQLLM`` and ``QLLM``, so its methods take the
    place of ``BaseLanguageModel``'s.
    """

    streaming: bool = False
    """Whether ``invoke`` streams internally (so callbacks see every token)."""

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self.identifying_params()

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider=PROVIDER,
            ls_model_name=kwargs.get("model") or self.model_label(),
            ls_model_type="chat" if isinstance(self, BaseChatModel) else "llm",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get(
                "max_new_tokens", kwargs.get("max_tokens", self.max_new_tokens)
            ),
        )
        stops = [stop] if isinstance(stop, str) else stop or self.stop
        if isinstance(stops, list) and stops:  # a bad stop is refused by the call itself
            params["ls_stop"] = stops
        return params

    # Bytes are a Sequence to LangChain, which would read them as a list of messages and
    # fail on the first int; the public entry points refuse them as the engine does.
    def invoke(self, input: Any, config: Any = None, **kwargs: Any) -> Any:
        """LangChain's ``invoke``; bytes are refused with ``InvalidDocumentError``."""
        return super().invoke(_checked_input(input), config, **kwargs)  # type: ignore[misc]

    async def ainvoke(self, input: Any, config: Any = None, **kwargs: Any) -> Any:
        """LangChain's ``ainvoke``; bytes are refused with ``InvalidDocumentError``."""
        return await super().ainvoke(_checked_input(input), config, **kwargs)  # type: ignore[misc]

    def stream(self, input: Any, config: Any = None, **kwargs: Any) -> Any:
        """LangChain's ``stream``; bytes are refused (at the call) with ``InvalidDocumentError``."""
        return super().stream(_checked_input(input), config, **kwargs)  # type: ignore[misc]

    def astream(self, input: Any, config: Any = None, **kwargs: Any) -> Any:
        """LangChain's ``astream``; bytes are refused (at the call), as by ``stream``."""
        return super().astream(_checked_input(input), config, **kwargs)  # type: ignore[misc]

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` as the engine reads caller text (special tokens split).

        Loads the engine, or asks the server (``base_url``). ``get_num_tokens`` counts these.
        """
        return self.token_ids(text)


def _checked_input(model_input: Any) -> Any:
    """``model_input``, unless it is bytes (refused as the engine refuses a bytes prompt)."""
    if isinstance(model_input, bytes | bytearray):
        check_text("prompt", model_input)
    return model_input


class ChatQLLM(LangChainSettings, BaseChatModel):
    """Chat model over a quickllama engine: pass a whole document, ask about it.

    The last user message is the question; system messages, earlier messages, tool results
    and ``text-plain`` blocks are the document (see :mod:`qllm_integrations.routing`).
    Pass ``question=`` / ``document=`` to ``invoke`` or ``bind`` to say so explicitly. A
    conversation that fits the engine's local window is sent whole, in the model's chat
    template (route ``direct``).

    Example:
        .. code-block:: python

            from qllm_integrations.langchain import ChatQLLM, get_evidence

            chat = ChatQLLM(max_new_tokens=128)  # the embedded model, loaded on first use
            reply = chat.invoke("Who signed it?", document=open("report.txt").read())
            get_evidence(reply)  # the passages it used, most relevant first, with scores

    The engine is shared process-wide by its :class:`~qllm_core.spec.EngineSpec`; pass
    ``engine=`` to use one already built. Requests on one engine share its model and
    interleave step by step (each forward step holds the model's lock).

    With ``read_once=True`` a document is read once, question-free, and kept in
    the engine's memory cache: the next question about the same text reads only itself
    (``response_metadata["memory_reused"]`` is ``True``, and ``usage_metadata`` counts
    the document's tokens as ``input_token_details["cache_read"]``). ``read_once=False``
    reads the document again for every question, with the question before and after it.

    With ``base_url`` (a ``quickllama serve``, e.g. ``"http://127.0.0.1:8000/v1"``) and
    ``api_key`` (default ``$QUICKLLAMA_API_KEY``), no model is loaded here: every request
    goes to that server, with the same options, streaming, metadata and named errors, plus
    :class:`~qllm_integrations.remote.ServerBusyError` (its queue is full) and
    :class:`~qllm_integrations.remote.ServerUnavailableError`; ``timeout`` and
    ``max_retries`` apply to it.
    """

    def __init__(self, *, engine: EngineProtocol | None = None, **kwargs: Any) -> None:
        # ProviderSettings.__init__ takes engine=; mypy sees the __init__ pydantic
        # synthesizes for LangChainSettings' own field instead.
        super().__init__(engine=engine, **kwargs)  # type: ignore[call-arg]
        if engine is not None and kwargs.get("profile") is None:  # computed before the engine
            self.profile = self._resolve_model_profile()

    @property
    def _llm_type(self) -> str:
        return "qllm-chat"

    def _resolve_model_profile(self) -> ModelProfile | None:
        """What the model can do.

        With ``base_url``, ``max_input_tokens`` is left out: it is the server's, and
        construction sends no request (``max_input_tokens()`` asks for it).
        """
        profile = ModelProfile(
            name=self.model_label(),
            open_weights=True,
            text_inputs=True,
            image_inputs=False,
            image_url_inputs=False,
            pdf_inputs=False,
            audio_inputs=False,
            video_inputs=False,
            text_outputs=True,
            image_outputs=False,
            audio_outputs=False,
            video_outputs=False,
            reasoning_output=False,
            tool_calling=False,
            tool_choice=False,
            structured_output=False,
            temperature=True,
        )
        if self.base_url is None:
            profile["max_input_tokens"] = self.max_input_tokens()
        return profile

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Tokens of ``messages`` in the model's chat template, ready for the answer.

        The encoding of the ``direct`` route (:func:`qllm_core.inputs.prompt.encode_chat`); a long
        conversation is split into document and question, whose prompt differs slightly.
        Loads the engine, or asks the server (``base_url``). ``tools`` are refused: the
        engine cannot call tools.
        """
        if tools:
            raise NotImplementedError("ChatQLLM cannot call tools; count messages only")
        return self.chat_token_count(flatten_messages(messages))

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Not supported: the engine answers questions; it has no tool-calling format."""
        raise NotImplementedError(
            "ChatQLLM cannot call tools or produce structured output (the embedded 135M "
            "model cannot follow a schema). Give a tool-calling model the document reader "
            "instead: create_document_reader_tool(ChatQLLM()); for fields, ask for them in "
            "the question and parse the text (e.g. with a PydanticOutputParser)"
        )

    def _request(
        self, messages: Sequence[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> ProviderRequest:
        options = call_options(self, stop, kwargs)
        return provider_chat_request(self, flatten_messages(messages), options)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        request = self._request(messages, stop, kwargs)
        return _chat_result(request, request.run(progress_listener(run_manager)))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # A local engine blocks (it runs the model): keep it off the event loop.
        request = await run_in_thread(self._request, messages, stop, kwargs)
        answer = await request.arun(async_progress_listener(run_manager))
        return _chat_result(request, answer)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        request = self._request(messages, stop, kwargs)
        for item in answer_events(request.start(progress_listener(run_manager))):
            chunk = _chat_chunk(request, item)
            if run_manager and isinstance(item, str):
                run_manager.on_llm_new_token(item, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        request = await run_in_thread(self._request, messages, stop, kwargs)
        async for item in request.aevents(async_progress_listener(run_manager)):
            chunk = _chat_chunk(request, item)
            if run_manager and isinstance(item, str):
                await run_manager.on_llm_new_token(item, chunk=chunk)
            yield chunk


def _chat_result(request: ProviderRequest, answer: Answer) -> ChatResult:
    """The ``ChatResult`` of ``answer``: its message with metadata and usage."""
    message = AIMessage(
        content=answer.text,
        response_metadata=request.metadata(answer),
        usage_metadata=usage_metadata(answer, request.cache_read_tokens(answer)),
    )
    return ChatResult(
        generations=[
            ChatGeneration(message=message, generation_info={"finish_reason": answer.finish_reason})
        ],
        llm_output={"model_name": request.model_name},
    )


def usage_metadata(answer: Answer, cache_read: int = 0) -> UsageMetadata:
    """Tokens read and generated, as LangChain's ``UsageMetadata``.

    ``input_tokens`` counts the whole prompt; ``cache_read`` of them (a document memory
    that was there already, :meth:`Request.cache_read_tokens`) are reported as
    ``input_token_details["cache_read"]``.
    """
    counts = usage(answer)
    metadata = UsageMetadata(
        input_tokens=counts["input_tokens"],
        output_tokens=counts["output_tokens"],
        total_tokens=counts["total_tokens"],
    )
    if cache_read:
        metadata["input_token_details"] = InputTokenDetails(cache_read=cache_read)
    return metadata


def get_evidence(message: BaseMessage) -> list[Evidence]:
    """The evidence passages of a ``ChatQLLM`` reply (or its last stream chunk), best first.

    In a chain, keep them next to the text with one line::

        chain = prompt | chat | {"answer": StrOutputParser(), "evidence": get_evidence}
    """
    return [Evidence(**item) for item in message.response_metadata.get("evidence", [])]


def _chat_chunk(request: ProviderRequest, item: str | Answer) -> ChatGenerationChunk:
    """A text delta's chunk; for the Answer, the closing chunk with usage and metadata."""
    if isinstance(item, str):
        return ChatGenerationChunk(message=AIMessageChunk(content=item))
    answer = item
    message = AIMessageChunk(
        content="",
        response_metadata=request.metadata(answer),
        usage_metadata=usage_metadata(answer, request.cache_read_tokens(answer)),
        chunk_position="last",
    )
    return ChatGenerationChunk(
        message=message, generation_info={"finish_reason": answer.finish_reason}
    )


def flatten_messages(messages: Sequence[BaseMessage]) -> list[tuple[str, str]]:
    """``(role, text)`` turns, role in ``system``/``user``/``assistant``/``tool``.

    A ``text-plain`` content block (a document attached to a message) becomes a turn of
    its own, placed before the rest of its message.

    Raises:
        InvalidDocumentError: content the model cannot read (images, audio, PDFs), or an
            attached document that is not UTF-8 text.
        EmptyInputError: an attached document holds no text.
    """
    turns: list[tuple[str, str]] = []
    for message in messages:
        if not isinstance(message, BaseMessage):
            raise TypeError(f"expected LangChain messages, got {type(message).__name__}")
        role = _role(message)
        attached, own = _texts(message.content, role)
        turns.extend((role, text) for text in attached)
        turns.append((role, own))
    return turns


def _role(message: BaseMessage) -> str:
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, AIMessage):
        return "assistant"
    if isinstance(message, ToolMessage):
        return "tool"
    if isinstance(message, ChatMessage):
        role = message.role.lower()
        named = {"human": "user", "ai": "assistant", "developer": "system", "function": "tool"}
        return named.get(role, role if role in ("system", "user", "assistant", "tool") else "user")
    if isinstance(message, HumanMessage):
        return "user"
    return "user"


def _texts(content: str | list[Any], role: str) -> tuple[list[str], str]:
    """Attached text documents, and the message's own text (see :mod:`..content`)."""
    if isinstance(content, str):
        return [], content
    attached: list[str] = []
    own: list[str] = []
    for block in content:
        if isinstance(block, str):
            own.append(block)
            continue
        kind = block.get("type")
        if kind == "text":
            own.append(block.get("text", ""))
        elif kind == "text-plain" or (kind == "file" and is_text_mimetype(block.get("mime_type"))):
            attached.append(_attached(block))
        elif kind not in _SKIPPED_BLOCKS:
            raise not_text(repr(kind), role)
    return attached, join_blocks(own)


def _attached(block: dict[str, Any]) -> str:
    """An attached document's text (refused when empty: a document must hold text)."""
    name = str(block.get("title") or "attached document")
    if "text" in block:
        return attached_text(block["text"], name)
    data = block.get("base64") or block.get("data")
    if isinstance(data, str):
        return attached_text(decode_base64(data, name), name)
    raise InvalidDocumentError(
        f"a {block.get('type')!r} block needs 'text' (or 'base64' data); got keys "
        f"{sorted(block)}. Put the document's text in 'text'"
    )
