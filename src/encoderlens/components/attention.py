"""Multi-head attention with hook points on q, k, v, scores, pattern, z and per-head results.

Weights are stored per head, TransformerLens style: ``W_Q, W_K, W_V: (head_index, d_model, d_head)``,
``W_O: (head_index, d_head, d_model)``, so ``model.W_Q[layer, head]`` is one head's matrix.

When neither ``hook_attn_scores`` nor ``hook_pattern`` is hooked (nor cached), the softmax is done by
``torch.nn.functional.scaled_dot_product_attention`` (the position bias and the masks enter as an
additive mask). Hooks on q/k/v/z/result still fire on that path. Both paths give the same results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn

from encoderlens.components.position import RelativePositionBias
from encoderlens.components.rotary import apply_local_window, apply_rotary
from encoderlens.config import AttentionConfig
from encoderlens.hooks import HookPoint, KeepPropertyErrors


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


def _unpadded_on_host(key_mask: Tensor) -> bool:
    """Whether a host key mask attends everywhere; False for device tensors (reading them would sync)."""
    return key_mask.device.type == "cpu" and bool(key_mask.all())


def build_additive_mask(
    key_mask: Bool[Tensor, "batch key_pos"] | None,
    query_len: int,
    key_len: int,
    causal: bool,
    dtype: torch.dtype,
    device: torch.device,
    past_len: int = 0,
) -> Float[Tensor, "#batch 1 #query_pos key_pos"] | None:
    """Combine a key padding mask (True = attend) and a causal mask into an additive mask (None: no mask needed).

    ``past_len`` is the number of cached positions before the first query (generation): query ``i``
    sits at absolute position ``past_len + i`` and may see keys ``<= past_len + i``.
    """
    allowed: Tensor | None = None
    if key_mask is not None and _unpadded_on_host(key_mask):
        # no padding: no mask, as HF's SDPA path does. An all-zero mask is not free: SDPA reads (and for
        # T5 copies) it in every layer, and on CUDA any mask rules out the flash kernel
        key_mask = None
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


class FlatWeights(NamedTuple):
    """Projection weights in matmul layout: ``y = x @ W + b`` with heads flattened ``(head_index, d_head)``.

    Attributes:
        q: ``(d_model, head_index * d_head)``.
        kv: ``(d_kv, 2 * head_index * d_head)``, keys then values.
        qkv: ``(d_model, 3 * head_index * d_head)`` when ``d_kv == d_model`` (``q`` and ``kv`` are its
            column slices), else None.
        b_q, b_kv, b_qkv, b_k, b_v: The matching biases (None without ``qkv_bias``).
    """

    q: Tensor
    kv: Tensor
    qkv: Tensor | None
    b_q: Tensor | None
    b_kv: Tensor | None
    b_qkv: Tensor | None

    @property
    def b_k(self) -> Tensor | None:
        return None if self.b_kv is None else self.b_kv[: self.b_kv.shape[0] // 2]

    @property
    def b_v(self) -> Tensor | None:
        return None if self.b_kv is None else self.b_kv[self.b_kv.shape[0] // 2 :]

    @staticmethod
    def build(
        W_Q: Tensor, W_K: Tensor, W_V: Tensor, b_Q: Tensor | None, b_K: Tensor | None, b_V: Tensor | None
    ) -> FlatWeights:
        h, _, dh = W_Q.shape
        hd = h * dh

        def flat(W: Tensor) -> Tensor:
            return W.permute(1, 0, 2).reshape(W.shape[1], hd)

        qkv: Tensor | None = None
        if W_Q.shape[1] == W_K.shape[1]:
            qkv = torch.cat([flat(W_Q), flat(W_K), flat(W_V)], dim=1)
            q, kv = qkv[:, :hd], qkv[:, hd:]
        else:
            q, kv = flat(W_Q), torch.cat([flat(W_K), flat(W_V)], dim=1)
        b_qkv = b_q = b_kv = None
        if b_Q is not None and b_K is not None and b_V is not None:
            b_qkv = torch.cat([b_Q.reshape(hd), b_K.reshape(hd), b_V.reshape(hd)])
            b_q, b_kv = b_qkv[:hd], b_qkv[hd:]
        return FlatWeights(q, kv, qkv, b_q, b_kv, b_qkv)


class Attention(KeepPropertyErrors, nn.Module):
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

    def attach_relative_position_bias(self, bias: RelativePositionBias) -> None:
        """Give this attention TransformerLens's T5 view of the stack's relative position table.

        T5 (HF and TransformerLens) stores the table in block 0's self-attention; here the stack owns it
        (``encoder.position_bias``) and computes the bias once per forward. Attaching it (not registering:
        the parameter keeps its one name) makes ``has_relative_attention_bias``, ``rel_pos_bias.weight``
        and :meth:`compute_relative_attention_bias` work on block 0's attention, as in TransformerLens.
        """
        self.__dict__["_rel_bias"] = bias

    @property
    def has_relative_attention_bias(self) -> bool:
        """Whether this attention holds the stack's relative position table (T5 block 0)."""
        return self.__dict__.get("_rel_bias") is not None

    @property
    def rel_pos_bias(self) -> RelativePositionBias:
        """The stack's :class:`RelativePositionBias` (``.weight``: ``(num_buckets, head_index)``)."""
        bias = self.__dict__.get("_rel_bias")
        if bias is None:
            raise AttributeError(
                "this attention has no relative position table: T5 keeps it in block 0's self-attention "
                "(model.encoder[0].attn / model.decoder[0].attn); the bias it computes is shared by every block"
            )
        return bias

    @property
    def relative_attention_num_buckets(self) -> int:
        return self.rel_pos_bias.cfg.num_buckets

    @property
    def relative_attention_max_distance(self) -> int:
        return self.rel_pos_bias.cfg.max_distance

    def compute_relative_attention_bias(
        self, query_length: int, key_length: int, device: str | torch.device | None = None
    ) -> Float[Tensor, "1 head_index query_pos key_pos"]:
        """T5's bucketed relative position bias ``(1, head_index, query_pos, key_pos)`` (TransformerLens's name).

        Decoder stacks use causal buckets, as HF (TransformerLens 3.x uses bidirectional ones in the
        decoder too, which does not match HF's T5).
        """
        out = self.rel_pos_bias(query_length, key_length)
        return out if device is None else out.to(device)

    #: Keep the fused projection weights between forwards when no gradient is needed. Set to False
    #: (class-wide or per instance) to save that copy's memory at some speed.
    cache_fused_weights: bool = True

    def flat_weights(self) -> FlatWeights:
        """The projection weights laid out for one matmul each (see :class:`FlatWeights`).

        Why cached: the per-head layout ``(head_index, d_model, d_head)`` must be permuted and copied
        for a single matmul, which costs a few percent of a forward. The copy is kept while the
        parameters are unchanged: the key holds each parameter's identity, storage address and
        version counter, so ``param.copy_(...)``, ``param[...] = ...`` (under ``torch.no_grad()``),
        ``load_state_dict`` and ``model.to(...)`` all invalidate it. Writes through ``param.data``
        bypass PyTorch's version counter: call :meth:`clear_weight_cache` after those. When a
        gradient may flow to the weights the layout is rebuilt on each call (differentiably), never cached.
        Under ``torch.inference_mode()`` the cached copy is built as a normal tensor, so a later forward
        with autograd (gradients w.r.t. activations of a frozen model) can use it.
        """
        params = (self.W_Q, self.W_K, self.W_V, self.b_Q, self.b_K, self.b_V)
        grad = torch.is_grad_enabled() and any(p is not None and p.requires_grad for p in params)
        use_cache = self.cache_fused_weights and not grad and not _is_compiling()
        key: tuple | None = None
        if use_cache:
            key = tuple((id(p), p.data_ptr(), p._version) if p is not None else None for p in params)
            cached = self.__dict__.get("_flat_cache")
            if cached is not None and cached[0] == key:
                return cached[1]
        if use_cache and torch.is_inference_mode_enabled():
            # built outside inference mode: a cached inference tensor would break later autograd
            # ("Inference tensors cannot be saved for backward"); a normal tensor serves both modes
            with torch.inference_mode(False), torch.no_grad():
                flat = FlatWeights.build(self.W_Q, self.W_K, self.W_V, self.b_Q, self.b_K, self.b_V)
        else:
            flat = FlatWeights.build(self.W_Q, self.W_K, self.W_V, self.b_Q, self.b_K, self.b_V)
        if use_cache:
            self.__dict__["_flat_cache"] = (key, flat)
        return flat

    def __getstate__(self) -> dict:
        # copies and pickles rebuild the fused weights from their own parameters
        state = self.__dict__.copy()
        state.pop("_flat_cache", None)
        return state

    def clear_weight_cache(self) -> None:
        """Drop the cached fused projection weights (needed only after writes through ``param.data``)."""
        self.__dict__.pop("_flat_cache", None)

    @staticmethod
    def _project(x: Tensor, W: Tensor, b: Tensor | None) -> Tensor:
        """``x @ W`` per head (``W: (head_index, d_in, d_head)``), for subclasses and odd inputs."""
        h, d_in, dh = W.shape
        out = x @ W.permute(1, 0, 2).reshape(d_in, h * dh)
        out = out.view(*x.shape[:-1], h, dh)
        return out + b if b is not None else out

    @staticmethod
    def _project_heads(x: Tensor, W: Tensor, b: Tensor | None) -> Tensor:
        """Per-head inputs ``(batch, pos, head_index, d_in)`` through each head's ``W: (head_index, d_in, d_head)``."""
        out = torch.einsum("bphd,hde->bphe", x, W)
        return out + b if b is not None else out

    def needs_explicit_qkv(self) -> bool:
        """Whether q, k, v must be separate tensors; else one fused matmul and q, k, v are views of its output.

        Separate only when some but not all of them are hooked: a cached q that is a view would keep
        the whole q|k|v buffer alive (three times its size). With all three hooked (a full cache) the
        views together are exactly the buffer, stored once.
        """
        hooked = (self.hook_q.has_hooks(), self.hook_k.has_hooks(), self.hook_v.has_hooks())
        return any(hooked) and not all(hooked)

    def needs_explicit_pattern(self) -> bool:
        """Whether scores/pattern must be materialised (they are hooked or cached)."""
        return self.hook_attn_scores.has_hooks() or self.hook_pattern.has_hooks()

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
    ) -> Float[Tensor, "batch query_pos d_model"]:
        """Attend from ``query_input`` to ``key_input`` / ``value_input`` (``query_input`` itself by default).

        The positional order is TransformerLens's ``attn(query_input, key_input, value_input)``:
        ``attn(x)`` and ``attn(x, x, x)`` are self-attention, ``cross_attn(x, enc, enc)`` cross-attention.

        Args:
            query_input: Query-side input.
            key_input: Key-side input (cross-attention); None or ``query_input`` itself: self-attention.
            value_input: Value-side input; None: the key input.
            additive_mask: Added to the scores (0 = attend, very negative = blocked). When None and the
                attention is causal (a decoder's self-attention), the causal mask is built here, so a
                decoder's attention called on its own never looks ahead (as HF's).
            position_bias: Added to the scores (T5 relative bias).
            kv_cache: Generation cache; updated in place.
            split: Separate inputs per head for q, k and v, each ``(batch, pos, head_index, d_in)`` (the
                block's opt-in ``hook_q_input`` / ``hook_k_input`` / ``hook_v_input``); then ``x`` and
                ``kv_input`` are not projected.
        """
        x = query_input
        if key_input is x:
            key_input = None
        if value_input is not None and value_input is not (x if key_input is None else key_input):
            return self._separate_value_forward(x, key_input, value_input, additive_mask, position_bias, kv_cache)
        kv_input = key_input
        if additive_mask is None and self.cfg.causal and kv_input is None:
            past = kv_cache.length if kv_cache is not None and not kv_cache.static else 0
            additive_mask = build_additive_mask(None, x.shape[1], past + x.shape[1], True, x.dtype, x.device, past)
        w = self.flat_weights()
        h, dh = self.cfg.n_heads, self.cfg.d_head
        hd = h * dh
        static_hit = kv_cache is not None and kv_cache.static and kv_cache.k is not None
        kv_new: tuple[Tensor, Tensor] | None = None
        if split is not None:
            q_in, k_in, v_in = split
            q = self.hook_q(self._project_heads(q_in, self.W_Q, self.b_Q))
            kv_new = (
                self.hook_k(self._project_heads(k_in, self.W_K, self.b_K)),
                self.hook_v(self._project_heads(v_in, self.W_V, self.b_V)),
            )
        elif kv_input is None and w.qkv is not None and not static_hit and not self.needs_explicit_qkv():
            # self-attention and nothing reads q/k/v: one matmul; q, k, v are views of its output
            qkv = F.linear(x, w.qkv.t(), w.b_qkv).unflatten(-1, (3, h, dh))
            q = self.hook_q(qkv[..., 0, :, :])
            kv_new = (self.hook_k(qkv[..., 1, :, :]), self.hook_v(qkv[..., 2, :, :]))
        else:
            q = self.hook_q(F.linear(x, w.q.t(), w.b_q).unflatten(-1, (h, dh)))
        src = x if kv_input is None else kv_input
        # generation: new queries and keys sit after the cached positions
        past_len = kv_cache.length if kv_cache is not None and not kv_cache.static else 0
        rotary = self.cfg.rotary
        if rotary is not None:
            assert self.hook_rot_q is not None
            q_pos = torch.arange(past_len, past_len + q.shape[1], device=q.device)
            q = self.hook_rot_q(apply_rotary(q, q_pos, rotary))
        if static_hit:
            assert kv_cache is not None and kv_cache.k is not None and kv_cache.v is not None
            k, v = kv_cache.k, kv_cache.v
        else:
            if kv_new is not None:
                k, v = kv_new
            elif self.hook_k.has_hooks() != self.hook_v.has_hooks():
                # only one of k, v hooked: separate tensors, so a cached k does not keep v's memory alive
                k = self.hook_k(F.linear(src, w.kv[:, :hd].t(), w.b_k).unflatten(-1, (h, dh)))
                v = self.hook_v(F.linear(src, w.kv[:, hd:].t(), w.b_v).unflatten(-1, (h, dh)))
            else:
                kv = F.linear(src, w.kv.t(), w.b_kv).unflatten(-1, (2, h, dh))
                k, v = self.hook_k(kv[..., 0, :, :]), self.hook_v(kv[..., 1, :, :])
            if rotary is not None:
                assert self.hook_rot_k is not None
                k_pos = torch.arange(past_len, past_len + k.shape[1], device=k.device)
                k = self.hook_rot_k(apply_rotary(k, k_pos, rotary))
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
        z = self._attend(qh, kh, vh, bias, self.cfg.attn_scale)
        return self._output(z)

    def _separate_value_forward(
        self,
        x: Tensor,
        key_input: Tensor | None,
        value_input: Tensor,
        additive_mask: Tensor | None,
        position_bias: Tensor | None,
        kv_cache: KVCache | None,
    ) -> Tensor:
        """Keys and values from different tensors (TransformerLens's split inputs); no generation cache."""
        if kv_cache is not None:
            raise ValueError("a kv_cache needs keys and values from the same input; pass value_input=None")
        if self.cfg.rotary is not None or self.cfg.local_window is not None:
            raise ValueError("separate key and value inputs are not supported with rotary or windowed attention")
        keys = x if key_input is None else key_input
        if keys.shape[:-1] != value_input.shape[:-1]:
            raise ValueError(
                f"key_input {tuple(keys.shape)} and value_input {tuple(value_input.shape)} must have the same "
                "batch and position sizes"
            )
        if additive_mask is None and self.cfg.causal and key_input is None:
            additive_mask = build_additive_mask(None, x.shape[1], x.shape[1], True, x.dtype, x.device)
        q = self.hook_q(self._project(x, self.W_Q, self.b_Q))
        k = self.hook_k(self._project(keys, self.W_K, self.b_K))
        v = self.hook_v(self._project(value_input, self.W_V, self.b_V))
        bias = additive_mask
        if position_bias is not None:
            bias = position_bias if bias is None else bias + position_bias
        z = self._attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), bias, self.cfg.attn_scale)
        return self._output(z)

    def _attend(
        self,
        qh: Float[Tensor, "batch head_index query_pos d_head"],
        kh: Float[Tensor, "batch head_index key_pos d_head"],
        vh: Float[Tensor, "batch head_index key_pos d_head"],
        bias: Float[Tensor, "#batch #head_index #query_pos key_pos"] | None,
        scale: float,
        content_scores_hook: HookPoint | None = None,
    ) -> Float[Tensor, "batch query_pos head_index d_head"]:
        """Softmax attention (explicit when scores/pattern are needed, SDPA otherwise), through ``hook_z``.

        ``content_scores_hook`` sees the scaled ``q . k`` scores before ``bias`` is added (DeBERTa's c2c term).
        """
        if self.needs_explicit_pattern():
            # scale and bias applied in place to the fresh product (no extra score-sized buffers; T5's scale is 1).
            # k is made contiguous before the transpose: matmul would otherwise copy k^T element by element
            # (a transposing copy: 6-17% of this product measured); a row copy plus a transposed bmm is cheaper
            scores = qh @ kh.contiguous().transpose(-1, -2)
            if scale != 1.0:
                scores.mul_(scale)
            if content_scores_hook is not None:
                scores = content_scores_hook(scores)
            if bias is not None:
                in_place = content_scores_hook is None and bias.dtype == scores.dtype  # the c2c hook keeps its tensor
                scores = scores.add_(bias) if in_place else scores + bias
            scores = self.hook_attn_scores(scores)
            pattern = self.hook_pattern(torch.softmax(scores.float(), dim=-1).to(scores.dtype))
            z = pattern @ vh
        else:
            if bias is not None and bias.dtype != qh.dtype:
                bias = bias.to(qh.dtype)
            z = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=bias, scale=scale)
        return self.hook_z(z.transpose(1, 2))

    def _output(
        self, z: Float[Tensor, "batch query_pos head_index d_head"]
    ) -> Float[Tensor, "batch query_pos d_model"]:
        """Output projection: per-head results through ``hook_result`` when hooked, else one fused matmul."""
        if self.hook_result.has_hooks():
            result = self.hook_result(torch.einsum("bqhd,hdm->bqhm", z, self.W_O))
            out = result.sum(dim=2)
            return out + self.b_O if self.b_O is not None else out
        # heads flattened: one matmul, the bias fused in (W_O (h, d_head, d_model) -> (h*d_head, d_model) is a view)
        hd = self.W_O.shape[0] * self.W_O.shape[1]
        return F.linear(z.reshape(*z.shape[:2], hd), self.W_O.reshape(hd, -1).t(), self.b_O)


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())
