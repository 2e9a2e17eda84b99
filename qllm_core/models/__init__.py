"""The model: loading it, attaching the engine through transformers' seams, and stepping it.

``patching`` registers the engine's attention and makes RoPE switchable; ``forward`` runs
one step over new tokens, with the engine's attention (a request's block memory) or the
model's own (a KV cache); ``question_attention`` records what the question attends to in a
``full`` read; ``family`` says what the engine reads from each model family's config.
"""
