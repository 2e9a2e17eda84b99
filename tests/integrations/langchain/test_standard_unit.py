"""langchain-tests' standard unit suite for ChatQLLM (no model is loaded)."""

from __future__ import annotations

from typing import Any

from fakes import FakeEngine
from langchain_tests.unit_tests import ChatModelUnitTests

from qllm_integrations.langchain import ChatQLLM


class TestChatQLLMUnit(ChatModelUnitTests):
    """Construction, parameters and structured-output wiring, on a fake engine."""

    @property
    def chat_model_class(self) -> type[ChatQLLM]:
        return ChatQLLM

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"engine": FakeEngine()}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        params = super().standard_chat_model_params
        params.pop("api_key")  # a local engine has no API key
        return params

    @property
    def has_tool_calling(self) -> bool:
        return False  # the engine answers questions; it has no tool-calling format

    @property
    def returns_usage_metadata(self) -> bool:
        return True
