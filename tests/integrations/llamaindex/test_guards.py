"""Guard rails: QLLM notices response modes and prompt helpers that split or truncate."""

from __future__ import annotations

import asyncio
import warnings

import pytest
from llama_index.core import Document, SummaryIndex
from llama_index.core.indices.prompt_helper import PromptHelper
from llama_index.core.node_parser import SentenceSplitter

from qllm_integrations.llamaindex import (
    QLLM,
    ContextSplitError,
    ContextSplitWarning,
    check_query_engine,
    check_settings,
)

TEXT = " ".join(f"Line {i}: the harbour master logs ship number {i}." for i in range(120))
QUESTION = "Which ship did the harbour master log last?"


@pytest.fixture
def index():
    splitter = SentenceSplitter(chunk_size=128, chunk_overlap=20)
    return SummaryIndex.from_documents([Document(text=TEXT)], transformations=[splitter])


def test_refine_raises_with_the_fix(index, fake_engine):
    llm = QLLM(engine=fake_engine, guard="raise")
    engine = index.as_query_engine(llm=llm, response_mode="refine")
    with pytest.raises(ContextSplitError, match="refine.*WholeDocumentQueryEngine"):
        engine.query(QUESTION)


def test_refine_warns_once_and_still_answers(index, llm, fake_engine):
    engine = index.as_query_engine(llm=llm, response_mode="refine")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        response = engine.query(QUESTION)
        engine.query(QUESTION)
    assert str(response)
    assert len(fake_engine.calls) > 2  # one call per chunk, every time
    split = [w for w in caught if issubclass(w.category, ContextSplitWarning)]
    assert len(split) == 1 and "refine prompt reached QLLM" in str(split[0].message)


def test_async_refine_is_caught_too(index, fake_engine):
    llm = QLLM(engine=fake_engine, guard="raise")
    engine = index.as_query_engine(llm=llm, response_mode="refine")
    with pytest.raises(ContextSplitError):
        asyncio.run(engine.aquery(QUESTION))


@pytest.mark.parametrize("mode", ["compact", "simple_summarize", "tree_summarize"])
def test_stale_prompt_helper_is_caught_up_front(index, llm, clean_settings, mode):
    clean_settings.prompt_helper = PromptHelper(context_window=3900)
    engine = index.as_query_engine(llm=llm, response_mode=mode)
    assert check_query_engine(engine, policy="off")
    with pytest.warns(ContextSplitWarning, match="context_window=3900"):
        check_query_engine(engine, policy="warn")


@pytest.mark.parametrize("mode", ["compact", "simple_summarize", "tree_summarize"])
def test_single_call_modes_with_the_llms_window_pass(index, llm, fake_engine, mode):
    engine = index.as_query_engine(llm=llm, response_mode=mode)
    assert check_query_engine(engine) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error", ContextSplitWarning)
        engine.query(QUESTION)
    call = fake_engine.calls[-1]
    assert len(fake_engine.calls) == 1
    assert call.question == QUESTION
    assert "ship number 119." in call.document and "Query:" not in call.document


def test_check_query_engine_raises_for_refine(index, llm):
    engine = index.as_query_engine(llm=llm, response_mode="refine")
    with pytest.raises(ContextSplitError):
        check_query_engine(engine)


def test_check_settings(llm, clean_settings):
    clean_settings.llm = llm
    assert check_settings() == []
    clean_settings.context_window = 4096
    with pytest.warns(ContextSplitWarning, match="Settings.prompt_helper"):
        assert check_settings()


def test_guard_off(index, fake_engine):
    llm = QLLM(engine=fake_engine, guard="off")
    engine = index.as_query_engine(llm=llm, response_mode="refine")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ContextSplitWarning)
        engine.query(QUESTION)


def test_settings_are_read_through_the_public_getter(llm, clean_settings):
    """With no LLM set (and no OpenAI package), nothing is configured and nothing installed.

    Pins LlamaIndex's public semantics QLLM relies on instead of Settings' private fields:
    ``Settings.llm`` resolves a default when none is set, and raises when it cannot.
    """
    from llama_index.core.settings import Settings

    from qllm_integrations.llamaindex.guards import configured_llm
    from qllm_integrations.llamaindex.query_engine import _default_llm

    try:
        import llama_index.llms.openai  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError):
            Settings.llm  # noqa: B018  (the getter is what is tested)
        assert configured_llm() is None
        assert type(_default_llm()) is QLLM and _default_llm() is not llm
    clean_settings.llm = llm
    assert configured_llm() is llm
    assert _default_llm() is llm


def test_check_settings_of_another_llm_installs_no_prompt_helper(llm, clean_settings):
    """Only the QLLM of Settings.llm is checked: no global helper is made for another."""
    other = QLLM(engine=llm.engine)
    clean_settings.llm = llm
    assert check_settings(other) == []
    assert clean_settings._prompt_helper is None
    assert check_settings() == []
    assert clean_settings._prompt_helper is not None  # LlamaIndex's default, from QLLM
    assert clean_settings._prompt_helper.context_window == llm.max_input_tokens()
