"""ELECTRA (discriminator and generator) -> :class:`HookedEncoder`.

BERT's embeddings and layers under an ``electra.`` prefix. The embeddings have width
``embedding_size``; when it differs from ``hidden_size`` a linear ``embeddings_project`` maps them to
the residual stream (``EmbeddingConfig.project``, hook ``hook_embed_pre_proj`` before it).

Heads:

- ``ElectraForPreTraining`` (the discriminator): replaced-token detection, dense -> ``hidden_act`` ->
  one logit per token. It is exposed as a token classifier with one label, ``"replaced"``
  (multi-label: ``logit > 0`` means replaced), so ``return_type="classification"`` gives
  ``(batch, pos, 1)``; HF's ``logits`` are that tensor's ``[..., 0]``.
- ``ElectraForMaskedLM`` (the generator): dense to ``embedding_size`` -> GELU -> LayerNorm -> tied decoder.
- ``ElectraForSequenceClassification``: first token -> dense -> GELU -> out_proj (HF hard-codes GELU).
- ``ElectraForTokenClassification``: linear on every position.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor

from encoderlens.config import ClassifierHeadConfig, EncoderConfig, MLMHeadConfig, NormConfig
from encoderlens.convert.bert import bert_config, convert_bert_embeddings, convert_bert_layers
from encoderlens.convert.common import linear_weight
from encoderlens.convert.heads import classifier_config, pick_architecture, take_classifier, take_unembed
from encoderlens.convert.registry import WeightReader, register

ARCH = "electra"

_HEADS = {
    "ElectraForPreTraining": "discriminator",
    "ElectraForSequenceClassification": "sequence",
    "ElectraForTokenClassification": "token",
}
_ARCHS = ("ElectraModel", "ElectraForMaskedLM", *_HEADS)


def _classifier(hf: Any, head: str | None) -> ClassifierHeadConfig | None:
    if head == "discriminator":
        return ClassifierHeadConfig(
            task="token", labels=("replaced",), hidden_act=hf.hidden_act, problem_type="multi_label_classification"
        )
    if head == "sequence":
        return classifier_config(hf, "sequence", hidden_act="gelu")
    if head == "token":
        return classifier_config(hf, "token")
    return None


@register(*_ARCHS, model_types=["electra"])
def convert(hf_config: Any, state_dict: dict[str, Tensor]) -> tuple[EncoderConfig, dict[str, Tensor]]:
    """Convert an ELECTRA checkpoint; the generator's MLM head follows the weights, other heads the architecture."""
    r = WeightReader(state_dict, ARCH, ignore=("position_ids", "embeddings.token_type_ids"))
    r.strip_prefix("electra.")
    arch = pick_architecture(hf_config, _ARCHS, "ElectraModel")
    head = _HEADS.get(arch)
    mlm = r.has("generator_predictions.dense.weight")
    project = r.has("embeddings_project.weight")
    d_embed = hf_config.embedding_size
    if project != (d_embed != hf_config.hidden_size):
        raise ValueError(
            f"electra checkpoint {'has' if project else 'lacks'} embeddings_project weights but embedding_size="
            f"{d_embed} and hidden_size={hf_config.hidden_size}; the checkpoint does not match its config"
        )
    cfg = bert_config(hf_config, arch, mlm=False, pooler=False, nsp=False, classifier=_classifier(hf_config, head))
    norm = NormConfig("layernorm", eps=hf_config.layer_norm_eps)
    tied = bool(getattr(hf_config, "tie_word_embeddings", True))
    cfg = dataclasses.replace(
        cfg,
        embed=dataclasses.replace(cfg.embed, d_embed=d_embed if project else None, project=project),
        mlm_head=MLMHeadConfig(act_fn="gelu", norm=norm, tied=tied) if mlm else None,
    )
    out: dict[str, Tensor] = {}
    convert_bert_embeddings(r, out)
    if project:
        out["embed_proj.W"] = linear_weight(r.take("embeddings_project.weight"))
        out["embed_proj.b"] = r.take("embeddings_project.bias")
    convert_bert_layers(r, cfg.n_layers, cfg.n_heads, out)
    if head == "discriminator":
        take_classifier(r, out, "discriminator_predictions.dense_prediction", hidden="discriminator_predictions.dense")
    elif head == "sequence":
        take_classifier(r, out, "classifier.out_proj", hidden="classifier.dense")
    elif head == "token":
        take_classifier(r, out, "classifier")
    if mlm:
        out["mlm_head.W_transform"] = linear_weight(r.take("generator_predictions.dense.weight"))
        out["mlm_head.b_transform"] = r.take("generator_predictions.dense.bias")
        out["mlm_head.ln.w"] = r.take("generator_predictions.LayerNorm.weight")
        out["mlm_head.ln.b"] = r.take("generator_predictions.LayerNorm.bias")
        take_unembed(r, out, hf_config, ARCH, "generator_lm_head.weight", ("generator_lm_head.bias",))
    r.finish()
    return cfg, out
