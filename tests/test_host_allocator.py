"""The host allocator tuning: freed temporaries are reused, not faulted in again."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from tiny_models import TINY_ENGINE_CONFIG, make_tiny_model

from qllm_core.memory.host_allocator import ENV_VAR, on_glibc

glibc_only = pytest.mark.skipif(not on_glibc(), reason="the tuning applies to glibc only")

# Twelve 8 MiB tensors live at once, freed together, ten times: the pattern of a prefill
# layer's temporaries. Measured first with glibc's initial mmap threshold pinned (128 KiB;
# glibc raises it on its own only after some frees, so its defaults re-fault this pattern
# in some runs and not in others), then after tuning. Prints whether the tuning applied
# and the page faults of one round before and after it.
_CHURN = """
import ctypes, resource, torch
from qllm_core.memory.host_allocator import _M_MMAP_THRESHOLD, tune_host_allocator
def churn():
    for _ in range(10):
        parts = [torch.empty(2 * 2**20).fill_(1.0) for _ in range(12)]
        del parts
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    churn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
untuned = faults()
tuned = tune_host_allocator()
churn()  # lets the heap grow once
print(tuned, untuned, faults())
"""


@glibc_only
def test_tuning_stops_refaulting_freed_temporaries():
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    done = subprocess.run(
        [sys.executable, "-c", _CHURN], env=env, capture_output=True, text=True, check=True
    )
    tuned, untuned, faults = done.stdout.split()
    pages = 10 * 12 * 8 * 2**20 // 4096
    assert tuned == "True"
    assert int(untuned) > pages // 2  # the measurement sees the re-faulting
    assert int(faults) < pages // 20


def test_opt_out_leaves_the_allocator_alone(monkeypatch):
    from qllm_core.memory import host_allocator

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
