"""Errors raised by the quickllama LangChain provider."""

from __future__ import annotations

from langchain_core.exceptions import OutputParserException


class StructuredOutputError(OutputParserException):
    """The model's reply is not JSON matching the requested schema.

    A subclass of LangChain's ``OutputParserException``, so retry and fallback helpers
    that catch that keep working. ``llm_output`` holds the reply as generated.
    """
