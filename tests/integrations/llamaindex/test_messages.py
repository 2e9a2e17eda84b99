"""Flattening LlamaIndex chat messages and splitting them into document and question."""

from __future__ import annotations

import pytest
from llama_index.core.base.llms.types import DocumentBlock, ImageBlock, TextBlock
from llama_index.core.llms import ChatMessage, MessageRole

from qllm_core.errors import InvalidDocumentError
from qllm_integrations.llamaindex.llm import (
    flatten_messages,
)

DOC = "Minutes of the meeting. The budget was approved at 14:05. " * 5


def test_flatten_roles_and_text_document_blocks():
    messages = [
        ChatMessage(role=MessageRole.DEVELOPER, content="Be brief."),
        ChatMessage(
            role=MessageRole.USER,
            blocks=[
                DocumentBlock(data=DOC.encode(), document_mimetype="text/plain", title="minutes"),
                TextBlock(text="When was the budget approved?"),
            ],
        ),
        ChatMessage(role=MessageRole.TOOL, content="tool said something"),
    ]
    assert flatten_messages(messages) == [
        ("system", "Be brief."),
        ("user", DOC),
        ("user", "When was the budget approved?"),
        ("tool", "tool said something"),
    ]


def test_non_text_blocks_are_refused_with_a_hint():
    message = ChatMessage(role=MessageRole.USER, blocks=[ImageBlock(url="http://x/y.png")])
    with pytest.raises(InvalidDocumentError, match="text only"):
        flatten_messages([message])
