"""The prompt splitter: explicit, chat, pattern and tail routes, and what they keep."""

from __future__ import annotations

import re
import warnings

import pytest

from qllm_core.errors import EmptyInputError
from qllm_integrations.split import (
    MAX_TAIL_CHARS,
    PromptSplit,
    QuestionNotFoundWarning,
    split_chat,
    split_pattern,
    split_tail,
    split_text,
)

DOC = (
    "The harbour office kept a ledger of every ship. In 1871 the ledger listed "
    "forty-two schooners.\n\nThe lighthouse keeper wrote that the fog lasted nine days."
)

LLAMAINDEX_QA = (
    "Context information is below.\n---------------------\n{context}\n---------------------\n"
    "Given the context information and not prior knowledge, answer the query.\n"
    "Query: {query}\nAnswer: "
)


def _words(text: str) -> list[str]:
    return re.findall(r"\S+", text)


def _assert_covers(prompt: str, split: PromptSplit, dropped: tuple[str, ...] = ()) -> None:
    """Every word of the prompt is in the document or the question, except labels/cues."""
    kept = _words(split.document) + _words(split.question)
    missing = [w for w in _words(prompt) if w not in kept and w not in dropped]
    assert not missing, missing


# --- explicit ---------------------------------------------------------------------------


def test_explicit_question_makes_the_prompt_the_document() -> None:
    split = split_text(DOC, question="How many schooners?")
    assert split == PromptSplit(document=DOC, question="How many schooners?", route="explicit")


def test_explicit_document_makes_the_prompt_the_question() -> None:
    split = split_text("  How long did the fog last? ", document=DOC)
    assert split == PromptSplit(
        document=DOC, question="How long did the fog last?", route="explicit"
    )


def test_explicit_both_keep_other_prompt_text_as_an_instruction() -> None:
    split = split_text("Answer in French.", question="Who kept the ledger?", document=DOC)
    assert split.document == DOC
    assert split.question == "Answer in French.\n\nWho kept the ledger?"
    assert split_text(DOC, question="q?", document=DOC).question == "q?"


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"question": "q?", "document": "  \n"}, "document"),
        ({"question": " ", "document": DOC}, "question"),
    ],
)
def test_explicit_empty_parts_raise(kwargs: dict[str, str], word: str) -> None:
    with pytest.raises(EmptyInputError, match=word):
        split_text("", **kwargs)


# --- pattern ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ending",
    [
        "Question: How many schooners were listed?",
        "Question: How many schooners were listed?\nAnswer:",
        "QUESTION:How many schooners were listed?\n\nAnswer: ",
        "Query: How many schooners were listed?\nAnswer: ",
        "Q: How many schooners were listed?\nA:",
        "**Question:** How many schooners were listed?\nHelpful Answer:",
        "question: How many schooners were listed?\n",
    ],
)
def test_pattern_endings(ending: str) -> None:
    prompt = f"{DOC}\n\n{ending}"
    split = split_text(prompt)
    assert split.route == "pattern"
    assert split.question == "How many schooners were listed?"
    assert split.document == DOC
    assert prompt.startswith(split.document)  # char offsets into the document = into the prompt


def test_llamaindex_template() -> None:
    prompt = LLAMAINDEX_QA.format(context=DOC, query="How long did the fog last?")
    split = split_text(prompt)
    assert split.route == "pattern"
    assert split.question == "How long did the fog last?"
    assert DOC in split.document
    assert split.document.endswith("answer the query.")
    _assert_covers(prompt, split, dropped=("Query:", "Answer:"))


def test_pattern_takes_the_last_label_and_keeps_earlier_ones_in_the_document() -> None:
    prompt = f"Q: What is a ledger?\nA: A book.\n\n{DOC}\n\nQuestion: Who wrote about fog?"
    split = split_text(prompt)
    assert split.question == "Who wrote about fog?"
    assert "Q: What is a ledger?\nA: A book." in split.document
    _assert_covers(prompt, split, dropped=("Question:",))


def test_multiline_question_is_kept_whole() -> None:
    split = split_text(f"{DOC}\n\nQuestion: Two parts.\nFirst, the fog?\nSecond, the ships?")
    assert split.question == "Two parts.\nFirst, the fog?\nSecond, the ships?"


def test_pattern_without_document_raises() -> None:
    with pytest.raises(EmptyInputError, match="the document is empty"):
        split_text("Question: what is the pass key?\nAnswer:")


def test_label_followed_by_a_whole_document_is_not_a_question() -> None:
    prompt = "Question: " + "The fog lasted nine days. " * 400
    assert split_pattern(prompt) is None


def test_label_inside_a_line_is_not_a_label() -> None:
    assert split_pattern(f"{DOC}\n\nThe Question: of the day was fog.") is None


# --- tail -------------------------------------------------------------------------------


def test_tail_takes_the_last_paragraph_and_warns() -> None:
    prompt = f"{DOC}\n\nHow long did the fog last?"
    with pytest.warns(QuestionNotFoundWarning, match="question="):
        split = split_text(prompt)
    assert split == PromptSplit(document=DOC, question="How long did the fog last?", route="tail")


def test_tail_takes_the_last_sentence_of_a_long_paragraph() -> None:
    body = "The fog lasted nine days and nobody sailed. " * 30
    prompt = body + "How long did the fog last?"
    with pytest.warns(QuestionNotFoundWarning):
        split = split_text(prompt)
    assert split.question == "How long did the fog last?"
    assert split.document == body.rstrip()


def test_tail_is_bounded_when_there_is_no_sentence_end() -> None:
    prompt = "word " * 1000
    split = split_tail(prompt)
    assert len(split.question) <= MAX_TAIL_CHARS
    assert split.document.strip()
    assert (split.document + " " + split.question).split() == prompt.split()


def test_tail_of_a_short_paragraph_uses_its_last_sentence() -> None:
    split = split_tail("The fog lasted nine days. How long did it last?")
    assert split.document == "The fog lasted nine days."
    assert split.question == "How long did it last?"


@pytest.mark.parametrize("prompt", ["", "   \n", "Tell me a joke about cats."])
def test_tail_that_would_leave_no_document_raises(prompt: str) -> None:
    with pytest.raises(EmptyInputError):
        split_text(prompt)


def test_no_warning_when_a_pattern_is_found() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split_text(f"{DOC}\n\nQuestion: fog?")


# --- chat -------------------------------------------------------------------------------


def test_chat_system_document_and_user_question() -> None:
    split = split_chat([("system", DOC), ("user", "How long did the fog last?")])
    assert split == PromptSplit(document=DOC, question="How long did the fog last?", route="chat")


def test_chat_earlier_turns_and_later_assistant_text_join_the_document() -> None:
    messages = [
        ("system", "Be brief."),
        ("user", DOC),
        ("assistant", "Noted."),
        ("user", "How many schooners?"),
    ]
    split = split_chat(messages)
    assert split.route == "chat"
    assert split.question == "How many schooners?"
    assert split.document == f"Be brief.\n\n{DOC}\n\nNoted."


def test_chat_single_user_message_is_split_like_a_prompt() -> None:
    split = split_chat([("user", f"{DOC}\n\nQuestion: How many schooners?")])
    assert split.route == "pattern"
    assert split.question == "How many schooners?"


def test_chat_text_plain_blocks_arrive_as_earlier_messages() -> None:
    split = split_chat([("user", DOC), ("user", "Who wrote about the fog?")])
    assert (split.document, split.question) == (DOC, "Who wrote about the fog?")


def test_chat_explicit_arguments() -> None:
    messages = [("system", "Be brief."), ("user", "How many schooners?")]
    by_document = split_chat(messages, document=DOC)
    assert by_document.route == "explicit"
    assert by_document.question == "How many schooners?"
    assert by_document.document == f"Be brief.\n\n{DOC}"
    by_question = split_chat([("system", DOC), ("user", "hello")], question="Fog?")
    assert by_question.document == f"{DOC}\n\nhello"
    assert by_question.question == "Fog?"


def test_chat_errors() -> None:
    with pytest.raises(ValueError, match="role"):
        split_chat([("tool", "x")])
    with pytest.raises(EmptyInputError, match="no user message"):
        split_chat([("system", DOC)])
    with pytest.raises(EmptyInputError, match="last user message is empty"):
        split_chat([("system", DOC), ("user", " ")])


def test_chat_turn_holding_context_and_query_line_splits_on_the_query():
    # LlamaIndex's chat templates put the retrieved context in the user turn itself
    turn = (
        "Context information is below.\nThe vault code is 7431.\nQuery: What is the code?\nAnswer:"
    )
    split = split_chat([("system", "You are helpful."), ("user", turn)])
    assert split.route == "chat"
    assert split.question == "What is the code?"
    assert "The vault code is 7431." in split.document and "You are helpful." in split.document
