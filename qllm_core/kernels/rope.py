"""Rotary position embedding at positions the engine chooses.

The model's own rotary module computes cos/sin (so every RoPE variant the model
ships, scaled ones included, stays exact); this module only caches a table of
them and applies the rotation.
"""

from __future__ import annotations

import torch
from torch import nn


class RotaryTable:
    """cos/sin of the model's rotary module for positions ``0 .. size - 1``, grown on demand."""

    def __init__(self, rotary: nn.Module, *, device: torch.device, dtype: torch.dtype) -> None:
        self._rotary = rotary
        self._device = device
        self._dtype = dtype
        self._cos = torch.empty(0, 0, device=device, dtype=dtype)
        self._sin = torch.empty(0, 0, device=device, dtype=dtype)

    def _grow(self, size: int) -> None:
        size = max(size, 2 * self._cos.shape[0])
        positions = torch.arange(size, device=self._device)[None]
        probe = torch.empty(1, device=self._device, dtype=self._dtype)
        cos, sin = self._rotary(probe, positions)
        self._cos, self._sin = cos[0].to(self._dtype), sin[0].to(self._dtype)
        self._identity_at_zero = bool((self._cos[0] == 1).all() and (self._sin[0] == 0).all())

    def rotate_at_zero(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` rotated at position 0: (..., n, head_dim); a no-op for unscaled RoPE."""
        cos, sin = self.at(0)
        return x if self._identity_at_zero else rotate(x, cos, sin)

    def at(self, positions: torch.Tensor | int | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin at ``positions``: each ``(n, rot_dim)`` (``(rot_dim,)`` for an int)."""
        if isinstance(positions, slice):
            needed = positions.stop
        elif isinstance(positions, int):
            needed = positions + 1
        else:
            needed = int(positions.max()) + 1 if positions.numel() else 0
        if needed > self._cos.shape[0]:
            self._grow(needed)
        return self._cos[positions], self._sin[positions]


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply RoPE to the first ``rot_dim`` features of ``x`` (rotate-half convention).

    x: (..., n, head_dim); cos, sin: (n, rot_dim) or (rot_dim,), rot_dim <= head_dim.
    Features past ``rot_dim`` (partial rotary, e.g. Phi-3, GPT-NeoX) pass unchanged.
    """
    rot_dim = cos.shape[-1]
    x_rot, x_pass = x[..., :rot_dim], x[..., rot_dim:]
    half = rot_dim // 2
    rotated = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)
    x_rot = x_rot * cos + rotated * sin
    return torch.cat((x_rot, x_pass), dim=-1) if x_pass.shape[-1] else x_rot
