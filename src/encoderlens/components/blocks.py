"""Transformer blocks in post-LN and pre-LN order, with optional cross-attention."""

from __future__ import annotations

import dataclasses

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

    Pre-LN (T5, wav2vec2-large)::

        resid_mid  = resid_pre + attn(ln1(resid_pre))
        resid_mid_cross = resid_mid + cross_attn(ln_cross(resid_mid))      # decoders
        resid_post = resid_mid(_cross) + mlp(ln2(resid_mid(_cross)))

    Post-LN (BERT, BART, wav2vec2-base)::

        resid_mid  = ln1(resid_pre + attn(resid_pre))
        resid_mid_cross = ln_cross(resid_mid + cross_attn(resid_mid))     # decoders
        resid_post = ln2(resid_mid(_cross) + mlp(resid_mid(_cross)))

    In both orders ``hook_resid_post`` is exactly what the next block receives (HF's hidden state
    after this layer). In post-LN blocks the residual stream is renormalised twice per block, so
    ``resid_post != resid_pre + attn_out + mlp_out``; see :class:`~encoderlens.cache.ActivationCache`.

    Hooks: ``hook_resid_pre``, ``hook_attn_out``, ``hook_resid_mid``, ``hook_cross_attn_out``,
    ``hook_resid_mid_cross`` (decoders), ``hook_mlp_out``, ``hook_resid_post``.

    ``layer`` selects the block's attention settings (``cfg.attn_for(layer)``) and, with
    ``cfg.first_block_attn_norm=False``, drops ``ln1`` in block 0 (``ln1`` is then None).
    The attention module follows ``kind``: :class:`Attention`, :class:`DisentangledAttention` or
    :class:`GatedRelativeAttention`.
    """

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
            self.ln_cross = make_norm(d, cfg.norm)
            self.cross_attn = Attention(d, cross_cfg, kv_d_model=kv_d_model)
            self.hook_cross_attn_out = HookPoint()
            self.hook_resid_mid_cross = HookPoint()
        self.ln2 = make_norm(d, cfg.norm)
        self.mlp = MLP(d, cfg.mlp)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(
        self,
        resid_pre: Float[Tensor, "batch pos d_model"],
        additive_mask: Tensor | None = None,
        position_bias: Tensor | None = None,
        encoder_out: Float[Tensor, "batch enc_pos d_model"] | None = None,
        cross_mask: Tensor | None = None,
        cross_position_bias: Tensor | None = None,
        kv_cache: tuple[KVCache, KVCache] | None = None,
        rel_embeddings: RelativeEmbeddings | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """Run the block; ``rel_embeddings`` feeds disentangled attention (computed once by the model)."""
        x = self.hook_resid_pre(resid_pre)
        self_cache = kv_cache[0] if kv_cache is not None else None

        attn_in = self.ln1(x) if self.pre_ln and self.ln1 is not None else x
        extra = {"rel_embeddings": rel_embeddings} if isinstance(self.attn, DisentangledAttention) else {}
        attn_out = self.hook_attn_out(self.attn(attn_in, None, additive_mask, position_bias, self_cache, **extra))
        if self.pre_ln:
            x = x + attn_out
        else:
            assert self.ln1 is not None
            x = self.ln1(x + attn_out)
        x = self.hook_resid_mid(x)

        if self.cfg.cross_attention:
            if encoder_out is None:
                raise ValueError("this block has cross-attention: pass encoder_out (the encoder's final output)")
            cross_cache = kv_cache[1] if kv_cache is not None else None
            c_in = self.ln_cross(x) if self.pre_ln else x
            c_out = self.hook_cross_attn_out(
                self.cross_attn(c_in, encoder_out, cross_mask, cross_position_bias, cross_cache)
            )
            x = x + c_out if self.pre_ln else self.ln_cross(x + c_out)
            x = self.hook_resid_mid_cross(x)

        mlp_in = self.ln2(x) if self.pre_ln else x
        mlp_out = self.hook_mlp_out(self.mlp(mlp_in))
        x = x + mlp_out if self.pre_ln else self.ln2(x + mlp_out)
        return self.hook_resid_post(x)
