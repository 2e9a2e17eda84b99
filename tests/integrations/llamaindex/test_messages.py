"""Flattening LlamaIndex chat messages and splitting them into document and question."""

from __future__ import annotations

import pytest
from llama_index.core.base.llms.types import DocumentBlock, ImageBlock, TextBlock
from llama_index.core.llms import ChatMessage, MessageRole

from qllm_core.errors import InvalidDocumentError
from qllm_integrations.llamaindex.messages import (
    add_template_hint,
    flatten_messages,
    split_messages,
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
        ("assistant", "tool said something"),
    ]


def test_non_text_blocks_are_refused_with_a_hint():
    message = ChatMessage(role=MessageRole.USER, blocks=[ImageBlock(url="http://x/y.png")])
    with pytest.raises(InvalidDocumentError, match="text only"):
        flatten_messages([message])


def test_last_user_message_is_the_question():
    split = split_messages(
        [
            ChatMessage(role=MessageRole.SYSTEM, content=DOC),
            ChatMessage(role=MessageRole.USER, content="When?"),
        ]
    )
    assert (split.question, split.route) == ("When?", "chat")


def test_template_hint_wins_and_refine_falls_back():
    rendered = [ChatMessage(role=MessageRole.USER, content=f"Context: {DOC}\nQuery: When?")]
    hinted = add_template_hint(rendered, {"context_str": DOC, "query_str": "When?"}, "text_qa")
    split = split_messages(hinted)
    assert (split.document, split.question, split.route) == (DOC, "When?", "explicit")
    assert rendered[0].additional_kwargs == {}  # the caller's message is not modified
    refine = add_template_hint(
        rendered, {"context_msg": DOC, "query_str": "When?", "existing_answer": "At two."}, "refine"
    )
    split = split_messages(refine)
    assert split.question == "When?" and DOC in split.document


def test_explicit_arguments_override_everything():
    split = split_messages(
        [ChatMessage(role=MessageRole.USER, content=DOC)], question="When was it approved?"
    )
    assert split.question == "When was it approved?" and split.document.strip() == DOC.strip()
