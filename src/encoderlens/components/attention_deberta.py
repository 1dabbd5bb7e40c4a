"""DeBERTa-v2/v3 disentangled attention: content and relative-position terms, each with a hook point.

Scores of head ``h`` from query ``i`` to key ``j`` (all scaled by ``cfg.attn_scale``, which the
converter sets to ``1 / sqrt(d_head * (1 + n_position_terms))``)::

    c2c[i, j] = q_i . k_j                    content -> content    hook_c2c_scores
    c2p[i, j] = q_i . P_k[d(i, j)]           content -> position   hook_c2p_scores
    p2c[i, j] = k_j . P_q[d'(j, i)]          position -> content   hook_p2c_scores
    scores    = c2c + c2p + p2c + mask                              hook_attn_scores

``P_q``/``P_k`` project a table of ``2 * att_span`` relative embeddings (computed once per forward by
:class:`RelativeEmbedding` and shared by every block) with the content ``W_Q``/``W_K``
(``share_att_key``, DeBERTa-v3) or with separate ``W_Q_pos``/``W_K_pos``. ``d(i, j)`` is the row of
the (log-bucketed, clamped) distance ``i - j``; ``d'(j, i)`` the row of ``-(j - i)``, as in HF.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from encoderlens.components.attention import Attention, KVCache
from encoderlens.components.norm import make_norm
from encoderlens.config import AttentionConfig, DisentangledConfig
from encoderlens.hooks import HookPoint


@dataclass
class RelativeEmbeddings:
    """What every disentangled block reads: the relative embedding table and the row index per pair.

    Attributes:
        table: The (normalised) relative embeddings, with a leading batch-like dim of 1.
        c2p_index: Row of the table for query ``i`` and key ``j`` (content -> position).
        p2c_index: HF's position -> content index, ``[key j, query i]`` -> row of distance ``-(j - i)``.
    """

    table: Float[Tensor, "1 rel_pos d_model"]
    c2p_index: Int[Tensor, "query_pos key_pos"]
    p2c_index: Int[Tensor, "key_pos query_pos"]


def log_bucket_position(
    relative_pos: Int[Tensor, "query_pos key_pos"], bucket_size: int, max_position: int
) -> Int[Tensor, "query_pos key_pos"]:
    """DeBERTa's log buckets: distances below ``bucket_size // 2`` kept, larger ones log-compressed.

    The same arithmetic as HF's ``make_log_bucket_position`` (float log, ceil), so buckets match exactly.
    """
    sign = torch.sign(relative_pos)
    mid = bucket_size // 2
    abs_pos = torch.where(
        (relative_pos < mid) & (relative_pos > -mid),
        torch.tensor(mid - 1).type_as(relative_pos),
        torch.abs(relative_pos),
    )
    log_pos = torch.ceil(torch.log(abs_pos / mid) / torch.log(torch.tensor((max_position - 1) / mid)) * (mid - 1)) + mid
    bucket_pos = torch.where(abs_pos <= mid, relative_pos.type_as(log_pos), log_pos * sign)
    return bucket_pos.to(torch.long)


def relative_positions(
    query_len: int, key_len: int, cfg: DisentangledConfig, device: torch.device
) -> Int[Tensor, "query_pos key_pos"]:
    """``i - j`` for every query ``i`` and key ``j``, log-bucketed when ``cfg.position_buckets > 0``."""
    rel = torch.arange(query_len, device=device)[:, None] - torch.arange(key_len, device=device)[None, :]
    if cfg.position_buckets > 0:
        rel = log_bucket_position(rel, cfg.position_buckets, cfg.max_relative_positions)
    return rel


class RelativeEmbedding(nn.Module):
    """The relative embedding table ``W_rel: (2 * att_span, d_model)``, optionally normalised.

    Hook: ``hook_rel_embed`` ``(1, 2 * att_span, d_model)``, the table every block projects.
    """

    def __init__(self, d_model: int, cfg: DisentangledConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.W_rel = nn.Parameter(torch.empty(2 * cfg.att_span, d_model))
        self.ln = make_norm(d_model, cfg.norm) if cfg.norm is not None else None
        self.hook_rel_embed = HookPoint()

    def forward(self, query_len: int, key_len: int) -> RelativeEmbeddings:
        span = self.cfg.att_span
        table = self.W_rel if self.ln is None else self.ln(self.W_rel)
        table = self.hook_rel_embed(table[None])
        rel = relative_positions(query_len, key_len, self.cfg, self.W_rel.device)
        c2p = torch.clamp(rel + span, 0, 2 * span - 1)
        # HF indexes p2c by (key, query) with the negated distance, then transposes
        rel_kk = relative_positions(key_len, key_len, self.cfg, self.W_rel.device) if key_len != query_len else rel
        p2c = torch.clamp(-rel_kk + span, 0, 2 * span - 1)
        return RelativeEmbeddings(table, c2p, p2c)


class DisentangledAttention(Attention):
    """DeBERTa disentangled self-attention (see the module docstring for the terms).

    Weights: those of :class:`Attention` (``W_Q, W_K, W_V, W_O`` and biases) plus, without
    ``share_att_key``, ``W_K_pos, b_K_pos`` (c2p) and ``W_Q_pos, b_Q_pos`` (p2c).

    Hooks (besides :class:`Attention`'s): ``hook_pos_q`` / ``hook_pos_k`` ``(1, rel_pos, head_index, d_head)``
    (projected relative embeddings, present for the terms in use), ``hook_c2c_scores``,
    ``hook_c2p_scores``, ``hook_p2c_scores`` ``(batch, head_index, query_pos, key_pos)``.
    ``hook_attn_scores`` is their sum plus the mask.

    Per-head inputs (``split``, the block's ``hook_q/k/v_input``): head ``h`` computes ``q_h, k_h, v_h``
    from its own inputs; its c2p term reads ``q_h``, its p2c term ``k_h`` (``P_q``/``P_k`` project the
    relative table, not the stream, so they do not change).

    Self-attention only: no cross-attention, no KV cache.
    """

    def __init__(self, d_model: int, cfg: AttentionConfig) -> None:
        super().__init__(d_model, cfg)
        if cfg.disentangled is None:
            raise ValueError("DisentangledAttention needs AttentionConfig(kind='disentangled', disentangled=...)")
        if cfg.rotary is not None or cfg.local_window is not None:
            raise ValueError("disentangled attention does not combine with rotary embeddings or a local window")
        self.dcfg = dc = cfg.disentangled
        h, dh = cfg.n_heads, cfg.d_head
        separate = not dc.share_att_key
        self.W_K_pos = nn.Parameter(torch.empty(h, d_model, dh)) if separate and dc.c2p else None
        self.b_K_pos = nn.Parameter(torch.zeros(h, dh)) if separate and dc.c2p else None
        self.W_Q_pos = nn.Parameter(torch.empty(h, d_model, dh)) if separate and dc.p2c else None
        self.b_Q_pos = nn.Parameter(torch.zeros(h, dh)) if separate and dc.p2c else None
        self.hook_pos_q = HookPoint() if dc.p2c else None
        self.hook_pos_k = HookPoint() if dc.c2p else None
        self.hook_c2c_scores = HookPoint()
        self.hook_c2p_scores = HookPoint() if dc.c2p else None
        self.hook_p2c_scores = HookPoint() if dc.p2c else None

    def needs_explicit_pattern(self) -> bool:
        return super().needs_explicit_pattern() or self.hook_c2c_scores.has_hooks()

    def forward(
        self,
        query_input: Float[Tensor, "batch query_pos d_model"],
        key_input: Float[Tensor, "batch key_pos d_kv"] | None = None,
        value_input: Float[Tensor, "batch key_pos d_kv"] | None = None,
        *,
        additive_mask: Float[Tensor, "#batch #head_index #query_pos key_pos"] | None = None,
        position_bias: Float[Tensor, "#batch head_index query_pos key_pos"] | None = None,
        kv_cache: KVCache | None = None,
        split: tuple[Tensor, Tensor, Tensor] | None = None,
        rel_embeddings: RelativeEmbeddings | None = None,
    ) -> Float[Tensor, "batch query_pos d_model"]:
        """Attend from ``query_input`` to itself with content and relative-position terms.

        Args:
            query_input: Input of the attention.
            key_input, value_input: None or ``query_input`` itself (self-attention only).
            additive_mask: Added to the scores (0 = attend, very negative = blocked).
            position_bias: Extra additive bias (unused by DeBERTa; added if given).
            kv_cache: Must be None.
            split: Separate inputs per head for q, k and v, each ``(batch, pos, head_index, d_model)`` (the
                block's opt-in ``hook_q_input`` / ``hook_k_input`` / ``hook_v_input``); head ``h``'s q, k, v,
                and so its c2p / p2c terms, come from its own input. ``query_input`` then only sets the shapes.
            rel_embeddings: The shared relative embeddings (from :class:`RelativeEmbedding`).
        """
        x = query_input
        if (key_input is not None and key_input is not x) or (value_input is not None and value_input is not x):
            raise ValueError("disentangled attention is self-attention only: pass attn(x) (or attn(x, x, x))")
        if kv_cache is not None:
            raise ValueError("disentangled attention has no generation cache: kv_cache must be None")
        if rel_embeddings is None:
            raise ValueError("disentangled attention needs rel_embeddings (the model builds them once per forward)")
        dc = self.dcfg
        scale = self.cfg.attn_scale
        if split is None:
            q = self.hook_q(self._project(x, self.W_Q, self.b_Q))
            k = self.hook_k(self._project(x, self.W_K, self.b_K))
            v = self.hook_v(self._project(x, self.W_V, self.b_V))
        else:
            # per-head inputs: head h's q/k/v from its own copy of the stream (its slice of W_Q/W_K/W_V);
            # the position terms below then use these per-head q/k, the relative table is unchanged
            q_in, k_in, v_in = split
            q = self.hook_q(self._project_heads(q_in, self.W_Q, self.b_Q))
            k = self.hook_k(self._project_heads(k_in, self.W_K, self.b_K))
            v = self.hook_v(self._project_heads(v_in, self.W_V, self.b_V))
        qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        batch, n_heads, q_len, k_len = qh.shape[0], qh.shape[1], qh.shape[2], kh.shape[2]
        table = rel_embeddings.table.to(x.dtype)

        pos_bias: Tensor | None = None
        if dc.c2p:
            assert self.hook_pos_k is not None and self.hook_c2p_scores is not None
            W, b = (self.W_K, self.b_K) if dc.share_att_key else (self.W_K_pos, self.b_K_pos)
            assert W is not None
            pos_k = self.hook_pos_k(self._project(table, W, b))
            # (batch, head, query, rel) -> pick each pair's distance row
            full = torch.einsum("bhqd,rhd->bhqr", qh, pos_k[0])
            index = rel_embeddings.c2p_index[None, None].expand(batch, n_heads, q_len, k_len)
            c2p = self.hook_c2p_scores(torch.gather(full, -1, index) * scale)
            pos_bias = c2p
        if dc.p2c:
            assert self.hook_pos_q is not None and self.hook_p2c_scores is not None
            W, b = (self.W_Q, self.b_Q) if dc.share_att_key else (self.W_Q_pos, self.b_Q_pos)
            assert W is not None
            pos_q = self.hook_pos_q(self._project(table, W, b))
            full = torch.einsum("bhkd,rhd->bhkr", kh, pos_q[0])
            index = rel_embeddings.p2c_index[None, None].expand(batch, n_heads, k_len, k_len)
            p2c = self.hook_p2c_scores(torch.gather(full, -1, index).transpose(-1, -2) * scale)
            pos_bias = p2c if pos_bias is None else pos_bias + p2c

        bias = pos_bias
        for extra in (additive_mask, position_bias):
            if extra is not None:
                bias = extra if bias is None else bias + extra

        z = self._attend(qh, kh, vh, bias, scale, content_scores_hook=self.hook_c2c_scores)
        return self._output(z)
