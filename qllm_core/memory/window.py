"""The recent tokens of one layer (local window plus remainder) in preallocated buffers.

Appending and dropping tokens move no data except an occasional compaction, and the
keys are kept twice: unrotated (for memory blocks, which are re-positioned) and rotated
for the local stage at ``position - base``. Since RoPE scores depend only on the
difference of positions, ``base`` may be any offset; it is moved forward now and then
so that no rotation angle grows with the length of the input.
"""

from __future__ import annotations

import copy

import torch

from ..kernels.rope import RotaryTable, rotate


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

    def clone(self) -> RecentTokens:
        """An independent copy (the buffers are copied, the rotary table shared)."""
        twin = copy.copy(self)
        for name in ("_keys", "_keys_local", "_values", "_scores"):
            setattr(twin, name, getattr(self, name).clone())
        return twin

    def state(self) -> dict[str, torch.Tensor]:
        """The positions held, as tensors; :meth:`from_state` rebuilds it.

        keys, keys_local, values (H, len, D), scores (H, len), ``span`` = (start, base,
        capacity).
        """
        return {
            "keys": self.keys,
            "keys_local": self.keys_local,
            "values": self.values,
            "scores": self.scores,
            "span": torch.tensor([self.start, self.base, self._capacity]),
        }

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], *, rope: RotaryTable) -> RecentTokens:
        """The tokens :meth:`state` described, in fresh buffers on ``state``'s device."""
        start, base, capacity = (int(x) for x in state["span"])
        keys = state["keys"]
        recent = cls(
            capacity=capacity,
            num_kv_heads=keys.shape[0],
            head_dim=keys.shape[2],
            device=keys.device,
            dtype=keys.dtype,
            rope=rope,
        )
        n = keys.shape[1]
        for name in ("keys", "keys_local", "values", "scores"):
            getattr(recent, f"_{name}")[:, :n] = state[name]
        recent._hi, recent.start, recent.base = n, start, base
        return recent

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
