"""Transformer blocks in post-LN and pre-LN order, with optional cross-attention."""

from __future__ import annotations

import dataclasses

import torch
from jaxtyping import Float
from torch import Tensor, nn

from encoderlens.components.attention import Attention, KVCache
from encoderlens.components.attention_deberta import DisentangledAttention, RelativeEmbeddings
from encoderlens.components.attention_gated import GatedRelativeAttention
from encoderlens.components.mlp import MLP
from encoderlens.components.norm import make_norm
from encoderlens.config import StackConfig
from encoderlens.hooks import HookPoint

#: The self-attention module of each ``AttentionConfig.kind``.
_ATTENTION: dict[str, type[Attention]] = {
    "standard": Attention,
    "disentangled": DisentangledAttention,
    "gated_relative": GatedRelativeAttention,
}


class TransformerBlock(nn.Module):
    """One block. The order comes from ``cfg.norm_position``.

    Pre-LN (T5, wav2vec2-large); without cross-attention the MLP norm is ``ln2``::

        resid_mid  = resid_pre + attn(ln1(resid_pre))
        resid_mid_cross = resid_mid + cross_attn(ln2(resid_mid))           # decoders
        resid_post = resid_mid_cross + mlp(ln3(resid_mid_cross))           # decoders (ln2 elsewhere)

    Post-LN (BERT, BART, wav2vec2-base), with TransformerLens's ``BertBlock`` names::

        resid_mid             = resid_pre + attn(resid_pre)                       # the sum entering ln1
        normalized_resid_mid  = ln1(resid_mid)
        resid_mid_cross       = normalized_resid_mid + cross_attn(...)            # decoders
        normalized_resid_mid_cross = ln2(resid_mid_cross)                        # decoders
        resid_post            = normalized_resid_mid(_cross) + mlp(...)           # the sum entering the MLP norm
        normalized_resid_post = ln3(resid_post)  (ln2 without cross-attention)    # the block's output

    Norm names follow TransformerLens: ``ln1`` before self-attention, ``ln2`` before cross-attention and
    ``ln3`` before the MLP in blocks with cross-attention (``T5Block``), ``ln1`` / ``ln2`` (attention /
    MLP) in the others. :attr:`mlp_norm_name` and :attr:`mlp_norm` give the MLP's norm in both.

    The block's output (what the next block receives, HF's hidden state after this layer) is
    ``hook_resid_post`` in pre-LN blocks and ``hook_normalized_resid_post`` in post-LN blocks
    (:meth:`~encoderlens.cache.StreamSpec.resid_hook` names it). In post-LN blocks the residual stream
    is renormalised twice per block; see :class:`~encoderlens.cache.ActivationCache`.

    Hooks: ``hook_resid_pre``, ``hook_attn_out``, ``hook_resid_mid``, ``hook_cross_attn_out``,
    ``hook_resid_mid_cross`` (decoders), ``hook_mlp_out``, ``hook_resid_post``; post-LN blocks add
    ``hook_normalized_resid_mid``, ``hook_normalized_resid_mid_cross`` (decoders) and
    ``hook_normalized_resid_post``.

    Opt-in hooks (computed only while hooked; :data:`~encoderlens.hooks.OPT_IN_HOOKS`):
    ``hook_q_input`` / ``hook_k_input`` / ``hook_v_input`` ``(batch, pos, head, d_model)``: a copy of the
    attention input per head, *before* ``ln1`` in pre-LN blocks (the norm is applied per copy), as
    TransformerLens's ``use_split_qkv_input``; ``hook_cross_q_input`` (before ``ln2``, the cross-attention norm) and
    ``hook_cross_k_input`` / ``hook_cross_v_input`` (the encoder output) for cross-attention;
    ``hook_mlp_in``: the MLP's input before its norm (``ln2``, ``ln3`` in decoder blocks; a separate branch
    from the residual).

    ``layer`` selects the block's attention settings (``cfg.attn_for(layer)``) and, with
    ``cfg.first_block_attn_norm=False``, drops ``ln1`` in block 0 (``ln1`` is then None).
    The attention module follows ``kind``: :class:`Attention`, :class:`DisentangledAttention` or
    :class:`GatedRelativeAttention`.

    ``entry_device`` (None unless the model is placed over several devices with a ``device_map``) is
    where :func:`~encoderlens.components.stack.run_blocks` moves the block's inputs before running it.
    """

    entry_device: torch.device | None = None

    def __init__(self, cfg: StackConfig, kv_d_model: int | None = None, layer: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.pre_ln = cfg.norm_position == "pre"
        d = cfg.d_model
        attn_cfg = cfg.attn_for(layer)
        self.ln1 = None if layer == 0 and not cfg.first_block_attn_norm else make_norm(d, cfg.norm)
        self.attn = _ATTENTION[attn_cfg.kind](d, attn_cfg)
        if cfg.cross_attention:
            cross_cfg = dataclasses.replace(cfg.attn, causal=False)
            self.ln2 = make_norm(d, cfg.norm)
            self.cross_attn = Attention(d, cross_cfg, kv_d_model=kv_d_model)
            self.hook_cross_attn_out = HookPoint()
            self.hook_resid_mid_cross = HookPoint()
            self.ln3 = make_norm(d, cfg.norm)
            if not self.pre_ln:
                self.hook_normalized_resid_mid_cross = HookPoint()
        else:
            self.ln2 = make_norm(d, cfg.norm)
        #: Name of the norm before the MLP: ``"ln3"`` in blocks with cross-attention, else ``"ln2"``.
        self.mlp_norm_name = "ln3" if cfg.cross_attention else "ln2"
        self.mlp = MLP(d, cfg.mlp)
        # opt-in (hooks.OPT_IN_HOOKS): per-head copies of the attention inputs and the MLP input, as
        # TransformerLens's use_split_qkv_input / use_hook_mlp_in; computed only while hooked
        self.hook_q_input = HookPoint()
        self.hook_k_input = HookPoint()
        self.hook_v_input = HookPoint()
        self.hook_mlp_in = HookPoint()
        if cfg.cross_attention:
            self.hook_cross_q_input = HookPoint()
            self.hook_cross_k_input = HookPoint()
            self.hook_cross_v_input = HookPoint()
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()
        if not self.pre_ln:
            self.hook_normalized_resid_mid = HookPoint()
            self.hook_normalized_resid_post = HookPoint()

    def _split(
        self, x: Tensor, kv: Tensor, n_heads: int, q_norm: nn.Module | None, kv_norm: nn.Module | None, kind: str
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per-head copies of the q and k/v inputs through ``hook_{kind}q_input`` etc., then the norms."""

        def one(src: Tensor, leaf: str, norm: nn.Module | None) -> Tensor:
            t = getattr(self, f"hook_{kind}{leaf}_input")(src.unsqueeze(2).expand(-1, -1, n_heads, -1).clone())
            return norm(t) if norm is not None else t

        return one(x, "q", q_norm), one(kv, "k", kv_norm), one(kv, "v", kv_norm)

    def forward(
        self,
        resid_pre: Float[Tensor, "batch pos d_model"],
        additive_mask: Tensor | None = None,
        position_bias: Tensor | None = None,
        encoder_hidden_states: Float[Tensor, "batch enc_pos d_model"] | None = None,
        cross_mask: Tensor | None = None,
        cross_position_bias: Tensor | None = None,
        kv_cache: tuple[KVCache, KVCache] | None = None,
        rel_embeddings: RelativeEmbeddings | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """Run the block.

        Args:
            resid_pre: The residual stream entering the block.
            additive_mask: Self-attention mask added to the scores; None: no padding (a decoder's
                self-attention is still causal).
            position_bias: Relative position bias added to the self-attention scores (T5; the stack
                computes it once, see ``Stack.position_bias`` / ``blocks[0].attn.compute_relative_attention_bias``).
            encoder_hidden_states: The encoder's final output, for blocks with cross-attention
                (TransformerLens's and HF's keyword).
            cross_mask: Additive cross-attention mask over encoder positions.
            cross_position_bias: Extra bias on the cross-attention scores.
            kv_cache: ``(self, cross)`` generation caches, updated in place.
            rel_embeddings: Disentangled-attention relative embeddings (DeBERTa), computed once by the model.
        """
        x = self.hook_resid_pre(resid_pre)
        self_cache = kv_cache[0] if kv_cache is not None else None

        attn_in = self.ln1(x) if self.pre_ln and self.ln1 is not None else x
        extra: dict = {"rel_embeddings": rel_embeddings} if isinstance(self.attn, DisentangledAttention) else {}
        if self.hook_q_input.has_hooks() or self.hook_k_input.has_hooks() or self.hook_v_input.has_hooks():
            ln = self.ln1 if self.pre_ln else None
            extra["split"] = self._split(x, x, self.attn.cfg.n_heads, ln, ln, "")
        attn_out = self.hook_attn_out(
            self.attn(attn_in, additive_mask=additive_mask, position_bias=position_bias, kv_cache=self_cache, **extra)
        )
        if self.pre_ln:
            x = self.hook_resid_mid(x + attn_out)
        else:
            assert self.ln1 is not None
            x = self.hook_normalized_resid_mid(self.ln1(self.hook_resid_mid(x + attn_out)))

        if self.cfg.cross_attention:
            if encoder_hidden_states is None:
                raise ValueError(
                    "this block has cross-attention: pass encoder_hidden_states= (the encoder's final output)"
                )
            cross_cache = kv_cache[1] if kv_cache is not None else None
            c_in = self.ln2(x) if self.pre_ln else x
            split = None
            if any(getattr(self, f"hook_cross_{a}_input").has_hooks() for a in "qkv"):
                split = self._split(
                    x,
                    encoder_hidden_states,
                    self.cross_attn.cfg.n_heads,
                    self.ln2 if self.pre_ln else None,
                    None,
                    "cross_",
                )
            c_out = self.hook_cross_attn_out(
                self.cross_attn(
                    c_in,
                    encoder_hidden_states,
                    additive_mask=cross_mask,
                    position_bias=cross_position_bias,
                    kv_cache=cross_cache,
                    split=split,
                )
            )
            if self.pre_ln:
                x = self.hook_resid_mid_cross(x + c_out)
            else:
                x = self.hook_normalized_resid_mid_cross(self.ln2(self.hook_resid_mid_cross(x + c_out)))

        mlp_norm = self.mlp_norm
        # a copy while hooked, so the hook sees (and may change) the MLP branch only
        mlp_in = self.hook_mlp_in(x.clone()) if self.hook_mlp_in.has_hooks() else x
        mlp_in = mlp_norm(mlp_in) if self.pre_ln else mlp_in
        mlp_out = self.hook_mlp_out(self.mlp(mlp_in))
        if self.pre_ln:
            return self.hook_resid_post(x + mlp_out)
        return self.hook_normalized_resid_post(mlp_norm(self.hook_resid_post(x + mlp_out)))

    @property
    def mlp_norm(self) -> nn.Module:
        """The norm before the MLP (pre-LN) or after its residual sum (post-LN): ``ln3`` or ``ln2``."""
        norm: nn.Module = getattr(self, self.mlp_norm_name)
        return norm
