"""Which kernels run the two-stage attention: the torch path or the Triton path."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence

import torch

from ..errors import ConfigError
from . import attention
from .attention import KeySegment, LocalWindow

TwoStageAttention = Callable[
    [torch.Tensor, LocalWindow, torch.Tensor, Sequence[KeySegment], float],
    tuple[torch.Tensor, torch.Tensor],
]


def select_attention(backend: str, device: torch.device) -> TwoStageAttention:
    """The two-stage attention of ``backend`` (``auto``, ``torch``, ``triton``) on ``device``.

    ``auto`` takes the Triton path on a CUDA device when triton is installed, and the
    torch path otherwise. An explicit ``triton`` that cannot run raises
    :class:`~qllm_core.errors.ConfigError` saying why.
    """
    if backend == "auto":
        backend = "triton" if device.type == "cuda" and _triton_installed() else "torch"
    if backend == "torch":
        return attention.two_stage_attention
    problem = _triton_problem(device)
    if problem is not None:
        raise ConfigError(
            f"QLLMConfig.attention_backend 'triton' cannot run here: {problem}. "
            "Use attention_backend='torch' (or 'auto', which picks triton where it can run)."
        )
    from .triton_attention import two_stage_attention

    return two_stage_attention


def _triton_problem(device: torch.device) -> str | None:
    """Why the Triton kernels cannot run on ``device``; ``None`` when they can."""
    if not _triton_installed():
        return "the triton package is not installed (pip install 'quickllama[triton]')"
    if device.type != "cuda" and not _interpreted():
        return (
            f"its kernels run on CUDA devices and the model is on {device.type!r} "
            "(TRITON_INTERPRET=1, set before Python starts, runs them in Triton's interpreter "
            "on the CPU, for testing)"
        )
    return None


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _interpreted() -> bool:
    """Whether Triton runs kernels in its interpreter (the ``TRITON_INTERPRET`` variable)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "yes", "on")
