"""DeBERTa-v2 / v3 (``DebertaV2Model``, ``DebertaV2ForMaskedLM``) -> :class:`HookedEncoder`.

DeBERTa is a post-LN encoder like BERT whose attention adds relative-position terms
(:class:`~encoderlens.components.attention_deberta.DisentangledAttention`): content-to-position and
position-to-content scores from one table of relative embeddings (``encoder.rel_embeddings``,
optionally layer-normed), shared by every block and built once per forward by the model
(``rel_embed``). The embedding output is multiplied by the attention mask (padded positions enter
block 0 as zeros); absolute positions are added only when ``position_biased_input`` (False in v3).

MLM heads: the legacy layout ``cls.predictions.*`` and the newer ``lm_predictions.lm_head.*`` compute the
same ``dense -> act -> LayerNorm -> W_E^T + bias`` and both map to :class:`MLMHead`. The head is taken
from the weights present. ``mask_predictions.*`` (the replaced-token-detection head some v3 checkpoints
carry, which HF ignores on load) is dropped, as HF does.

Not supported (the converter raises): ``conv_kernel_size > 0`` (the ConvLayer of deberta-v2-xlarge /
xxlarge), ``embedding_size != hidden_size``, ``pos_att_type`` entries other than ``c2p``/``p2c``,
``norm_rel_ebd`` other than ``none``/``layer_norm``.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from encoderlens.config import (
    ACTIVATIONS,
    AttentionConfig,
    DisentangledConfig,
    EmbeddingConfig,
    EncoderConfig,
    MLMHeadConfig,
    MLPConfig,
    NormConfig,
    StackConfig,
)
from encoderlens.convert.common import head_bias, head_in_weight, head_out_weight, linear_weight
from encoderlens.convert.registry import WeightReader, register, require

ARCH = "deberta-v2"
_POS_TERMS = ("c2p", "p2c")


def _pos_att_type(hf: Any) -> list[str]:
    types = getattr(hf, "pos_att_type", None) or []
    if isinstance(types, str):
        types = [t.strip() for t in types.lower().split("|")]
    types = [t for t in types if t]
    for t in types:
        require(t in _POS_TERMS, ARCH, "pos_att_type entry", t, "'c2p', 'p2c'")
    return types


def deberta_v2_config(hf: Any, architecture: str, mlm: bool) -> EncoderConfig:
    """Map and check an HF ``DebertaV2Config``."""
    require(hf.hidden_act in ACTIVATIONS, ARCH, "hidden_act", hf.hidden_act, ", ".join(ACTIVATIONS))
    conv = getattr(hf, "conv_kernel_size", 0) or 0
    require(conv == 0, ARCH, "conv_kernel_size", conv, "0 (the ConvLayer after block 0 is not implemented)")
    emb_size = getattr(hf, "embedding_size", None) or hf.hidden_size
    require(emb_size == hf.hidden_size, ARCH, "embedding_size", emb_size, "hidden_size (no embedding projection)")
    d_model, n_heads = hf.hidden_size, hf.num_attention_heads
    default_d_head = d_model // n_heads if d_model % n_heads == 0 else None
    d_head = getattr(hf, "attention_head_size", None) or default_d_head
    require(d_head is not None, ARCH, "hidden_size", d_model, "a multiple of num_attention_heads")
    assert d_head is not None
    types = _pos_att_type(hf)
    relative = bool(getattr(hf, "relative_attention", False))
    # HF divides every term by sqrt(d_head * (1 + number of pos_att_type terms)), also when they are off
    scale = 1.0 / math.sqrt(d_head * (1 + len(types)))
    norm = NormConfig("layernorm", eps=hf.layer_norm_eps)
    if relative:
        require(bool(types), ARCH, "pos_att_type", types, "c2p and/or p2c when relative_attention=True")
        norm_rel = [x.strip() for x in str(getattr(hf, "norm_rel_ebd", "none")).lower().split("|")]
        for x in norm_rel:
            require(x in ("none", "layer_norm"), ARCH, "norm_rel_ebd entry", x, "'none', 'layer_norm'")
        max_rel = getattr(hf, "max_relative_positions", -1)
        if max_rel < 1:
            max_rel = hf.max_position_embeddings
        buckets = max(getattr(hf, "position_buckets", -1), 0)
        attn = AttentionConfig(
            n_heads=n_heads,
            d_head=d_head,
            scale=scale,
            kind="disentangled",
            disentangled=DisentangledConfig(
                att_span=buckets if buckets > 0 else max_rel,
                position_buckets=buckets,
                max_relative_positions=max_rel,
                c2p="c2p" in types,
                p2c="p2c" in types,
                share_att_key=bool(getattr(hf, "share_att_key", False)),
                norm=norm if "layer_norm" in norm_rel else None,
            ),
        )
    else:
        attn = AttentionConfig(n_heads=n_heads, d_head=d_head, scale=scale)
    return EncoderConfig(
        architecture=architecture,
        model_type=hf.model_type,
        embed=EmbeddingConfig(
            d_vocab=hf.vocab_size,
            n_ctx=hf.max_position_embeddings if getattr(hf, "position_biased_input", True) else 0,
            n_token_types=hf.type_vocab_size,
            norm=norm,
            pad_token_id=getattr(hf, "pad_token_id", None),
            zero_padding=True,
        ),
        stack=StackConfig(
            n_layers=hf.num_hidden_layers,
            d_model=d_model,
            attn=attn,
            mlp=MLPConfig(d_mlp=hf.intermediate_size, act_fn=hf.hidden_act),
            norm=norm,
            norm_position="post",
        ),
        mlm_head=MLMHeadConfig(act_fn=hf.hidden_act, norm=norm, tied=True) if mlm else None,
    )


def _linear(r: WeightReader, theirs: str, ours: str, n_heads: int, out: dict[str, Tensor]) -> None:
    out[ours.format("W")] = head_in_weight(r.take(theirs + ".weight"), n_heads)
    out[ours.format("b")] = head_bias(r.take(theirs + ".bias"), n_heads)


def _mlm_head(r: WeightReader, emb: Tensor, out: dict[str, Tensor]) -> None:
    if r.has("cls.predictions.transform.dense.weight"):  # legacy head
        p = "cls.predictions."
        out["mlm_head.W_transform"] = linear_weight(r.take(p + "transform.dense.weight"))
        out["mlm_head.b_transform"] = r.take(p + "transform.dense.bias")
        out["mlm_head.ln.w"] = r.take(p + "transform.LayerNorm.weight")
        out["mlm_head.ln.b"] = r.take(p + "transform.LayerNorm.bias")
        decoder = r.take_optional(p + "decoder.weight")
        if decoder is not None and not decoder.equal(emb):
            raise ValueError(
                "deberta-v2 MLM decoder weight differs from the word embeddings; untied MLM heads are not supported"
            )
        bias = r.take(p + "bias")
        dec_bias = r.take_optional(p + "decoder.bias")
        if dec_bias is not None and not dec_bias.equal(bias):
            raise ValueError("deberta-v2 cls.predictions.decoder.bias differs from cls.predictions.bias")
        out["mlm_head.b_U"] = bias
    else:  # lm_predictions.lm_head: always multiplies by the word embeddings
        p = "lm_predictions.lm_head."
        out["mlm_head.W_transform"] = linear_weight(r.take(p + "dense.weight"))
        out["mlm_head.b_transform"] = r.take(p + "dense.bias")
        out["mlm_head.ln.w"] = r.take(p + "LayerNorm.weight")
        out["mlm_head.ln.b"] = r.take(p + "LayerNorm.bias")
        out["mlm_head.b_U"] = r.take(p + "bias")


@register("DebertaV2Model", "DebertaV2ForMaskedLM", model_types=["deberta-v2"])
def convert(hf_config: Any, state_dict: dict[str, Tensor]) -> tuple[EncoderConfig, dict[str, Tensor]]:
    """Convert a DeBERTa-v2/v3 checkpoint; the MLM head follows the weights present."""
    r = WeightReader(state_dict, ARCH, ignore=("position_ids",))
    r.strip_prefix("deberta.")
    for key in [k for k in r.remaining if k.startswith("mask_predictions.")]:
        r.take(key)  # HF ignores this head on load (_keys_to_ignore_on_load_unexpected)
    mlm = r.has("cls.predictions.transform.dense.weight") or r.has("lm_predictions.lm_head.dense.weight")
    arch = (getattr(hf_config, "architectures", None) or ["DebertaV2Model"])[0]
    cfg = deberta_v2_config(hf_config, arch, mlm=mlm)
    h = cfg.n_heads
    out: dict[str, Tensor] = {}
    out["embed.W_E"] = r.take("embeddings.word_embeddings.weight")
    if cfg.embed.n_ctx:
        out["pos_embed.W_pos"] = r.take("embeddings.position_embeddings.weight")
    if cfg.embed.n_token_types:
        out["token_type_embed.W_token_type"] = r.take("embeddings.token_type_embeddings.weight")
    out["embed_ln.w"] = r.take("embeddings.LayerNorm.weight")
    out["embed_ln.b"] = r.take("embeddings.LayerNorm.bias")
    dc = cfg.stack.attn.disentangled
    if dc is None:
        # HF builds the rel-embedding norm from norm_rel_ebd alone and never uses it without relative attention
        r.take_optional("encoder.LayerNorm.weight")
        r.take_optional("encoder.LayerNorm.bias")
    else:
        table = r.take("encoder.rel_embeddings.weight")
        require(table.shape[0] == 2 * dc.att_span, ARCH, "rel_embeddings rows", table.shape[0], f"{2 * dc.att_span}")
        out["rel_embed.W_rel"] = table
        if dc.norm is not None:
            out["rel_embed.ln.w"] = r.take("encoder.LayerNorm.weight")
            out["rel_embed.ln.b"] = r.take("encoder.LayerNorm.bias")
    for i in range(cfg.n_layers):
        p, o = f"encoder.layer.{i}.", f"blocks.{i}."
        a = p + "attention."
        _linear(r, a + "self.query_proj", o + "attn.{}_Q", h, out)
        _linear(r, a + "self.key_proj", o + "attn.{}_K", h, out)
        _linear(r, a + "self.value_proj", o + "attn.{}_V", h, out)
        if dc is not None and not dc.share_att_key:
            if dc.c2p:
                _linear(r, a + "self.pos_key_proj", o + "attn.{}_K_pos", h, out)
            if dc.p2c:
                _linear(r, a + "self.pos_query_proj", o + "attn.{}_Q_pos", h, out)
        out[o + "attn.W_O"] = head_out_weight(r.take(a + "output.dense.weight"), h)
        out[o + "attn.b_O"] = r.take(a + "output.dense.bias")
        out[o + "ln1.w"] = r.take(a + "output.LayerNorm.weight")
        out[o + "ln1.b"] = r.take(a + "output.LayerNorm.bias")
        out[o + "mlp.W_in"] = linear_weight(r.take(p + "intermediate.dense.weight"))
        out[o + "mlp.b_in"] = r.take(p + "intermediate.dense.bias")
        out[o + "mlp.W_out"] = linear_weight(r.take(p + "output.dense.weight"))
        out[o + "mlp.b_out"] = r.take(p + "output.dense.bias")
        out[o + "ln2.w"] = r.take(p + "output.LayerNorm.weight")
        out[o + "ln2.b"] = r.take(p + "output.LayerNorm.bias")
    if mlm:
        _mlm_head(r, out["embed.W_E"], out)
    r.finish()
    return cfg, out
