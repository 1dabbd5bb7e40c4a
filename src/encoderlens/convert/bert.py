"""BERT (``BertModel``, ``BertForMaskedLM``, ``BertForPreTraining``, ``BertFor{Sequence,Token}Classification``)
-> :class:`HookedEncoder`.

Heads are taken from what the checkpoint holds: an MLM head if ``cls.predictions.*`` exists, NSP if
``cls.seq_relationship.*`` exists, a pooler if ``pooler.*`` exists. Classification heads follow the HF
architecture (sequence: pooler -> linear; token: linear on every position), labels from ``id2label``.

The helpers here (:func:`bert_config`, :func:`convert_bert_embeddings`, :func:`convert_bert_layers`)
are shared by the converters of BERT-named descendants (RoBERTa, XLM-R, ELECTRA).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from encoderlens.config import (
    ACTIVATIONS,
    AttentionConfig,
    ClassifierHeadConfig,
    EmbeddingConfig,
    EncoderConfig,
    MLMHeadConfig,
    MLPConfig,
    NormConfig,
    StackConfig,
)
from encoderlens.convert.common import head_bias, head_in_weight, head_out_weight, linear_weight
from encoderlens.convert.heads import classifier_config, pick_architecture, take_classifier, take_unembed
from encoderlens.convert.registry import WeightReader, register, require

ARCH = "bert"

_HEADS = {"BertForSequenceClassification": "sequence", "BertForTokenClassification": "token"}
_ARCHS = ("BertModel", "BertForMaskedLM", "BertForPreTraining", *_HEADS)


def bert_config(
    hf: Any,
    architecture: str,
    mlm: bool,
    pooler: bool,
    nsp: bool,
    classifier: ClassifierHeadConfig | None = None,
) -> EncoderConfig:
    """Map and check an HF ``BertConfig`` (also RoBERTa / ELECTRA / ALBERT configs, which share its fields)."""
    require(
        getattr(hf, "position_embedding_type", "absolute") in (None, "absolute"),
        ARCH,
        "position_embedding_type",
        getattr(hf, "position_embedding_type", None),
        "absolute",
    )
    require(not getattr(hf, "is_decoder", False), ARCH, "is_decoder", True, "False (encoder use)")
    require(not getattr(hf, "add_cross_attention", False), ARCH, "add_cross_attention", True, "False")
    require(hf.hidden_act in ACTIVATIONS, ARCH, "hidden_act", hf.hidden_act, ", ".join(ACTIVATIONS))
    require(
        hf.hidden_size % hf.num_attention_heads == 0,
        ARCH,
        "hidden_size",
        hf.hidden_size,
        "a multiple of heads",
    )
    norm = NormConfig("layernorm", eps=hf.layer_norm_eps)
    d_model = hf.hidden_size
    n_heads = hf.num_attention_heads
    return EncoderConfig(
        architecture=architecture,
        model_type=hf.model_type,
        embed=EmbeddingConfig(
            d_vocab=hf.vocab_size,
            n_ctx=hf.max_position_embeddings,
            n_token_types=hf.type_vocab_size,
            norm=norm,
            pad_token_id=getattr(hf, "pad_token_id", None),
        ),
        stack=StackConfig(
            n_layers=hf.num_hidden_layers,
            d_model=d_model,
            attn=AttentionConfig(n_heads=n_heads, d_head=d_model // n_heads),
            mlp=MLPConfig(d_mlp=hf.intermediate_size, act_fn=hf.hidden_act),
            norm=norm,
            norm_position="post",
        ),
        mlm_head=(
            MLMHeadConfig(act_fn=hf.hidden_act, norm=norm, tied=bool(getattr(hf, "tie_word_embeddings", True)))
            if mlm
            else None
        ),
        pooler=pooler,
        nsp_head=nsp,
        classifier=classifier,
    )


def convert_bert_embeddings(r: WeightReader, out: dict[str, Tensor], token_types: bool = True) -> None:
    """Convert ``embeddings.{word,position,token_type}_embeddings`` and ``embeddings.LayerNorm``."""
    out["embed.W_E"] = r.take("embeddings.word_embeddings.weight")
    out["pos_embed.W_pos"] = r.take("embeddings.position_embeddings.weight")
    if token_types:
        out["token_type_embed.W_token_type"] = r.take("embeddings.token_type_embeddings.weight")
    out["embed_ln.w"] = r.take("embeddings.LayerNorm.weight")
    out["embed_ln.b"] = r.take("embeddings.LayerNorm.bias")


@dataclass(frozen=True)
class PostLNLayerNames:
    """HF module names (relative to one layer) of a BERT-shaped post-LN layer.

    BERT, RoBERTa, XLM-R and ELECTRA use the defaults; DistilBERT and ALBERT name the same parts differently.
    """

    q: str = "attention.self.query"
    k: str = "attention.self.key"
    v: str = "attention.self.value"
    o: str = "attention.output.dense"
    ln1: str = "attention.output.LayerNorm"
    mlp_in: str = "intermediate.dense"
    mlp_out: str = "output.dense"
    ln2: str = "output.LayerNorm"


BERT_LAYER_NAMES = PostLNLayerNames()


def convert_post_ln_layer(
    r: WeightReader,
    hf_prefix: str,
    block: int,
    n_heads: int,
    out: dict[str, Tensor],
    names: PostLNLayerNames = BERT_LAYER_NAMES,
) -> None:
    """Convert one HF post-LN layer at ``hf_prefix`` into ``blocks.{block}``."""
    p = hf_prefix
    o = f"blocks.{block}."
    for ours, theirs in (("Q", names.q), ("K", names.k), ("V", names.v)):
        out[o + f"attn.W_{ours}"] = head_in_weight(r.take(p + theirs + ".weight"), n_heads)
        out[o + f"attn.b_{ours}"] = head_bias(r.take(p + theirs + ".bias"), n_heads)
    out[o + "attn.W_O"] = head_out_weight(r.take(p + names.o + ".weight"), n_heads)
    out[o + "attn.b_O"] = r.take(p + names.o + ".bias")
    out[o + "ln1.w"] = r.take(p + names.ln1 + ".weight")
    out[o + "ln1.b"] = r.take(p + names.ln1 + ".bias")
    out[o + "mlp.W_in"] = linear_weight(r.take(p + names.mlp_in + ".weight"))
    out[o + "mlp.b_in"] = r.take(p + names.mlp_in + ".bias")
    out[o + "mlp.W_out"] = linear_weight(r.take(p + names.mlp_out + ".weight"))
    out[o + "mlp.b_out"] = r.take(p + names.mlp_out + ".bias")
    out[o + "ln2.w"] = r.take(p + names.ln2 + ".weight")
    out[o + "ln2.b"] = r.take(p + names.ln2 + ".bias")


def convert_bert_layers(
    r: WeightReader,
    n_layers: int,
    n_heads: int,
    out: dict[str, Tensor],
    prefix: str = "encoder.layer.",
    names: PostLNLayerNames = BERT_LAYER_NAMES,
) -> None:
    """Convert ``{prefix}{i}`` layers (BERT-like post-LN encoders) into ``blocks.{i}``."""
    for i in range(n_layers):
        convert_post_ln_layer(r, f"{prefix}{i}.", i, n_heads, out, names)


@register(*_ARCHS, model_types=["bert"])
def convert(hf_config: Any, state_dict: dict[str, Tensor]) -> tuple[EncoderConfig, dict[str, Tensor]]:
    """Convert a BERT checkpoint; MLM / NSP / pooler follow the weights present, classifiers the architecture."""
    r = WeightReader(state_dict, ARCH, ignore=("position_ids", "embeddings.token_type_ids"))
    r.strip_prefix("bert.")
    mlm = r.has("cls.predictions.transform.dense.weight")
    nsp = r.has("cls.seq_relationship.weight")
    pooler = r.has("pooler.dense.weight")
    if nsp and not pooler:
        raise ValueError("bert checkpoint has an NSP head but no pooler weights; the checkpoint is incomplete")
    arch = pick_architecture(hf_config, _ARCHS, "BertModel")
    task = _HEADS.get(arch)
    if task == "sequence" and not pooler:
        raise ValueError("BertForSequenceClassification checkpoint has no pooler weights; it is incomplete")
    classifier = (
        classifier_config(hf_config, task, "pooler" if task == "sequence" else "first_token")  # type: ignore[arg-type]
        if task is not None
        else None
    )
    cfg = bert_config(hf_config, arch, mlm=mlm, pooler=pooler, nsp=nsp, classifier=classifier)
    out: dict[str, Tensor] = {}
    convert_bert_embeddings(r, out)
    convert_bert_layers(r, cfg.n_layers, cfg.n_heads, out)
    if classifier is not None:
        take_classifier(r, out, "classifier")
    if pooler:
        out["pooler.W_pool"] = linear_weight(r.take("pooler.dense.weight"))
        out["pooler.b_pool"] = r.take("pooler.dense.bias")
    if nsp:
        out["nsp_head.W"] = linear_weight(r.take("cls.seq_relationship.weight"))
        out["nsp_head.b"] = r.take("cls.seq_relationship.bias")
    if mlm:
        out["mlm_head.W_transform"] = linear_weight(r.take("cls.predictions.transform.dense.weight"))
        out["mlm_head.b_transform"] = r.take("cls.predictions.transform.dense.bias")
        out["mlm_head.ln.w"] = r.take("cls.predictions.transform.LayerNorm.weight")
        out["mlm_head.ln.b"] = r.take("cls.predictions.transform.LayerNorm.bias")
        take_unembed(
            r,
            out,
            hf_config,
            ARCH,
            "cls.predictions.decoder.weight",
            ("cls.predictions.bias", "cls.predictions.decoder.bias"),
        )
    r.finish()
    return cfg, out
