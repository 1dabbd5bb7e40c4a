"""T5-style bucketed relative position bias.

Each (query, key) pair is assigned a bucket from the signed distance ``key_pos - query_pos``; each bucket
has one learned scalar per head, added to the attention scores. Half of the buckets (per direction)
hold exact small distances, the other half cover distances up to ``max_distance`` on a log scale;
anything farther shares the last bucket.

The bias is computed once per forward by the stack that owns it and shared by every block (T5 stores
the table in block 0 only).
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from encoderlens.config import RelativePositionConfig


def relative_position_bucket(
    relative_position: Int[Tensor, "query_pos key_pos"],
    bidirectional: bool,
    num_buckets: int,
    max_distance: int,
) -> Int[Tensor, "query_pos key_pos"]:
    """Map signed distances ``key_pos - query_pos`` to bucket indices in ``[0, num_buckets)``.

    Bidirectional (encoder): buckets ``[0, num_buckets/2)`` are keys at or before the query,
    ``[num_buckets/2, num_buckets)`` keys after it. Unidirectional (causal decoder): every bucket
    describes the past; keys after the query (masked anyway) fall in bucket 0 with distance 0.

    Within one direction with ``n`` buckets: distances ``< n/2`` get their own bucket; larger ones get
    ``n/2 + floor(log(d / (n/2)) / log(max_distance / (n/2)) * (n - n/2))``, capped at ``n - 1``.
    """
    n = num_buckets
    bucket = torch.zeros_like(relative_position)
    if bidirectional:
        n //= 2
        # keys after the query use the upper half of the buckets
        bucket = bucket + (relative_position > 0).long() * n
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    exact = n // 2
    is_exact = distance < exact
    # the float expression mirrors mesh-tensorflow's; computing it in another order can move a bucket boundary
    log_ratio = torch.log(distance.float() / exact) / math.log(max_distance / exact)
    far = exact + (log_ratio * (n - exact)).long()
    far = far.clamp(max=n - 1)
    return bucket + torch.where(is_exact, distance, far)


class RelativePositionBias(nn.Module):
    """Learned per-head bias for each relative-position bucket: ``W_rel: (num_buckets, head_index)``.

    Returns a bias of shape ``(1, head_index, query_pos, key_pos)``. ``past_len`` places the queries
    after cached keys during generation: query ``i`` sits at absolute position ``past_len + i`` while keys
    cover ``[0, key_len)``.
    """

    def __init__(self, n_heads: int, cfg: RelativePositionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.W_rel = nn.Parameter(torch.empty(cfg.num_buckets, n_heads))

    @property
    def weight(self) -> Float[Tensor, "num_buckets head_index"]:
        """``W_rel`` under the name of HF's / TransformerLens's ``nn.Embedding`` (``rel_pos_bias.weight``)."""
        return self.W_rel

    def buckets(self, query_len: int, key_len: int, past_len: int = 0) -> Int[Tensor, "query_pos key_pos"]:
        """Bucket index of every (query, key) pair."""
        device = self.W_rel.device
        q_pos = torch.arange(query_len, device=device)[:, None] + past_len
        k_pos = torch.arange(key_len, device=device)[None, :]
        return relative_position_bucket(
            k_pos - q_pos, self.cfg.bidirectional, self.cfg.num_buckets, self.cfg.max_distance
        )

    def forward(
        self, query_len: int, key_len: int, past_len: int = 0
    ) -> Float[Tensor, "1 head_index query_pos key_pos"]:
        values = nn.functional.embedding(self.buckets(query_len, key_len, past_len), self.W_rel)
        return values.permute(2, 0, 1)[None]
