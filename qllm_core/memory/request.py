"""Per-request, per-layer Q-LLM state: the four token streams and one execution block's attention.

Positions: a token's *position* is its index in the prompt-plus-answer stream. For a query
at position ``p`` a key at ``j`` is *local* when ``p - n_local < j <= p`` and *global*
when ``j <= p - n_local``. Local keys are rotated at their true relative positions; every
global key sits at position 0 and every global query at ``n_local - 1``.

Layout of one layer's memory (positions increase left to right)::

    [ init tokens ][ block 0 ][ block 1 ] ... [ recent: remainder | local window ]
      <= n_init     stored in a BlockStore      recent_k / recent_v / recent_scores

Tokens leave ``recent`` only once they are global for every later query. The oldest
ones then become init tokens (until ``n_init`` are kept), or a memory block once
``block_size`` of them have left; the rest stay in ``recent`` as *remainder* tokens,
attended in the global stage under a mask.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..config import QLLMConfig
from ..kernels.attention import KeySegment, LocalWindow
from ..kernels.attention import two_stage_attention as torch_two_stage_attention
from ..kernels.backends import TwoStageAttention, select_attention
from ..kernels.rope import RotaryTable, rotate
from ..models.forward import QLLMForward
from ..modes import mode_spec
from .blocks import BlockShape, BlockStore, Tiers
from .retrieval import (
    block_log_mass,
    block_relevance,
    block_scores,
    current_vector,
    question_vector,
    representative_keys,
    select_blocks,
)
from .window import RecentTokens

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ..models.patching import AttachedModel
    from ..models.question_attention import QuestionAttention


@dataclass(frozen=True)
class RequestPlan:
    """What one request's memory needs to know beyond the config.

    ``question_span``: token span ``(start, end)`` of the question (end exclusive), or
    ``None`` (then Q-LLM degrades to InfLLM). ``record_from``: retrievals by queries at or
    after this position are counted in the request's evidence statistics. ``rank_span``:
    token span whose queries are kept to rank the memory blocks after the read
    (:meth:`LayerMemory.block_relevance`), or ``None``.
    """

    question_span: tuple[int, int] | None
    record_from: int
    rank_span: tuple[int, int] | None = None


@dataclass(frozen=True)
class LayerContext:
    """What every layer of one request's memory shares.

    ``counts``: retrievals per block id, counted by every layer (the evidence);
    ``offload_dtype``: the host tier's dtype (``None``: the model's ``dtype``).
    """

    config: QLLMConfig
    plan: RequestPlan
    rope: RotaryTable
    device: torch.device
    dtype: torch.dtype
    counts: Counter[int]
    offload_dtype: torch.dtype | None = None
    two_stage_attention: TwoStageAttention = torch_two_stage_attention


class LayerMemory:
    """Token streams of one layer for one request (batch size 1)."""

    def __init__(self, context: LayerContext, num_kv_heads: int, head_dim: int) -> None:
        config, device, dtype = context.config, context.device, context.dtype
        rope = context.rope
        self.config = config
        self._two_stage_attention = context.two_stage_attention
        self.plan = context.plan
        self.rope = rope
        self.position = 0
        self.counts = context.counts
        self._keep_blocks = mode_spec(config.mode).keeps_all_tokens
        self.init_k = torch.empty(num_kv_heads, 0, head_dim, device=device, dtype=dtype)
        self.init_v = self.init_k
        capacity = config.n_local + config.block_size + config.exec_block_size
        self.recent = RecentTokens(
            capacity=capacity,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            device=device,
            dtype=dtype,
            rope=rope,
        )
        self._shape = BlockShape(num_kv_heads, config.block_size, head_dim)
        self._tiers = Tiers(
            device, dtype, config.max_cached_blocks, context.offload_dtype, config.offload_dir
        )
        self.store = BlockStore(self._shape, self._tiers)
        self.question: torch.Tensor | None = None
        self._question_queries: list[torch.Tensor] = []
        self._rank_queries: list[torch.Tensor] = []
        self._scaling = 1.0

    def fork(self, plan: RequestPlan, counts: Counter[int]) -> LayerMemory:
        """The layer's state to read on from, for a new request with ``plan``.

        Memory blocks and init tokens are shared (copy on write), the recent tokens copied,
        the question state fresh. Feed this layer no more tokens afterwards.
        """
        fork = copy.copy(self)
        fork.plan, fork.counts = plan, counts
        fork.recent = self.recent.clone()
        fork.store = self.store.fork()
        fork.question = None
        fork._question_queries, fork._rank_queries = [], []
        return fork

    def state(self) -> dict[str, torch.Tensor]:
        """The layer's tensors (host copies), for saving; :meth:`restore` reads them back.

        init_k/init_v (H, n_init', D); recent_* (see :meth:`RecentTokens.state`);
        block_keys/block_values (blocks, H, block_size, D); representatives (blocks, H, D);
        position (1,).
        """
        block_keys, block_values = self.store.host_blocks()
        recent = {f"recent_{k}": v for k, v in self.recent.state().items()}
        tensors = {
            "init_k": self.init_k,
            "init_v": self.init_v,
            **recent,
            "block_keys": block_keys,
            "block_values": block_values,
            "representatives": self.store.representatives,
            "position": torch.tensor([self.position]),
        }
        return {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        """Take over a :meth:`state` (of a layer with this config).

        The blocks are adopted as they are (memory-mapped tensors stay mapped) and only
        read through forks.
        """
        device, dtype = self.init_k.device, self.init_k.dtype
        self.init_k = state["init_k"].to(device, dtype)
        self.init_v = state["init_v"].to(device, dtype)
        recent = {  # keys and values in the model's dtype; scores and span as saved
            name.removeprefix("recent_"): (
                t.to(device) if name in ("recent_scores", "recent_span") else t.to(device, dtype)
            )
            for name, t in state.items()
            if name.startswith("recent_")
        }
        self.recent = RecentTokens.from_state(recent, rope=self.rope)
        self.store = BlockStore.frozen(
            state["block_keys"],
            state["block_values"],
            state["representatives"],
            self._shape,
            self._tiers,
        )
        self.position = int(state["position"][0])

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float
    ) -> torch.Tensor:
        """Attention for the next ``n`` tokens, in execution blocks.

        q: (heads, n, D); k, v: (kv_heads, n, D), all unrotated. Returns (heads, n, D).
        """
        step = self.config.exec_block_size
        outputs = [
            self._attend_block(q[:, s : s + step], k[:, s : s + step], v[:, s : s + step], scaling)
            for s in range(0, q.shape[1], step)
        ]
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)

    def _attend_block(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float
    ) -> torch.Tensor:
        heads, n, dim = q.shape
        kv_heads = k.shape[0]
        start, n_local, recent = self.position, self.config.n_local, self.recent
        self._evict(upto=start - n_local + 1)
        recent.append(k, v)
        q = q.view(kv_heads, heads // kv_heads, n, dim)

        cos, sin = self.rope.at(slice(start - recent.base, start - recent.base + n))
        q_local = rotate(q, cos, sin)
        # keys the local stage can reach: the window before the block, and the block itself
        first = max(start - n_local + 1, recent.start) - recent.start
        local = LocalWindow(recent.keys_local[:, first:], recent.values[:, first:], n_local)

        q_global = rotate(q, *self.rope.at(n_local - 1))
        out, local_probs = self._two_stage_attention(
            q_local, local, q_global, self._global_segments(q_global, start, n), scaling
        )
        recent.scores[:, first:].add_(local_probs)
        self._track_question(q_global, start, n)
        self._keep_rank_queries(q_global, start, n, scaling)
        self.position += n
        return out.reshape(heads, n, dim)

    def _global_segments(self, q_global: torch.Tensor, start: int, n: int) -> list[KeySegment]:
        """Init tokens, retrieved blocks and remainder tokens (masked) for the global stage."""
        segments = [KeySegment(self.init_k, self.init_v)]
        if not self._keep_blocks:
            return segments
        last = start + n - 1
        if len(self.store):
            ids = select_blocks(
                self.store.representatives,
                current_vector(q_global),
                self.question,
                self.config.effective_question_weight,
                self.config.topk,
            )
            segments.extend(KeySegment(k, v) for k, v in self.store.fetch(ids))
            if last >= self.plan.record_from:
                self.counts.update(ids)
        # remainder: recent tokens at positions <= query - n_local (global for that query)
        recent, n_local = self.recent, self.config.n_local
        n_remainder = max(0, min(last - n_local + 1, recent.end) - recent.start)
        if n_remainder:
            keys = self.rope.rotate_at_zero(recent.keys[:, :n_remainder])
            offset = start - n_local - recent.start  # query i sees key j iff j <= i + offset
            segments.append(KeySegment(keys, recent.values[:, :n_remainder], offset))
        return segments

    def _evict(self, upto: int) -> None:
        """Move tokens at positions < ``upto`` (global for all later queries) out of recent."""
        cfg, recent = self.config, self.recent
        while recent.start < upto:
            r0 = recent.start
            if r0 < cfg.n_init:
                count = min(cfg.n_init, upto) - r0
                keys = self.rope.rotate_at_zero(recent.keys[:, :count])
                self.init_k = torch.cat([self.init_k, keys], dim=1)
                self.init_v = torch.cat([self.init_v, recent.values[:, :count]], dim=1)
            elif not self._keep_blocks:
                count = upto - r0
            elif r0 + cfg.block_size <= upto:  # every whole block that left, at once
                count = (upto - r0) // cfg.block_size * cfg.block_size
                keys = self.rope.rotate_at_zero(recent.keys[:, :count])
                scores = recent.scores[:, :count]
                representatives = representative_keys(keys, scores, cfg.block_size, cfg.repr_topk)
                self.store.append(keys, recent.values[:, :count], representatives)
            else:
                return
            recent.drop(count)

    def _track_question(self, q_global: torch.Tensor, start: int, n: int) -> None:
        """Collect the question's queries; build the question vector once the span is read."""
        span = self.plan.question_span
        if span is None or self.question is not None:
            return
        lo, hi = max(span[0], start), min(span[1], start + n)
        if lo < hi:
            self._question_queries.append(q_global[:, :, lo - start : hi - start])
        if span[1] <= start + n and self._question_queries:
            queries = torch.cat(self._question_queries, dim=2)
            positions = torch.arange(span[0], span[1], device=queries.device) - self.recent.start
            scores = self.recent.scores.new_zeros(queries.shape[0], queries.shape[2])
            present = positions >= 0  # tokens that already left the window keep score 0
            scores[:, present] = self.recent.scores[:, positions[present]]
            self.question = question_vector(queries, scores, self.config.repr_topk)
            self._question_queries = []

    def _keep_rank_queries(
        self, q_global: torch.Tensor, start: int, n: int, scaling: float
    ) -> None:
        span = self.plan.rank_span
        if span is None:
            return
        lo, hi = max(span[0], start), min(span[1], start + n)
        if lo < hi:
            self._rank_queries.append(q_global[:, :, lo - start : hi - start].clone())
            self._scaling = scaling

    def block_log_mass(self) -> torch.Tensor | None:
        """The rank span's log attention mass per block: (H, G, n, num_blocks), or ``None``.

        The rank span's queries (rotated for the global stage) are scored against every key
        of every block (all at position 0) and each block's logits are reduced by logsumexp
        (:func:`~qllm_core.memory.retrieval.block_log_mass`); ``None`` without blocks or
        without a rank span.
        """
        if not self._rank_queries or not len(self.store):
            return None
        queries = torch.cat(self._rank_queries, dim=2)
        return torch.cat(
            [
                block_log_mass(queries, page.to(queries.device), self._scaling)
                for page in self.store.host_key_pages()
            ],
            dim=-1,
        )

    def block_relevance(self, ranking: str = "mean") -> torch.Tensor:
        """How much of the rank span's attention each memory block draws: (num_blocks,).

        A softmax over all blocks of :meth:`block_log_mass` per query, reduced over heads
        and queries as ``ranking`` says
        (:func:`~qllm_core.memory.retrieval.block_relevance`); zeros without blocks or
        without a rank span.
        """
        log_mass = self.block_log_mass()
        if log_mass is None:
            return torch.zeros(len(self.store))
        return block_relevance(log_mass, ranking).cpu()


class RequestMemory:
    """All layers' Q-LLM state for one request; handed to the attention via ``model(...)``."""

    def __init__(
        self,
        *,
        config: QLLMConfig,
        plan: RequestPlan,
        rope: RotaryTable,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.config, self.plan, self.rope = config, plan, rope
        self.device, self.dtype = device, dtype
        self.offload_dtype = getattr(torch, config.offload_dtype) if config.offload_dtype else None
        self.two_stage_attention = select_attention(config.attention_backend, device)
        self.counts: Counter[int] = Counter()
        self.layers: dict[int, LayerMemory] = {}

    def attend(
        self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float
    ) -> torch.Tensor:
        """q: (heads, n, D); k, v: (kv_heads, n, D) unrotated. Returns (heads, n, D)."""
        layer = self.layers.get(layer_idx)
        if layer is None:
            layer = self.new_layer(layer_idx, k.shape[0], k.shape[-1])
        return layer.attend(q, k, v, scaling)

    def fork(self, plan: RequestPlan) -> RequestMemory:
        """All layers forked (:meth:`LayerMemory.fork`) for a new request with ``plan``."""
        fork = copy.copy(self)
        fork.plan, fork.counts = plan, Counter()
        fork.layers = {i: layer.fork(plan, fork.counts) for i, layer in self.layers.items()}
        return fork

    def new_layer(self, layer_idx: int, num_kv_heads: int, head_dim: int) -> LayerMemory:
        """Layer ``layer_idx``'s empty memory (made on its first :meth:`attend`)."""
        context = LayerContext(
            self.config,
            self.plan,
            self.rope,
            self.device,
            self.dtype,
            self.counts,
            self.offload_dtype,
            self.two_stage_attention,
        )
        layer = self.layers[layer_idx] = LayerMemory(context, num_kv_heads, head_dim)
        return layer

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors it holds: init tokens, window, blocks and representatives."""
        total = 0
        for layer in self.layers.values():
            total += layer.store.host_bytes() + layer.store.representatives.nbytes
            total += layer.init_k.nbytes + layer.init_v.nbytes
            total += sum(t.nbytes for t in layer.recent.state().values())
        return total

    def layer_states(self) -> list[dict[str, torch.Tensor]]:
        """Each layer's :meth:`LayerMemory.state`, in layer order (for saving)."""
        return [self.layers[i].state() for i in sorted(self.layers)]

    def restore(self, layer_states: list[dict[str, torch.Tensor]]) -> RequestMemory:
        """Take over saved :meth:`layer_states` (this memory must be new); returns itself."""
        for index, state in enumerate(layer_states):
            keys = state["init_k"]
            self.new_layer(index, keys.shape[0], keys.shape[2]).restore(state)
        return self

    def forward(
        self,
        model: PreTrainedModel,
        attached: AttachedModel,
        recorder: QuestionAttention | None = None,
    ) -> QLLMForward:
        """A forward step over this memory, with the engine's attention.

        ``recorder`` is not used: the block memory ranks its blocks itself.
        """
        return QLLMForward(model, attached, self)

    def block_relevance(self, ranking: str = "mean") -> torch.Tensor:
        """Per layer, how much of the rank span's attention each block draws: (layers, blocks).

        See :meth:`LayerMemory.block_relevance`; rows in layer order.
        """
        rows = [self.layers[i].block_relevance(ranking) for i in sorted(self.layers)]
        return torch.stack(rows) if rows else torch.zeros(0, 0)

    def ranked_scores(self, config: QLLMConfig) -> torch.Tensor:
        """Each block's score as the re-read and the evidence rank it: (num_blocks,).

        :func:`~qllm_core.memory.retrieval.block_scores` of :meth:`block_relevance` under
        ``config``'s ``reread_ranking``, ``reread_layers`` and ``reread_neighbours``.
        """
        per_layer = self.block_relevance(config.reread_ranking)
        layers, ids = config.reread_layers, sorted(self.layers)
        return block_scores(per_layer, config.reread_neighbours, layers, ids)
