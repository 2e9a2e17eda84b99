"""The host allocator tuning: freed temporaries are reused, not faulted in again."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
from tiny_models import TINY_ENGINE_CONFIG, make_tiny_model

from qllm_core.host_allocator import ENV_VAR

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the tuning applies to glibc's allocator only",
)

# Twelve 8 MiB tensors live at once, freed together, ten times: the pattern of a prefill
# layer's temporaries. With glibc's defaults every round faults all of them in again
# (they are either mapped anew or trimmed off the heap when freed). Prints whether the
# tuning applied and the page faults of the measured round (the first lets the heap grow).
_CHURN = """
import resource, torch
from qllm_core.host_allocator import tune_host_allocator
tuned = tune_host_allocator()
def churn():
    for _ in range(10):
        parts = [torch.empty(2 * 2**20).fill_(1.0) for _ in range(12)]
        del parts
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _churn(env_value: str | None) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    if env_value is not None:
        env[ENV_VAR] = env_value
    done = subprocess.run(
        [sys.executable, "-c", _CHURN], env=env, capture_output=True, text=True, check=True
    )
    tuned, faults = done.stdout.split()
    return tuned == "True", int(faults)


@glibc_only
def test_tuning_stops_refaulting_freed_temporaries():
    tuned, faults = _churn(None)
    default_tuned, default_faults = _churn("0")
    assert tuned and not default_tuned
    pages = 10 * 12 * 8 * 2**20 // 4096
    assert default_faults > pages // 2, "glibc's defaults no longer re-fault: retune or drop"
    assert faults < pages // 20


def test_opt_out_leaves_the_allocator_alone(monkeypatch):
    from qllm_core import host_allocator

    host_allocator.tune_host_allocator.cache_clear()
    monkeypatch.setenv(ENV_VAR, "0")
    try:
        assert host_allocator.tune_host_allocator() is False
    finally:
        host_allocator.tune_host_allocator.cache_clear()


def test_an_engine_on_the_cpu_tunes_the_allocator(monkeypatch, tokenizer):
    from qllm_core import engine as engine_module

    calls = []
    monkeypatch.setattr(engine_module, "tune_host_allocator", lambda: calls.append(True))
    model = make_tiny_model("llama", vocab_size=len(tokenizer))
    engine_module.QLLMEngine(model, tokenizer, config=TINY_ENGINE_CONFIG, progress=False)
    assert calls == [True]
