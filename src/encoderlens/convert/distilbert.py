"""DistilBERT -> :class:`HookedEncoder`.

A post-LN BERT without token types or pooler, under other names (``q_lin``, ``sa_layer_norm``, ``ffn.lin1``...),
with every LayerNorm at ``eps=1e-12`` (hard-coded in HF). ``sinusoidal_pos_embds`` only changes how
HF *initialises* the position table, which is stored in the checkpoint like any weight; when a
checkpoint omits it, we rebuild the sinusoidal table as HF's initialisation does.

Heads: MLM (``vocab_transform`` -> ``config.activation`` -> ``vocab_layer_norm`` -> tied
``vocab_projector``), sequence classification (first token -> ``pre_classifier`` -> ReLU ->
``classifier``) and token classification.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from encoderlens.config import (
    ACTIVATIONS,
    AttentionConfig,
    EmbeddingConfig,
    EncoderConfig,
    MLMHeadConfig,
    MLPConfig,
    NormConfig,
    StackConfig,
)
from encoderlens.convert.bert import PostLNLayerNames, convert_bert_layers
from encoderlens.convert.common import linear_weight
from encoderlens.convert.heads import classifier_config, pick_architecture, take_classifier, take_unembed
from encoderlens.convert.registry import WeightReader, register, require

ARCH = "distilbert"
EPS = 1e-12  # HF DistilBERT hard-codes this for every LayerNorm

_HEADS = {"DistilBertForSequenceClassification": "sequence", "DistilBertForTokenClassification": "token"}
_ARCHS = ("DistilBertModel", "DistilBertForMaskedLM", *_HEADS)

_LAYER_NAMES = PostLNLayerNames(
    q="attention.q_lin",
    k="attention.k_lin",
    v="attention.v_lin",
    o="attention.out_lin",
    ln1="sa_layer_norm",
    mlp_in="ffn.lin1",
    mlp_out="ffn.lin2",
    ln2="output_layer_norm",
)


def sinusoidal_table(n_pos: int, dim: int) -> Tensor:
    """HF DistilBERT's sinusoidal init: ``sin`` on even columns, ``cos`` on odd, ``pos / 10000^(2*(j//2)/dim)``."""
    pos = torch.arange(n_pos, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.empty(n_pos, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float()


def distilbert_config(hf: Any, architecture: str, mlm: bool, classifier: Any) -> EncoderConfig:
    require(hf.activation in ACTIVATIONS, ARCH, "activation", hf.activation, ", ".join(ACTIVATIONS))
    require(hf.dim % hf.n_heads == 0, ARCH, "dim", hf.dim, f"a multiple of n_heads={hf.n_heads}")
    norm = NormConfig("layernorm", eps=EPS)
    return EncoderConfig(
        architecture=architecture,
        model_type=hf.model_type,
        embed=EmbeddingConfig(
            d_vocab=hf.vocab_size,
            n_ctx=hf.max_position_embeddings,
            n_token_types=0,
            norm=norm,
            pad_token_id=getattr(hf, "pad_token_id", None),
        ),
        stack=StackConfig(
            n_layers=hf.n_layers,
            d_model=hf.dim,
            attn=AttentionConfig(n_heads=hf.n_heads, d_head=hf.dim // hf.n_heads),
            mlp=MLPConfig(d_mlp=hf.hidden_dim, act_fn=hf.activation),
            norm=norm,
            norm_position="post",
        ),
        mlm_head=(
            MLMHeadConfig(act_fn=hf.activation, norm=norm, tied=bool(getattr(hf, "tie_word_embeddings", True)))
            if mlm
            else None
        ),
        classifier=classifier,
    )


@register(*_ARCHS, model_types=["distilbert"])
def convert(hf_config: Any, state_dict: dict[str, Tensor]) -> tuple[EncoderConfig, dict[str, Tensor]]:
    """Convert a DistilBERT checkpoint; the MLM head follows the weights, classifiers the architecture."""
    r = WeightReader(state_dict, ARCH, ignore=("position_ids",))
    r.strip_prefix("distilbert.")
    arch = pick_architecture(hf_config, _ARCHS, "DistilBertModel")
    task = _HEADS.get(arch)
    mlm = r.has("vocab_transform.weight")
    classifier = (
        classifier_config(hf_config, task, hidden_act="relu" if task == "sequence" else None)  # type: ignore[arg-type]
        if task
        else None
    )
    cfg = distilbert_config(hf_config, arch, mlm, classifier)
    out: dict[str, Tensor] = {}
    out["embed.W_E"] = r.take("embeddings.word_embeddings.weight")
    pos = r.take_optional("embeddings.position_embeddings.weight")
    if pos is None:
        require(
            bool(getattr(hf_config, "sinusoidal_pos_embds", False)),
            ARCH,
            "sinusoidal_pos_embds",
            False,
            "a checkpoint holding embeddings.position_embeddings.weight (or sinusoidal_pos_embds=True)",
        )
        pos = sinusoidal_table(hf_config.max_position_embeddings, hf_config.dim)
    out["pos_embed.W_pos"] = pos
    out["embed_ln.w"] = r.take("embeddings.LayerNorm.weight")
    out["embed_ln.b"] = r.take("embeddings.LayerNorm.bias")
    convert_bert_layers(r, cfg.n_layers, cfg.n_heads, out, prefix="transformer.layer.", names=_LAYER_NAMES)
    if task == "sequence":
        take_classifier(r, out, "classifier", hidden="pre_classifier")
    elif task == "token":
        take_classifier(r, out, "classifier")
    if mlm:
        out["mlm_head.W_transform"] = linear_weight(r.take("vocab_transform.weight"))
        out["mlm_head.b_transform"] = r.take("vocab_transform.bias")
        out["mlm_head.ln.w"] = r.take("vocab_layer_norm.weight")
        out["mlm_head.ln.b"] = r.take("vocab_layer_norm.bias")
        take_unembed(r, out, hf_config, ARCH, "vocab_projector.weight", ("vocab_projector.bias",))
    r.finish()
    return cfg, out
