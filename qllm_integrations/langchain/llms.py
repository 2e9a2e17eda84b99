"""QLLM: a LangChain text-completion model that reads whole documents with Q-LLM."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseLLM
from langchain_core.language_models.base import LangSmithParams
from langchain_core.outputs import Generation, GenerationChunk, LLMResult

from qllm_core.results import Answer
from qllm_integrations.langchain._call import (
    EngineCall,
    astream_in_thread,
    usage_metadata,
)
from qllm_integrations.langchain._params import QLLMParams
from qllm_integrations.split import split_text


class QLLM(BaseLLM, QLLMParams):
    r"""Text-completion model over a quickllama engine.

    A long prompt is split into document and question (see
    :mod:`qllm_integrations.split`: explicit ``question=``/``document=``, then a closing
    "Question: ..." or "Query: ..." line, then the prompt's tail, with a warning) and
    answered by the engine, which renders its own question-document-question prompt. A
    prompt short enough to fit the local window is completed as is (route ``direct``).

    Example:
        .. code-block:: python

            from qllm_integrations.langchain import QLLM

            llm = QLLM()
            llm.invoke(f"{report_text}\n\nQuestion: who signed it?\nAnswer:")

    ``generation_info`` of each generation holds the finish reason, the split route and
    the engine's stats (tokens read, blocks retrieved with character ranges, seconds).
    """

    def __init__(self, *, engine: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if engine is not None:
            self._engine, self._engine_given = engine, True

    @property
    def _llm_type(self) -> str:
        return "qllm"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self._identifying_params_dict()

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return self._ls_params("llm", stop, kwargs)

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` in the model's own tokenizer (loads the engine)."""
        ids = self._get_engine().tokenizer(text, add_special_tokens=False)["input_ids"]
        return [int(i) for i in ids]

    def _prepare(self, prompt: str, stop: list[str] | None, kwargs: dict[str, Any]) -> EngineCall:
        """Resolve engine, route and options of one prompt."""
        options, rest = self._split_call_kwargs(stop, kwargs)
        if rest["response_format"] is not None:
            raise TypeError(
                "QLLM does not take response_format; use ChatQLLM.with_structured_output"
            )
        engine = self._get_engine(rest["model"])
        explicit = rest["question"] is not None or rest["document"] is not None
        if not explicit and self._is_short(engine, prompt):
            ids = [int(i) for i in engine.tokenizer(prompt)["input_ids"]]
            return self._make_call(engine, rest["model"], None, ids, options)
        split = split_text(prompt, question=rest["question"], document=rest["document"])
        return self._make_call(engine, rest["model"], split, None, options)

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        generations = []
        usage = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
        model_name = self._model_label(kwargs.get("model"))
        for prompt in prompts:
            if self.streaming:
                text, info = "", cast(dict[str, Any], {})
                for chunk in self._stream(prompt, stop, run_manager, **kwargs):
                    text += chunk.text
                    info = chunk.generation_info or info
                generations.append([Generation(text=text, generation_info=info)])
                answer_usage = info.get("usage_metadata", {})
            else:
                call = self._prepare(prompt, stop, kwargs)
                answer = call.run()
                info = _generation_info(call, answer)
                generations.append([Generation(text=answer.text, generation_info=info)])
                answer_usage = info["usage_metadata"]
            for key in usage:
                usage[key] += answer_usage.get(key, 0)
        return LLMResult(
            generations=generations, llm_output={"model_name": model_name, "token_usage": usage}
        )

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        if self.streaming:
            generations = []
            for prompt in prompts:
                text, info = "", cast(dict[str, Any], {})
                async for chunk in self._astream(prompt, stop, run_manager, **kwargs):
                    text += chunk.text
                    info = chunk.generation_info or info
                generations.append([Generation(text=text, generation_info=info)])
            return LLMResult(generations=generations)
        # The engine blocks (it runs the model): keep it off the event loop.
        return await asyncio.to_thread(self._generate, prompts, stop, None, **kwargs)

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        call = self._prepare(prompt, stop, kwargs)
        stream = call.start()
        try:
            for piece in stream:
                chunk = GenerationChunk(text=piece)
                if run_manager:
                    run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
        finally:  # an abandoned stream must still release the engine's lock
            close = getattr(stream.pieces, "close", None)
            if close is not None:
                close()
        assert stream.result is not None
        yield GenerationChunk(text="", generation_info=_generation_info(call, stream.result))

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        call = await asyncio.to_thread(self._prepare, prompt, stop, kwargs)
        async for item in astream_in_thread(call.start):
            if isinstance(item, Answer):
                yield GenerationChunk(text="", generation_info=_generation_info(call, item))
                continue
            chunk = GenerationChunk(text=item)
            if run_manager:
                await run_manager.on_llm_new_token(item, chunk=chunk)
            yield chunk


def _generation_info(call: EngineCall, answer: Answer) -> dict[str, Any]:
    """Response metadata plus usage, as a generation's ``generation_info``."""
    return {**call.response_metadata(answer), "usage_metadata": dict(usage_metadata(answer))}
