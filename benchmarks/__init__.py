"""quickllama's long-context benchmark suite.

Run ``python -m benchmarks run --size quick`` to regenerate BENCHMARKS.md and its figures,
``python -m benchmarks throughput`` for prefill speed and memory of ``qllm`` vs ``full``.
Tasks are generated on the fly (seeded, no downloads); every system answers the same prompt
and is scored by the same strict rule.
"""
