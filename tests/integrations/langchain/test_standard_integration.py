"""langchain-tests' standard integration suite for ChatQLLM, on a real tiny engine.

The model is a random two-layer Llama: the suite checks plumbing (invoke, stream, async,
batch, usage, stop, events), never answer quality.
"""

from __future__ import annotations

from typing import Any

from fakes import tiny_engine, tiny_model_dir
from langchain_tests.integration_tests import ChatModelIntegrationTests

from qllm_integrations.langchain import ChatQLLM

JOKE = '{"setup": "Why do cats sit on keyboards?", "punchline": "To keep an eye on the mouse."}'


class TestChatQLLMIntegration(ChatModelIntegrationTests):
    """Runs every standard test whose capability ChatQLLM has."""

    @property
    def chat_model_class(self) -> type[ChatQLLM]:
        return ChatQLLM

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # Few tokens: the tiny model decodes on a shared CPU, and the answers are noise.
        return {"engine": tiny_engine(), "max_tokens": 6}

    @property
    def model_override_value(self) -> str:
        # Another tiny model, saved to disk: a per-call model= loads it through the registry.
        return tiny_model_dir()

    @property
    def supports_model_override(self) -> bool:
        return False  # the model is a constructor setting (EngineSpec), not a call option

    @property
    def has_tool_calling(self) -> bool:
        return False  # no tool-calling format: the engine answers questions about text

    @property
    def has_structured_output(self) -> bool:
        # with_structured_output is implemented by prompting for JSON and validating it
        # (tests/integrations/langchain/test_structured_output.py covers it with a fake
        # engine that replies in JSON). A random-weight model cannot produce JSON, and the
        # engine has no constrained decoding, so the standard structured-output tests would
        # only measure that.
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False  # see has_structured_output

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supported_usage_metadata_details(self) -> dict[str, list[Any]]:
        return {"invoke": [], "stream": []}
