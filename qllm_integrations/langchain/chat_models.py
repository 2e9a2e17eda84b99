"""ChatQLLM: a LangChain chat model that reads whole documents with Q-LLM."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator, Sequence
from operator import itemgetter
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput, ModelProfile
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema
from langchain_core.utils.pydantic import is_basemodel_subclass

from qllm_core.results import Answer
from qllm_integrations.langchain._call import (
    EngineCall,
    astream_in_thread,
    json_instruction,
    usage_metadata,
)
from qllm_integrations.langchain._messages import chat_prompt_ids, flatten_messages
from qllm_integrations.langchain._params import QLLMParams
from qllm_integrations.langchain.structured import JsonSchemaOutputParser
from qllm_integrations.split import split_chat

StructuredMethod = Literal["json_schema", "json_mode", "function_calling"]


class ChatQLLM(BaseChatModel, QLLMParams):
    """Chat model over a quickllama engine: pass a whole document, ask about it.

    The last user message is the question; the system message, earlier messages and
    ``text-plain`` blocks are the document (see :mod:`qllm_integrations.split`). Pass
    ``question=`` / ``document=`` to ``invoke`` or ``bind`` to say so explicitly. A
    conversation short enough to fit the engine's local window is sent whole, in the
    model's chat template (route ``direct``): Q-LLM then equals full attention.

    Example:
        .. code-block:: python

            from qllm_integrations.langchain import ChatQLLM

            chat = ChatQLLM()  # the embedded SmolLM2-135M-Instruct, loaded on first use
            reply = chat.bind(document=open("report.txt").read()).invoke("Who signed it?")
            reply.response_metadata["qllm"]["retrieved_blocks"]  # where it looked

    The engine is shared process-wide by ``(model, config, device, dtype)``; pass
    ``engine=`` to use one already built. Requests on one engine run one at a time.
    """

    def __init__(self, *, engine: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if engine is not None:
            self._engine, self._engine_given = engine, True
            if kwargs.get("profile") is None:  # computed before the engine was known
                self.profile = self._resolve_model_profile()

    @property
    def _llm_type(self) -> str:
        return "qllm-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self._identifying_params_dict()

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return self._ls_params("chat", stop, kwargs)

    def _resolve_model_profile(self) -> ModelProfile | None:
        return ModelProfile(
            name=self._model_label(),
            open_weights=True,
            max_input_tokens=self._max_input_tokens(),
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

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` in the model's own tokenizer (loads the engine)."""
        ids = self._get_engine().tokenizer(text, add_special_tokens=False)["input_ids"]
        return [int(i) for i in ids]

    def _prepare(
        self, messages: Sequence[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> EngineCall:
        """Resolve engine, route and options of one request."""
        options, rest = self._split_call_kwargs(stop, kwargs)
        engine = self._get_engine(rest["model"])
        pairs = flatten_messages(messages)
        instruction = json_instruction(rest["response_format"])
        explicit = rest["question"] is not None or rest["document"] is not None
        if not explicit and self._is_short(engine, "\n\n".join(t for _, t in pairs)):
            if instruction:
                pairs.append(("user", instruction))
            ids = chat_prompt_ids(engine.tokenizer, pairs)
            return self._make_call(engine, rest["model"], None, ids, options)
        split = split_chat(pairs, question=rest["question"], document=rest["document"])
        if instruction:
            split = dataclasses.replace(split, question=f"{split.question}\n\n{instruction}")
        return self._make_call(engine, rest["model"], split, None, options)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = self._prepare(messages, stop, kwargs)
        answer = call.run()
        message = AIMessage(
            content=answer.text,
            response_metadata=call.response_metadata(answer),
            usage_metadata=usage_metadata(answer),
        )
        generation = ChatGeneration(
            message=message, generation_info={"finish_reason": answer.finish_reason}
        )
        return ChatResult(
            generations=[generation],
            llm_output={"model_name": call.model_name, "token_usage": dict(usage_metadata(answer))},
        )

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # The engine blocks (it runs the model): keep it off the event loop.
        return await asyncio.to_thread(self._generate, messages, stop, None, **kwargs)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        call = self._prepare(messages, stop, kwargs)
        stream = call.start()
        try:
            for piece in stream:
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
                if run_manager:
                    run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
        finally:  # an abandoned stream must still release the engine's lock
            close = getattr(stream.pieces, "close", None)
            if close is not None:
                close()
        assert stream.result is not None
        yield _last_chunk(call, stream.result)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        call = await asyncio.to_thread(self._prepare, messages, stop, kwargs)
        async for item in astream_in_thread(call.start):
            if isinstance(item, Answer):
                yield _last_chunk(call, item)
                continue
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=item))
            if run_manager:
                await run_manager.on_llm_new_token(item, chunk=chunk)
            yield chunk

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        include_raw: bool = False,
        method: StructuredMethod = "json_schema",
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | Any]:
        """A runnable that returns ``schema``-shaped output, parsed from a JSON reply.

        The JSON schema is put into the prompt and the reply is parsed and validated; the
        engine has no constrained decoding, so a model may fail to comply, which raises
        :class:`~qllm_integrations.langchain.errors.StructuredOutputError` (a LangChain
        ``OutputParserException``), or with ``include_raw=True`` is reported in
        ``parsing_error``.

        Args:
            schema: a pydantic class (returns instances), a TypedDict, a JSON schema or an
                OpenAI function schema (return dicts). May be ``None`` with
                ``method="json_mode"``: any JSON object is accepted.
            include_raw: return ``{"raw": AIMessage, "parsed": ..., "parsing_error": ...}``.
            method: ``json_schema`` (schema in the prompt) or ``json_mode`` (only "reply in
                JSON"; the schema, if given, still validates). ``function_calling`` is
                served like ``json_schema``: this model has no tool calling.
            strict: accepted for compatibility; validation is always strict.
            **kwargs: none are supported; any raises ``ValueError``.
        """
        if kwargs:
            raise ValueError(f"with_structured_output got unsupported arguments {kwargs}")
        if method not in ("json_schema", "json_mode", "function_calling"):
            raise ValueError(
                f"method must be 'json_schema', 'json_mode' or 'function_calling', got {method!r}"
            )
        if schema is None and method != "json_mode":
            raise ValueError("schema is required unless method='json_mode'")
        json_schema = convert_to_json_schema(schema) if schema is not None else None
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        parser = JsonSchemaOutputParser(
            json_schema=json_schema, pydantic_class=schema if is_pydantic else None
        )
        bound: dict[str, Any] = {
            "response_format": {
                "type": "json_object" if method == "json_mode" else "json_schema",
                "schema": json_schema if method != "json_mode" else None,
            }
        }
        if schema is not None:
            bound["ls_structured_output_format"] = {
                "kwargs": {"method": method, "strict": strict},
                "schema": schema,
            }
        llm = self.bind(**bound)
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        )
        failed = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks([failed], exception_key="parsing_error")


def _last_chunk(call: EngineCall, answer: Answer) -> ChatGenerationChunk:
    """The closing chunk: no text, the usage and the response metadata."""
    message = AIMessageChunk(
        content="",
        response_metadata=call.response_metadata(answer),
        usage_metadata=usage_metadata(answer),
        chunk_position="last",
    )
    return ChatGenerationChunk(
        message=message, generation_info={"finish_reason": answer.finish_reason}
    )
