"""Document affinity for Ray Serve: a question goes where its document's memory already is.

A replica that has read or loaded a document holds its memory in RAM; any other replica
would load it again from the shared ``--memory-dir`` first. :class:`DocumentAffinityRouter`
is a Ray Serve request router (``ray.serve.request_router.RequestRouter``, set on the
deployment by :mod:`qllm_integrations.serve.ray`) that sends a request naming a document to
a replica holding it, as Ray's own ``PrefixCacheAffinityRouter`` does for prompt prefixes.

What each replica holds comes from the replicas themselves: the deployment's
``record_routing_stats`` returns ``{"documents": [ids...]}``, which Serve's controller polls
every ``request_routing_stats_period_s`` and hands to every router as
``RunningReplica.routing_stats``. The router runs in Serve's HTTP proxy, before the request
body is read, so the document id travels in a header the proxy does read:
:data:`~qllm_integrations.remote.wire.DOCUMENT_HEADER` (Serve's model-multiplexing header,
which the proxy puts in ``PendingRequest.metadata.multiplexed_model_id``). A request
without it is routed as Serve's default router does (the less loaded of two random
replicas).

This module imports only Ray (it is loaded by Serve's proxies and controller, which need
neither torch nor FastAPI).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

DOCUMENTS_STAT = "documents"
"""Key of a replica's routing stats: the ids of the document memories it holds in RAM."""


class DocumentAffinityRouter(RequestRouter):
    """Replicas holding the request's document first; else the less loaded of two at random.

    Each call returns ranks of replicas; Serve sends the request to the least loaded replica
    of the first rank that has a free slot (fewer than ``max_ongoing_requests`` in flight)
    and backs off and asks again when none has. So a document's holder gets its questions
    until it is full, then they spill over to the others, which load the memory from the
    shared directory and hold it from then on.

    Not FIFO (no ``FIFOMixin``): Serve then hands the replica chosen for a request to that
    very request, never to an older request about another document.
    """

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        """``[holders, two others at random]``, without the empty ranks."""
        document = ""
        if pending_request is not None:
            # sleep between rounds when every replica is full instead of asking at once
            pending_request.routing_context.should_backoff = True
            document = pending_request.metadata.multiplexed_model_id
        holders = [r for r in candidate_replicas if document and _holds(r, document)]
        others = [r for r in candidate_replicas if r not in holders]
        random.shuffle(holders)
        ranks = (holders, random.sample(others, min(2, len(others))))
        return [rank for rank in ranks if rank]


def _holds(replica: RunningReplica, document: str) -> bool:
    """Whether ``replica`` last reported ``document``'s memory among those it holds."""
    held: Sequence[str] = replica.routing_stats.get(DOCUMENTS_STAT, ())
    return document in held
