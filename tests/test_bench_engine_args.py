"""The benchmark commands' engine options round-trip through the core's ``EngineSpec``."""

from __future__ import annotations

import argparse

import pytest

from benchmarks.engine_args import add_arguments, from_arguments, to_args
from qllm_core.spec import EngineSpec


def _parse(argv: list[str]) -> EngineSpec:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_arguments(parser.parse_args(argv))


def test_a_spec_written_as_options_reads_back_the_same():
    spec = EngineSpec(
        source="/models/tiny",
        preset="small-window",
        overrides={"topk": 6, "attention_backend": "torch", "offload_dtype": None},
        device="cpu",
    )
    again = _parse(to_args(spec))
    assert again == spec and again.overrides == spec.overrides
    assert again.resolved_config() == spec.resolved_config()
    assert to_args(EngineSpec()) == [] and _parse([]) == EngineSpec()


def test_set_values_are_json_or_plain_strings():
    spec = _parse(["--set", "topk=3", "--set", "attention_backend=torch"])
    assert spec.overrides == {"topk": 3, "attention_backend": "torch"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--set", "topk"], "FIELD=VALUE"),
        (["--preset", "no-such-preset"], "unknown preset"),
        (["--set", "no_such_field=1"], "no_such_field"),
    ],
)
def test_bad_options_exit_with_the_reason(argv, message):
    with pytest.raises(SystemExit, match=message):
        _parse(argv)


def test_a_spec_the_options_cannot_say_is_refused():
    with pytest.raises(ValueError, match="dtype"):
        to_args(EngineSpec(dtype="bfloat16"))
