"""WavLM's gated relative position bias: self-attention whose shared position bias is rescaled per query.

The stack computes one T5-style bucketed bias ``B: (1, head_index, query_pos, key_pos)`` (WavLM stores its
table in block 0 and shares it with every block). Each block gates it per head and query from the block's
attention input ``x`` split into heads ``x_h: (d_head,)``::

    a, b  = sigmoid(sum over groups of 4 of (x_h @ W_gate + b_gate))      # 8 outputs -> 2 gates
    gate  = a * (b * gate_const[h] - 1) + 2                                # in (1 - ..., 3)
    score = q . k * scale + gate[query] * B[query, key] + mask

``W_gate: (d_head, 8)`` and ``b_gate: (8,)`` are shared by the heads; ``gate_const: (head_index,)`` is per head.
With the block's per-head inputs (``hook_q_input``...), head ``h``'s gate is read from its q input.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from encoderlens.components.attention import Attention, KVCache
from encoderlens.config import AttentionConfig
from encoderlens.hooks import HookPoint

#: Outputs of WavLM's gate projection (``gru_rel_pos_linear``): two gates, each a sum of 4.
GATE_OUT = 8


class GatedRelativeAttention(Attention):
    """Self-attention with WavLM's gated relative position bias.

    Extra hooks (shapes):
        hook_position_gate: ``(batch, query_pos, head_index)``, the gate each query applies to the shared bias.
        hook_gated_position_bias: ``(batch, head_index, query_pos, key_pos)``, ``gate * bias``, what is added
            to the scores (``hook_attn_scores`` holds the biased, masked scores).
    """

    def __init__(self, d_model: int, cfg: AttentionConfig) -> None:
        super().__init__(d_model, cfg)
        self.W_gate = nn.Parameter(torch.empty(cfg.d_head, GATE_OUT))
        self.b_gate = nn.Parameter(torch.zeros(GATE_OUT))
        self.gate_const = nn.Parameter(torch.ones(cfg.n_heads))
        self.hook_position_gate = HookPoint()
        self.hook_gated_position_bias = HookPoint()

    def position_gate(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos head_index"]:
        """The per-head, per-query gate computed from the attention input."""
        return self._gate_from_heads(x.unflatten(-1, (self.cfg.n_heads, -1)))

    def _gate_from_heads(
        self, x_h: Float[Tensor, "batch pos head_index d_head"]
    ) -> Float[Tensor, "batch pos head_index"]:
        proj = x_h @ self.W_gate + self.b_gate  # (batch, pos, head, 8)
        gate_a, gate_b = torch.sigmoid(proj.unflatten(-1, (2, GATE_OUT // 2)).sum(-1)).unbind(-1)
        return gate_a * (gate_b * self.gate_const - 1.0) + 2.0

    def forward(
        self,
        query_input: Float[Tensor, "batch query_pos d_model"],
        key_input: Float[Tensor, "batch key_pos d_kv"] | None = None,
        value_input: Float[Tensor, "batch key_pos d_kv"] | None = None,
        *,
        additive_mask: Float[Tensor, "#batch 1 #query_pos key_pos"] | None = None,
        position_bias: Float[Tensor, "#batch head_index query_pos key_pos"] | None = None,
        kv_cache: KVCache | None = None,
        split: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> Float[Tensor, "batch query_pos d_model"]:
        """Gate ``position_bias`` (the stack's shared, ungated bias) per query, then attend as :class:`Attention`."""
        if key_input is not None or value_input is not None or kv_cache is not None:
            raise ValueError(
                "gated relative attention is self-attention over a whole sequence (no cross-attention, no KV cache)"
            )
        if position_bias is None:
            raise ValueError("gated relative attention needs the stack's relative position bias (position_bias)")
        if split is None:
            gate = self.position_gate(query_input)
        else:
            # per-head inputs: head h's gate is read from its own q input (the gate belongs to the query)
            h = self.cfg.n_heads
            gate = self._gate_from_heads(
                torch.diagonal(split[0].unflatten(-1, (h, -1)), dim1=2, dim2=3).transpose(-1, -2)
            )
        gate = self.hook_position_gate(gate)
        gated = self.hook_gated_position_bias(gate.transpose(1, 2)[..., None] * position_bias)
        return super().forward(query_input, additive_mask=additive_mask, position_bias=gated, split=split)
