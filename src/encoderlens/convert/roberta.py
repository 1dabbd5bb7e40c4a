"""RoBERTa and XLM-RoBERTa -> :class:`HookedEncoder`.

BERT's layers under a ``roberta.`` prefix, with fairseq positions: only non-padding tokens
(``tokens != pad_token_id``) are counted, starting at ``pad_token_id + 1``, and padding tokens read the
padding row (``EmbeddingConfig.positions_skip_padding``). Token types are whatever ``type_vocab_size``
says (1 in released checkpoints: one all-zero segment embedding, still added).

Heads: MLM (``lm_head``: dense -> exact GELU -> LayerNorm -> tied decoder; HF hard-codes GELU here),
pooler, sequence classification (``classifier.dense`` -> tanh -> ``classifier.out_proj`` on the first
token) and token classification.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor

from encoderlens.config import EncoderConfig, MLMHeadConfig, NormConfig
from encoderlens.convert.bert import bert_config, convert_bert_embeddings, convert_bert_layers
from encoderlens.convert.common import linear_weight
from encoderlens.convert.heads import classifier_config, pick_architecture, take_classifier, take_unembed
from encoderlens.convert.registry import WeightReader, register, require

_HEADS = {
    "RobertaForSequenceClassification": "sequence",
    "RobertaForTokenClassification": "token",
    "XLMRobertaForSequenceClassification": "sequence",
    "XLMRobertaForTokenClassification": "token",
}
_ARCHS = ("RobertaModel", "RobertaForMaskedLM", "XLMRobertaModel", "XLMRobertaForMaskedLM", *_HEADS)


@register(*_ARCHS, model_types=["roberta", "xlm-roberta"])
def convert(hf_config: Any, state_dict: dict[str, Tensor]) -> tuple[EncoderConfig, dict[str, Tensor]]:
    """Convert a RoBERTa / XLM-R checkpoint; MLM and pooler follow the weights, classifiers the architecture."""
    name = hf_config.model_type
    pad_id: int | None = getattr(hf_config, "pad_token_id", None)
    if pad_id is None:
        raise ValueError(f"{name} converter needs pad_token_id in the config (positions are counted from it)")
    pad = pad_id
    require(
        hf_config.max_position_embeddings > pad + 1,
        name,
        "max_position_embeddings",
        hf_config.max_position_embeddings,
        f"> pad_token_id + 1 = {pad + 1}",
    )
    r = WeightReader(state_dict, name, ignore=("position_ids", "embeddings.token_type_ids"))
    r.strip_prefix("roberta.")
    arch = pick_architecture(hf_config, _ARCHS, "RobertaModel")
    task = _HEADS.get(arch)
    mlm = r.has("lm_head.dense.weight")
    pooler = r.has("pooler.dense.weight")
    classifier = classifier_config(hf_config, task, hidden_act="tanh" if task == "sequence" else None) if task else None  # type: ignore[arg-type]
    cfg = bert_config(hf_config, arch, mlm=False, pooler=pooler, nsp=False, classifier=classifier)
    norm = NormConfig("layernorm", eps=hf_config.layer_norm_eps)
    tied = bool(getattr(hf_config, "tie_word_embeddings", True))
    cfg = dataclasses.replace(
        cfg,
        embed=dataclasses.replace(cfg.embed, position_offset=pad + 1, positions_skip_padding=True),
        mlm_head=MLMHeadConfig(act_fn="gelu", norm=norm, tied=tied) if mlm else None,
    )
    out: dict[str, Tensor] = {}
    convert_bert_embeddings(r, out)
    convert_bert_layers(r, cfg.n_layers, cfg.n_heads, out)
    if pooler:
        out["pooler.W_pool"] = linear_weight(r.take("pooler.dense.weight"))
        out["pooler.b_pool"] = r.take("pooler.dense.bias")
    if task == "sequence":
        take_classifier(r, out, "classifier.out_proj", hidden="classifier.dense")
    elif task == "token":
        take_classifier(r, out, "classifier")
    if mlm:
        out["mlm_head.W_transform"] = linear_weight(r.take("lm_head.dense.weight"))
        out["mlm_head.b_transform"] = r.take("lm_head.dense.bias")
        out["mlm_head.ln.w"] = r.take("lm_head.layer_norm.weight")
        out["mlm_head.ln.b"] = r.take("lm_head.layer_norm.bias")
        take_unembed(r, out, hf_config, name, "lm_head.decoder.weight", ("lm_head.bias", "lm_head.decoder.bias"))
    r.finish()
    return cfg, out
