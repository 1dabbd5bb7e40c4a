"""DeBERTa-v2 / v3 (``DebertaV2Model``, ``DebertaV2ForMaskedLM``, ``DebertaV2For{Sequence,Token}Classification``,
``DebertaV2ForQuestionAnswering``) -> :class:`HookedEncoder`.

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

Task heads: sequence classification reads position 0 through HF's ``ContextPooler`` (``pooler.dense`` ->
``pooler_hidden_act``) then ``classifier``: a :class:`ClassifierHead` with that hidden layer (hence
``pooler_hidden_size`` must equal ``hidden_size``, as in every released config); token classification and
question answering are one linear layer on every position.

Not supported (the converter raises): ``conv_kernel_size > 0`` (the ConvLayer of deberta-v2-xlarge /
xxlarge), ``embedding_size != hidden_size``, ``pos_att_type`` entries other than ``c2p``/``p2c``,
``norm_rel_ebd`` other than ``none``/``layer_norm``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from encoderlens.config import AttentionConfig, DisentangledConfig, EncoderConfig, NormConfig
from encoderlens.convert.bertlike import BertLike, Classifier, Fields, MLMLayout, QuestionAnswering, register_bertlike
from encoderlens.convert.common import LayerNames
from encoderlens.convert.registry import WeightReader, require

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


def _attention(hf: Any, n_heads: int, d_head: int, norm: NormConfig) -> AttentionConfig:
    """Disentangled attention (``relative_attention``) or plain attention, with DeBERTa's scale."""
    types = _pos_att_type(hf)
    # HF divides every term by sqrt(d_head * (1 + number of pos_att_type terms)), also when they are off
    scale = 1.0 / math.sqrt(d_head * (1 + len(types)))
    if not getattr(hf, "relative_attention", False):
        return AttentionConfig(n_heads=n_heads, d_head=d_head, scale=scale)
    require(bool(types), ARCH, "pos_att_type", types, "c2p and/or p2c when relative_attention=True")
    norm_rel = [x.strip() for x in str(getattr(hf, "norm_rel_ebd", "none")).lower().split("|")]
    for x in norm_rel:
        require(x in ("none", "layer_norm"), ARCH, "norm_rel_ebd entry", x, "'none', 'layer_norm'")
    max_rel = getattr(hf, "max_relative_positions", -1)
    if max_rel < 1:
        max_rel = hf.max_position_embeddings
    buckets = max(getattr(hf, "position_buckets", -1), 0)
    return AttentionConfig(
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


def _customize(hf: Any, cfg: EncoderConfig) -> EncoderConfig:
    """DeBERTa's differences from BERT's config: attention, optional absolute positions, zeroed padding."""
    conv = getattr(hf, "conv_kernel_size", 0) or 0
    require(conv == 0, ARCH, "conv_kernel_size", conv, "0 (the ConvLayer after block 0 is not implemented)")
    emb_size = getattr(hf, "embedding_size", None) or hf.hidden_size
    require(emb_size == hf.hidden_size, ARCH, "embedding_size", emb_size, "hidden_size (no embedding projection)")
    head = cfg.classifier
    if head is not None and head.task == "sequence":
        size = getattr(hf, "pooler_hidden_size", hf.hidden_size)
        require(size == hf.hidden_size, ARCH, "pooler_hidden_size", size, f"hidden_size={hf.hidden_size}")
    stack = cfg.stack
    n_ctx = cfg.embed.n_ctx if getattr(hf, "position_biased_input", True) else 0
    return dataclasses.replace(
        cfg,
        embed=dataclasses.replace(cfg.embed, n_ctx=n_ctx, zero_padding=True),
        stack=dataclasses.replace(stack, attn=_attention(hf, stack.attn.n_heads, stack.attn.d_head, stack.norm)),
    )


def _position_projections(cfg: EncoderConfig) -> Mapping[str, str]:
    dc = cfg.stack.attn.disentangled
    if dc is None or dc.share_att_key:
        return {}
    return {
        **({"K_pos": "attention.self.pos_key_proj"} if dc.c2p else {}),
        **({"Q_pos": "attention.self.pos_query_proj"} if dc.p2c else {}),
    }


def _relative_embeddings(r: WeightReader, out: dict[str, Tensor], cfg: EncoderConfig) -> None:
    dc = cfg.stack.attn.disentangled
    if dc is None:
        # HF builds the rel-embedding norm from norm_rel_ebd alone and never uses it without relative attention
        r.take_optional("encoder.LayerNorm.weight")
        r.take_optional("encoder.LayerNorm.bias")
        return
    table = r.take("encoder.rel_embeddings.weight")
    require(table.shape[0] == 2 * dc.att_span, ARCH, "rel_embeddings rows", table.shape[0], f"{2 * dc.att_span}")
    out["rel_embed.W_rel"] = table
    if dc.norm is not None:
        out["rel_embed.ln.w"] = r.take("encoder.LayerNorm.weight")
        out["rel_embed.ln.b"] = r.take("encoder.LayerNorm.bias")


SPEC = BertLike(
    name=ARCH,
    prefix="deberta.",
    model_types=("deberta-v2",),
    architectures={
        "DebertaV2Model": None,
        "DebertaV2ForMaskedLM": None,
        "DebertaV2ForSequenceClassification": Classifier(
            "sequence", "classifier", hidden="pooler.dense", hidden_act_key="pooler_hidden_act"
        ),
        "DebertaV2ForTokenClassification": Classifier("token", "classifier"),
        "DebertaV2ForQuestionAnswering": QuestionAnswering(),
    },
    fields=Fields(d_head="attention_head_size"),
    handled=frozenset(
        {
            "relative_attention",
            "pos_att_type",
            "position_biased_input",
            "max_relative_positions",
            "position_buckets",
            "norm_rel_ebd",
            "share_att_key",
            "conv_kernel_size",
            "conv_act",  # read only with conv_kernel_size > 0, which is refused
            "conv_groups",
            "embedding_size",
            "legacy",  # which MLM layout HF builds; we take the one whose weights are present
            "pooler_hidden_act",  # the ContextPooler of DebertaV2ForSequenceClassification
            "pooler_hidden_size",
        }
    ),
    ignored=frozenset({"pooler_dropout", "cls_dropout"}),
    layer_names=LayerNames(q="attention.self.query_proj", k="attention.self.key_proj", v="attention.self.value_proj"),
    pooler=None,
    mlm=(
        MLMLayout(
            dense="cls.predictions.transform.dense",
            norm="cls.predictions.transform.LayerNorm",
            decoder="cls.predictions.decoder.weight",
            biases=("cls.predictions.bias", "cls.predictions.decoder.bias"),
        ),
        MLMLayout(
            dense="lm_predictions.lm_head.dense",
            norm="lm_predictions.lm_head.LayerNorm",
            decoder=None,
            biases=("lm_predictions.lm_head.bias",),
        ),
    ),
    buffers=("position_ids",),
    dropped=("mask_predictions.",),  # HF ignores this head on load (_keys_to_ignore_on_load_unexpected)
    customize=_customize,
    extra_weights=_relative_embeddings,
    extra_attn=_position_projections,
)

convert = register_bertlike(SPEC)
