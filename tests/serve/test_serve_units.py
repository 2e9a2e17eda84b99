"""The server's parts that need no process: flags, settings, the field rule, admission."""

from __future__ import annotations

import socket
import sys

import pytest

from qllm_core.errors import ConfigError
from qllm_integrations.serve.cli import build_parser, main, settings_from
from qllm_integrations.serve.limits import Admission
from qllm_integrations.serve.openai_schema import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    accepted_fields,
)
from qllm_integrations.serve.settings import API_KEY_ENV_VAR, ServeSettings

CHAT = {"messages": [{"role": "user", "content": "Hi"}]}


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--max-queue", "0"], "--max-queue must be a whole number >= 1"),
        (["--port", "eighty"], "invalid int value"),
        (["--request-timeout", "0"], "--request-timeout must be > 0"),
        (["--preset", "nope"], "invalid choice"),
        (["--replicas", "0"], "--replicas must be a whole number >= 1"),
        (["--max-qeue", "3"], "unrecognized arguments"),
        (["--api-key", " "], "--api-key must not be empty"),
    ],
)
def test_bad_flags_exit_2(argv: list[str], says: str, capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert says in error and "usage: quickllama serve" in error


def test_help_exits_0(capsys: pytest.CaptureFixture) -> None:
    assert main(["--help"]) == 0
    assert "--max-document-tokens" in capsys.readouterr().out


def test_settings_from_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV_VAR, "alpha, beta,")
    settings = settings_from(build_parser().parse_args(["--max-queue", "3"]))
    assert settings.api_keys == ("alpha", "beta")
    assert settings.host == "127.0.0.1" and settings.max_queue == 3
    flags = ["--api-key", "one", "--api-key", "two"]
    assert settings_from(build_parser().parse_args(flags)).api_keys == ("one", "two")
    with pytest.raises(ConfigError, match="unknown preset"):
        ServeSettings(preset="no-such-preset")


@pytest.mark.parametrize(
    "neutral",
    [
        {"n": 1},
        {"presence_penalty": 0, "frequency_penalty": 0.0},
        {"logprobs": False},
        {"tools": [], "parallel_tool_calls": True},
        {"tool_choice": None, "response_format": None, "logit_bias": None},
    ],
)
def test_neutral_values_pass(neutral: dict) -> None:
    assert accepted_fields({**CHAT, **neutral}, ChatCompletionRequest) == CHAT


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 3}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"logit_bias": {"1": 5}}, "logit_bias"),
        ({"echo": True}, "echo"),
        ({"best_of": 2}, "best_of"),
        ({"suffix": "x"}, "suffix"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ],
)
def test_real_values_are_refused(body: dict, param: str) -> None:
    with pytest.raises(APIError) as refused:
        accepted_fields({"prompt": "Hi", **body}, CompletionRequest)
    assert refused.value.status == 400 and refused.value.param == param


def test_unknown_field_names_the_closest() -> None:
    with pytest.raises(APIError) as refused:
        accepted_fields({**CHAT, "max_tokenz": 3}, ChatCompletionRequest)
    assert refused.value.param == "max_tokenz"
    assert "did you mean 'max_tokens'?" in refused.value.message


def test_admission_refuses_beyond_the_queue() -> None:
    admission = Admission(2)
    first, second = admission.admit(), admission.admit()
    with pytest.raises(APIError) as refused:
        admission.admit()
    assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "1"
    first.release()
    first.release()  # idempotent
    assert admission.depth == 1
    admission.admit()
    second.release()


def test_replicas_without_ray_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed
    monkeypatch.delitem(sys.modules, "qllm_integrations.serve.ray", raising=False)
    assert main(["--replicas", "2"]) == 2
    error = capsys.readouterr().err
    assert "(ray)" in error and 'pip install "quickllama[ray]"' in error


def test_a_port_in_use_is_refused_before_the_model_loads(capsys: pytest.CaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err
