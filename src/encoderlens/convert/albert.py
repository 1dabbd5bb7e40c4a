"""ALBERT -> :class:`HookedEncoder`.

Factorised embeddings (width ``embedding_size``, always followed by ``embedding_hidden_mapping_in`` to
``hidden_size``) and shared layers: HF applies layer group ``int(i / (num_hidden_layers /
num_hidden_groups))`` at step ``i``. We build one block per step (``blocks.{i}``, each with its own hook
points) holding the group's parameter objects (``EncoderConfig.param_source``); the converter emits
weights for the first block of each group only.

``num_hidden_groups > 1`` is supported. ``inner_group_num > 1`` (several different layers inside a
group, used by no released checkpoint) is rejected.

Heads: MLM (``predictions``: dense to ``embedding_size`` -> ``hidden_act`` -> LayerNorm -> tied
decoder), pooler, sentence-order prediction (``AlbertForPreTraining``; pooler -> linear, exposed as
the sequence classifier), sequence classification (pooler -> linear) and token classification.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor

from encoderlens.config import EncoderConfig, MLMHeadConfig, NormConfig
from encoderlens.convert.bert import PostLNLayerNames, bert_config, convert_bert_embeddings, convert_post_ln_layer
from encoderlens.convert.common import linear_weight
from encoderlens.convert.heads import classifier_config, pick_architecture, take_classifier, take_unembed
from encoderlens.convert.registry import WeightReader, register, require

ARCH = "albert"

_HEADS = {
    "AlbertForPreTraining": "sop",
    "AlbertForSequenceClassification": "sequence",
    "AlbertForTokenClassification": "token",
}
_ARCHS = ("AlbertModel", "AlbertForMaskedLM", *_HEADS)

_LAYER_NAMES = PostLNLayerNames(
    q="attention.query",
    k="attention.key",
    v="attention.value",
    o="attention.dense",
    ln1="attention.LayerNorm",
    mlp_in="ffn",
    mlp_out="ffn_output",
    ln2="full_layer_layer_norm",
)


def layer_groups(n_layers: int, n_groups: int) -> list[int]:
    """The layer group HF applies at each step (same float arithmetic as ``AlbertTransformer``)."""
    return [int(i / (n_layers / n_groups)) for i in range(n_layers)]


@register(*_ARCHS, model_types=["albert"])
def convert(hf_config: Any, state_dict: dict[str, Tensor]) -> tuple[EncoderConfig, dict[str, Tensor]]:
    """Convert an ALBERT checkpoint; MLM and pooler follow the weights, classifiers the architecture."""
    n_layers, n_groups = hf_config.num_hidden_layers, hf_config.num_hidden_groups
    require(hf_config.inner_group_num == 1, ARCH, "inner_group_num", hf_config.inner_group_num, "1")
    require(1 <= n_groups <= n_layers, ARCH, "num_hidden_groups", n_groups, f"1..num_hidden_layers={n_layers}")
    r = WeightReader(state_dict, ARCH, ignore=("position_ids", "embeddings.token_type_ids"))
    r.strip_prefix("albert.")
    arch = pick_architecture(hf_config, _ARCHS, "AlbertModel")
    head = _HEADS.get(arch)
    mlm = r.has("predictions.dense.weight")
    pooler = r.has("pooler.weight")
    if head in ("sop", "sequence") and not pooler:
        raise ValueError(f"{arch} checkpoint has no pooler weights; the checkpoint is incomplete")
    classifier = None
    if head in ("sop", "sequence"):
        classifier = classifier_config(hf_config, "sequence", "pooler")
    elif head == "token":
        classifier = classifier_config(hf_config, "token")
    groups = layer_groups(n_layers, n_groups)
    owner = {g: groups.index(g) for g in range(n_groups)}
    cfg = bert_config(hf_config, arch, mlm=False, pooler=pooler, nsp=False, classifier=classifier)
    norm = NormConfig("layernorm", eps=hf_config.layer_norm_eps)
    tied = bool(getattr(hf_config, "tie_word_embeddings", True))
    cfg = dataclasses.replace(
        cfg,
        embed=dataclasses.replace(cfg.embed, d_embed=hf_config.embedding_size, project=True),
        mlm_head=MLMHeadConfig(act_fn=hf_config.hidden_act, norm=norm, tied=tied) if mlm else None,
        param_source=tuple(owner[g] for g in groups),
    )
    out: dict[str, Tensor] = {}
    convert_bert_embeddings(r, out)
    out["embed_proj.W"] = linear_weight(r.take("encoder.embedding_hidden_mapping_in.weight"))
    out["embed_proj.b"] = r.take("encoder.embedding_hidden_mapping_in.bias")
    for g, block in owner.items():
        prefix = f"encoder.albert_layer_groups.{g}.albert_layers.0."
        convert_post_ln_layer(r, prefix, block, cfg.n_heads, out, _LAYER_NAMES)
    if pooler:
        out["pooler.W_pool"] = linear_weight(r.take("pooler.weight"))
        out["pooler.b_pool"] = r.take("pooler.bias")
    if head == "sop":
        take_classifier(r, out, "sop_classifier.classifier")
    elif head in ("sequence", "token"):
        take_classifier(r, out, "classifier")
    if mlm:
        out["mlm_head.W_transform"] = linear_weight(r.take("predictions.dense.weight"))
        out["mlm_head.b_transform"] = r.take("predictions.dense.bias")
        out["mlm_head.ln.w"] = r.take("predictions.LayerNorm.weight")
        out["mlm_head.ln.b"] = r.take("predictions.LayerNorm.bias")
        take_unembed(
            r, out, hf_config, ARCH, "predictions.decoder.weight", ("predictions.bias", "predictions.decoder.bias")
        )
    r.finish()
    return cfg, out
