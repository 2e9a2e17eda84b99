"""Config validation names the field; presets are complete and valid."""

from __future__ import annotations

import dataclasses

import pytest

from qllm_core import PRESETS, ConfigError, QLLMConfig


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(exec_block_size=2048, n_local=1024), "exec_block_size"),
        (dict(topk=0), "topk"),
        (dict(repr_topk=200, block_size=128), "repr_topk"),
        (dict(n_init=-1), "n_init"),
        (dict(mode="fast"), "mode"),
        (dict(max_cached_blocks=4, topk=8), "max_cached_blocks"),
        (dict(prefill_chunk_size=1000), "prefill_chunk_size"),
        (dict(question_weight=-1.0), "question_weight"),
        (dict(offload_dtype="int8"), "offload_dtype"),
        (dict(attention_backend="cuda"), "attention_backend"),
        (dict(offload_dir=""), "offload_dir"),
        (dict(block_size=0), "block_size"),
    ],
)
def test_impossible_configs_raise_naming_the_field(changes, field):
    with pytest.raises(ConfigError, match=rf"QLLMConfig\.{field}"):
        QLLMConfig(**changes)


def test_config_is_frozen_and_keyword_only():
    config = QLLMConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.topk = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        QLLMConfig("qllm")  # type: ignore[misc]


def test_presets_match_the_published_settings():
    llama3, mistral = QLLMConfig.preset("llama3"), QLLMConfig.preset("mistral")
    assert (
        llama3.n_init,
        llama3.n_local,
        llama3.block_size,
        llama3.topk,
        llama3.repr_topk,
        llama3.exec_block_size,
        llama3.question_weight,
    ) == (128, 1024, 128, 8, 4, 512, 4.0)
    assert mistral.question_weight == 1.0
    assert QLLMConfig.preset("smollm2", topk=2).topk == 2
    assert set(PRESETS) >= {"llama3", "mistral", "smollm2"}
    with pytest.raises(ConfigError, match="unknown preset"):
        QLLMConfig.preset("gpt5")


def test_infllm_mode_drops_the_question_term():
    assert QLLMConfig(mode="infllm", question_weight=4).effective_question_weight == 0
    assert QLLMConfig(mode="qllm", question_weight=4).effective_question_weight == 4
