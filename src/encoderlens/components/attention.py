"""Multi-head attention with hook points on q, k, v, scores, pattern, z and per-head results.

Weights are stored per head, TransformerLens style: ``W_Q, W_K, W_V: (head_index, d_model, d_head)``,
``W_O: (head_index, d_head, d_model)``, so ``model.W_Q[layer, head]`` is one head's matrix.

When neither ``hook_attn_scores`` nor ``hook_pattern`` is hooked (nor cached), the softmax is done by
``torch.nn.functional.scaled_dot_product_attention`` (the position bias and the masks enter as an
additive mask). Hooks on q/k/v/z/result still fire on that path. Both paths give the same results.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn

from encoderlens.components.rotary import apply_local_window, apply_rotary
from encoderlens.config import AttentionConfig
from encoderlens.hooks import HookPoint


@dataclass
class KVCache:
    """Keys and values of one attention layer kept between generation steps.

    For self-attention ``k``/``v`` grow by the new positions each step; for cross-attention they are
    computed from the encoder output on the first step and reused (``static=True``).
    """

    k: Float[Tensor, "batch key_pos head_index d_head"] | None = None
    v: Float[Tensor, "batch key_pos head_index d_head"] | None = None
    static: bool = False

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[1]


def mask_value(dtype: torch.dtype) -> float:
    """Large negative number used for masked scores (finite, so a fully masked row gives no NaN)."""
    return torch.finfo(dtype).min


def build_additive_mask(
    key_mask: Bool[Tensor, "batch key_pos"] | None,
    query_len: int,
    key_len: int,
    causal: bool,
    dtype: torch.dtype,
    device: torch.device,
    past_len: int = 0,
) -> Float[Tensor, "batch 1 query_pos key_pos"] | None:
    """Combine a key padding mask (True = attend) and a causal mask into an additive mask.

    ``past_len`` is the number of cached positions before the first query (generation): query ``i``
    sits at absolute position ``past_len + i`` and may see keys ``<= past_len + i``.
    """
    allowed: Tensor | None = None
    if key_mask is not None:
        allowed = key_mask[:, None, None, :].to(torch.bool)
    if causal:
        q_idx = torch.arange(query_len, device=device)[:, None] + past_len
        k_idx = torch.arange(key_len, device=device)[None, :]
        causal_ok = (k_idx <= q_idx)[None, None]
        allowed = causal_ok if allowed is None else allowed & causal_ok
    if allowed is None:
        return None
    zero = torch.zeros((), dtype=dtype, device=device)
    neg = torch.full((), mask_value(dtype), dtype=dtype, device=device)
    return torch.where(allowed, zero, neg)


class Attention(nn.Module):
    """Multi-head (self or cross) attention.

    Hooks (shapes):
        hook_q: ``(batch, query_pos, head_index, d_head)``
        hook_k, hook_v: ``(batch, key_pos, head_index, d_head)``
        hook_attn_scores: ``(batch, head_index, query_pos, key_pos)``, scaled, with position bias,
            masked entries at the dtype's minimum
        hook_pattern: ``(batch, head_index, query_pos, key_pos)``, softmax probabilities
        hook_z: ``(batch, query_pos, head_index, d_head)``
        hook_result: ``(batch, query_pos, head_index, d_model)`` each head's output (only computed when hooked)
        hook_rot_q, hook_rot_k: q and k after the rotary embedding (only when ``cfg.rotary`` is set;
            ``hook_q``/``hook_k`` then hold them before rotation)

    With ``cfg.local_window`` a query only sees keys within that distance (sliding-window attention).
    """

    def __init__(self, d_model: int, cfg: AttentionConfig, kv_d_model: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        h, dh = cfg.n_heads, cfg.d_head
        kv_d = d_model if kv_d_model is None else kv_d_model
        self.W_Q = nn.Parameter(torch.empty(h, d_model, dh))
        self.W_K = nn.Parameter(torch.empty(h, kv_d, dh))
        self.W_V = nn.Parameter(torch.empty(h, kv_d, dh))
        self.W_O = nn.Parameter(torch.empty(h, dh, d_model))
        self.b_Q = nn.Parameter(torch.zeros(h, dh)) if cfg.qkv_bias else None
        self.b_K = nn.Parameter(torch.zeros(h, dh)) if cfg.qkv_bias else None
        self.b_V = nn.Parameter(torch.zeros(h, dh)) if cfg.qkv_bias else None
        self.b_O = nn.Parameter(torch.zeros(d_model)) if cfg.out_bias else None
        self.hook_q = HookPoint()
        self.hook_k = HookPoint()
        self.hook_v = HookPoint()
        self.hook_attn_scores = HookPoint()
        self.hook_pattern = HookPoint()
        self.hook_z = HookPoint()
        self.hook_result = HookPoint()
        # only rotary models get these; no dead hook points elsewhere
        self.hook_rot_q = HookPoint() if cfg.rotary is not None else None
        self.hook_rot_k = HookPoint() if cfg.rotary is not None else None

    @staticmethod
    def _project(x: Tensor, W: Tensor, b: Tensor | None) -> Tensor:
        h, d_in, dh = W.shape
        out = x @ W.permute(1, 0, 2).reshape(d_in, h * dh)
        out = out.view(*x.shape[:-1], h, dh)
        return out + b if b is not None else out

    def needs_explicit_pattern(self) -> bool:
        """Whether scores/pattern must be materialised (they are hooked or cached)."""
        return self.hook_attn_scores.has_hooks() or self.hook_pattern.has_hooks()

    def forward(
        self,
        x: Float[Tensor, "batch query_pos d_model"],
        kv_input: Float[Tensor, "batch key_pos d_kv"] | None = None,
        additive_mask: Float[Tensor, "batch 1 query_pos key_pos"] | None = None,
        position_bias: Float[Tensor, "batch_or_1 head_index query_pos key_pos"] | None = None,
        kv_cache: KVCache | None = None,
    ) -> Float[Tensor, "batch query_pos d_model"]:
        """Attend from ``x`` to ``kv_input`` (``x`` itself for self-attention).

        Args:
            x: Query-side input.
            kv_input: Key/value-side input for cross-attention.
            additive_mask: Added to the scores (0 = attend, very negative = blocked).
            position_bias: Added to the scores (T5 relative bias).
            kv_cache: Generation cache; updated in place.
        """
        q = self.hook_q(self._project(x, self.W_Q, self.b_Q))
        src = x if kv_input is None else kv_input
        # generation: new queries and keys sit after the cached positions
        past_len = kv_cache.length if kv_cache is not None and not kv_cache.static else 0
        rotary = self.cfg.rotary
        if rotary is not None:
            assert self.hook_rot_q is not None
            q_pos = torch.arange(past_len, past_len + q.shape[1], device=q.device)
            q = self.hook_rot_q(apply_rotary(q, q_pos, rotary))
        if kv_cache is not None and kv_cache.static and kv_cache.k is not None:
            k, v = kv_cache.k, kv_cache.v
            assert v is not None
        else:
            k = self.hook_k(self._project(src, self.W_K, self.b_K))
            if rotary is not None:
                assert self.hook_rot_k is not None
                k_pos = torch.arange(past_len, past_len + k.shape[1], device=k.device)
                k = self.hook_rot_k(apply_rotary(k, k_pos, rotary))
            v = self.hook_v(self._project(src, self.W_V, self.b_V))
            if kv_cache is not None:
                if not kv_cache.static and kv_cache.k is not None:
                    assert kv_cache.v is not None
                    k = torch.cat([kv_cache.k, k], dim=1)
                    v = torch.cat([kv_cache.v, v], dim=1)
                kv_cache.k, kv_cache.v = k, v

        bias = additive_mask
        if self.cfg.local_window is not None:
            bias = apply_local_window(bias, self.cfg.local_window, q.shape[1], k.shape[1], past_len, q.dtype, q.device)
        if position_bias is not None:
            bias = position_bias if bias is None else bias + position_bias

        qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.needs_explicit_pattern():
            scores = (qh @ kh.transpose(-1, -2)) * self.cfg.attn_scale
            if bias is not None:
                scores = scores + bias
            scores = self.hook_attn_scores(scores)
            pattern = self.hook_pattern(torch.softmax(scores.float(), dim=-1).to(scores.dtype))
            z = pattern @ vh
        else:
            if bias is not None and bias.dtype != qh.dtype:
                bias = bias.to(qh.dtype)
            z = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=bias, scale=self.cfg.attn_scale)
        z = self.hook_z(z.transpose(1, 2))

        if self.hook_result.has_hooks():
            result = self.hook_result(torch.einsum("bqhd,hdm->bqhm", z, self.W_O))
            out = result.sum(dim=2)
        else:
            h, dh, dm = self.W_O.shape
            out = z.reshape(*z.shape[:2], h * dh) @ self.W_O.reshape(h * dh, dm)
        return out + self.b_O if self.b_O is not None else out
