"""QLLM: a LangChain text-completion model that reads whole documents with Q-LLM."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult

from qllm_core.progress import ProgressListener
from qllm_core.results import Answer
from qllm_integrations._async import run_in_thread
from qllm_integrations.langchain.chat_models import LangChainSettings, usage_metadata
from qllm_integrations.langchain.progress import async_progress_listener, progress_listener
from qllm_integrations.request import ProviderRequest, answer_events
from qllm_integrations.routing import provider_text_request
from qllm_integrations.settings import call_options


class QLLM(LangChainSettings, BaseLLM):
    r"""Text-completion model over a quickllama engine.

    A long prompt is split into document and question (explicit ``question=``/
    ``document=``, then a closing "Question: ..." or "Query: ..." line, then the prompt's
    tail, with a warning) and answered by the engine. A prompt that fits the local window
    is answered as one user turn in the model's chat template (route ``direct``).

    Example:
        .. code-block:: python

            from qllm_integrations.langchain import QLLM

            llm = QLLM()
            llm.invoke(f"{report_text}\n\nQuestion: who signed it?\nAnswer:")

    ``generation_info`` of each generation is the same metadata ``ChatQLLM`` puts in
    ``response_metadata`` (route, usage, evidence, memory reuse, the engine's stats).
    With ``read_once=True`` documents are read once and kept in the engine's memory cache,
    and with ``base_url`` every request goes to a quickllama server, as for ``ChatQLLM``.
    """

    @property
    def _llm_type(self) -> str:
        return "qllm"

    def _request(
        self, prompt: str, stop: list[str] | None, kwargs: dict[str, Any]
    ) -> ProviderRequest:
        options = call_options(self, stop, kwargs)
        return provider_text_request(self, prompt, options)

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        if self.streaming:  # callbacks see every token
            return _result(
                self.model_label(),
                [_streamed(self._stream(p, stop, run_manager, **kwargs)) for p in prompts],
            )
        return self._results(prompts, stop, kwargs, progress_listener(run_manager))

    def _results(
        self,
        prompts: list[str],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        listener: ProgressListener | None,
    ) -> LLMResult:
        """Answer each prompt in turn (``listener``: hears the reads' progress)."""
        answers = []
        for prompt in prompts:
            request = self._request(prompt, stop, kwargs)
            answer = request.run(listener)
            answers.append((answer.text, _info(request, answer)))
        return _result(self.model_label(), answers)

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        # A local engine blocks (it runs the model): keep it off the event loop.
        if self.streaming:  # callbacks see every token
            return _result(
                self.model_label(),
                [await _astreamed(self._astream(p, stop, run_manager, **kwargs)) for p in prompts],
            )
        listener = async_progress_listener(run_manager)
        answers = []
        for prompt in prompts:
            request = await run_in_thread(self._request, prompt, stop, kwargs)
            answer = await request.arun(listener)
            answers.append((answer.text, _info(request, answer)))
        return _result(self.model_label(), answers)

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        request = self._request(prompt, stop, kwargs)
        for item in answer_events(request.start(progress_listener(run_manager))):
            chunk = _chunk(request, item)
            if run_manager and isinstance(item, str):
                run_manager.on_llm_new_token(item, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        request = await run_in_thread(self._request, prompt, stop, kwargs)
        async for item in request.aevents(async_progress_listener(run_manager)):
            chunk = _chunk(request, item)
            if run_manager and isinstance(item, str):
                await run_manager.on_llm_new_token(item, chunk=chunk)
            yield chunk


Answered = tuple[str, dict[str, Any]]
"""One prompt's answer text and its generation info."""


def _streamed(chunks: Iterator[GenerationChunk]) -> Answered:
    """A streamed answer's text and the info its closing chunk carries."""
    pieces = list(chunks)
    return "".join(c.text for c in pieces), pieces[-1].generation_info or {}


async def _astreamed(chunks: AsyncIterator[GenerationChunk]) -> Answered:
    """:func:`_streamed` of an async stream."""
    return _streamed(iter([chunk async for chunk in chunks]))


def _result(model_name: str, answers: list[Answered]) -> LLMResult:
    """The generations of ``answers``, with their summed token usage."""
    totals = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    for _, info in answers:
        for key, value in info["usage"].items():
            totals[key] += value
    return LLMResult(
        generations=[[Generation(text=text, generation_info=info)] for text, info in answers],
        llm_output={"model_name": model_name, "token_usage": totals},
    )


def _chunk(request: ProviderRequest, item: str | Answer) -> GenerationChunk:
    """A text delta's chunk; for the Answer, the closing chunk with the metadata."""
    if isinstance(item, str):
        return GenerationChunk(text=item)
    return GenerationChunk(text="", generation_info=_info(request, item))


def _info(request: ProviderRequest, answer: Answer) -> dict[str, Any]:
    """The response metadata, plus ``usage_metadata`` as LangChain reads it."""
    return {
        **request.metadata(answer),
        "usage_metadata": usage_metadata(answer, request.cache_read_tokens(answer)),
    }
