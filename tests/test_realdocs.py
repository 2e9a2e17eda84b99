"""The hand-written questions over Debian documents: well-formed, and true to the texts."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from benchmarks.realdocs import MissingDocumentError, load_document, real_samples, realdocs

DATA = realdocs()
QUESTIONS = DATA["questions"]


def occurrences(value: str, text: str) -> int:
    """Whole-token, case-insensitive occurrences, the rule of ``benchmarks.scoring.found``."""
    pattern = rf"(?<![0-9A-Za-z]){re.escape(value)}(?![0-9A-Za-z])"
    return len(re.findall(pattern, text, flags=re.IGNORECASE))


def installed_text(name: str) -> str:
    try:
        return load_document(name)
    except MissingDocumentError as error:
        pytest.skip(str(error))


def test_questions_are_well_formed():
    ids = [item["id"] for item in QUESTIONS]
    assert len(ids) == len(set(ids))
    for item in QUESTIONS:
        assert item["document"] in DATA["documents"], item["id"]
        assert item["answer"].lower() in item["evidence"].lower(), item["id"]
        assert item["char_end"] - item["char_start"] == len(item["evidence"]), item["id"]
        assert item["question"].endswith("?"), item["id"]


@pytest.mark.parametrize("name", sorted(DATA["documents"]))
def test_evidence_is_quoted_exactly_and_answers_are_rare(name):
    text = installed_text(name)
    assert len(text) == DATA["documents"][name]["chars"]
    for item in (item for item in QUESTIONS if item["document"] == name):
        assert text[item["char_start"] : item["char_end"]] == item["evidence"], item["id"]
        assert 1 <= occurrences(item["answer"], text) <= 3, item["id"]


def test_real_samples_point_at_their_answers():
    name = "copyright-format"
    text = installed_text(name)

    def words(text: str, add_special_tokens: bool = False) -> SimpleNamespace:
        return SimpleNamespace(input_ids=text.split())

    samples = real_samples(words, [name])
    assert [sample.sample_id for sample in samples] == sorted(
        item["id"] for item in QUESTIONS if item["document"] == name
    )
    for sample in samples:
        assert sample.task == "realdoc"
        assert sample.length == len(text.split())
        ((start, end),) = sample.evidence
        assert sample.expected[0].lower() in sample.document[start:end].lower()
        assert sample.depth == round(start / len(text), 3)


def test_unknown_document_is_refused():
    with pytest.raises(ValueError, match="unknown document"):
        load_document("no-such-document")
