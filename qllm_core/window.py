"""The recent tokens of one layer (local window plus remainder) in preallocated buffers.

Appending and dropping tokens move no data except an occasional compaction, and the
keys are kept twice: unrotated (for memory blocks, which are re-positioned) and rotated
for the local stage at ``position - base``. Since RoPE scores depend only on the
difference of positions, ``base`` may be any offset; it is moved forward now and then
so that no rotation angle grows with the length of the input.
"""

from __future__ import annotations

import torch

from .rope import RotaryTable, rotate


class RecentTokens:
    """Keys, values and accumulated local attention of positions ``[start, end)``.

    Args:
        capacity: most tokens held at once (window + remainder + one execution block).
        num_kv_heads, head_dim, device, dtype: shape and placement of the buffers.
        rope: the model's rotary table, for the local-stage rotation.
    """

    def __init__(
        self,
        *,
        capacity: int,
        num_kv_heads: int,
        head_dim: int,
        device: torch.device,
        dtype: torch.dtype,
        rope: RotaryTable,
    ) -> None:
        self._rope = rope
        self._capacity = capacity
        size = 2 * capacity  # room to append without compacting every time
        self._keys = torch.empty(num_kv_heads, size, head_dim, device=device, dtype=dtype)
        self._keys_local = torch.empty_like(self._keys)
        self._values = torch.empty_like(self._keys)
        self._scores = torch.zeros(num_kv_heads, size, device=device, dtype=torch.float32)
        self._lo = 0  # buffer index of position `start`
        self._hi = 0
        self.start = 0
        self.base = 0  # local-stage rotation of position p is at p - base

    def __len__(self) -> int:
        return self._hi - self._lo

    @property
    def end(self) -> int:
        """One past the last position held."""
        return self.start + len(self)

    @property
    def keys(self) -> torch.Tensor:
        """(H, len, D) unrotated keys."""
        return self._keys[:, self._lo : self._hi]

    @property
    def keys_local(self) -> torch.Tensor:
        """(H, len, D) keys rotated at ``position - base``."""
        return self._keys_local[:, self._lo : self._hi]

    @property
    def values(self) -> torch.Tensor:
        """(H, len, D) values."""
        return self._values[:, self._lo : self._hi]

    @property
    def scores(self) -> torch.Tensor:
        """(H, len) attention each token received while in the local window (float32)."""
        return self._scores[:, self._lo : self._hi]

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Add the next ``n`` positions. keys, values: (H, n, D), unrotated."""
        n = keys.shape[1]
        if len(self) + n > self._capacity:
            raise AssertionError(f"recent tokens overflow: {len(self)} + {n} > {self._capacity}")
        if self._hi + n > self._keys.shape[1]:
            self._compact()
        if self.end + n - self.base > 2 * self._capacity:
            self._rebase()
        lo, hi = self._hi, self._hi + n
        self._keys[:, lo:hi] = keys
        self._values[:, lo:hi] = values
        self._scores[:, lo:hi] = 0
        cos, sin = self._rope.at(slice(self.end - self.base, self.end - self.base + n))
        self._keys_local[:, lo:hi] = rotate(keys, cos, sin)
        self._hi = hi

    def drop(self, count: int) -> None:
        """Forget the oldest ``count`` positions."""
        assert count <= len(self)
        self._lo += count
        self.start += count

    def _compact(self) -> None:
        n = len(self)
        for buf in (self._keys, self._keys_local, self._values, self._scores):
            buf[:, :n] = buf[:, self._lo : self._hi].clone()
        self._lo, self._hi = 0, n

    def _rebase(self) -> None:
        self.base = self.start
        cos, sin = self._rope.at(slice(0, len(self)))
        self._keys_local[:, self._lo : self._hi] = rotate(self.keys, cos, sin)
