"""ModernBERT (``ModernBertModel``, ``ModernBertForMaskedLM``, ``ModernBertFor{Sequence,Token}Classification``,
``ModernBertForQuestionAnswering``) -> :class:`HookedEncoder`.

ModernBERT is a pre-LN encoder: token embedding -> LayerNorm, then blocks with rotary attention
(alternating sliding-window "local" layers and "global" layers with their own rope theta), a GeGLU
MLP and no biases by default, then a final norm. Block 0 has no norm before attention (HF's
``attn_norm`` is ``Identity`` there; the embedding norm plays that role).

Mapping notes:

- ``Wqkv`` is split into Q, K, V (in that order); ``Wi`` produces ``2 * d_mlp``: HF computes
  ``act(first half) * second half``, so the first half is our ``W_gate`` and the second our ``W_in``.
- Local layers see keys within ``local_attention // 2`` positions (HF's ``sliding_window``).
- The MLM head ``dense -> act -> norm -> decoder`` maps to :class:`MLMHead`; when the checkpoint has no
  dense bias (``classifier_bias=False``, the default) or no decoder bias, those are loaded as zeros.
- The task heads read the same prediction head (``head``: dense -> ``classifier_activation`` -> LayerNorm)
  and then ``classifier``; both become one :class:`ClassifierHead` / :class:`QAHead` (hidden layer + norm
  + output layer). The sequence classifier first pools the final residual by ``classifier_pooling``:
  ``"cls"`` (position 0) or ``"mean"`` (over real tokens), then applies the prediction head, as HF does.
  The token classifier and the QA head apply it at every position; the QA head's two logits are HF's
  ``start_logits`` / ``end_logits``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from encoderlens.config import (
    ACTIVATIONS,
    AttentionConfig,
    ClassifierInput,
    EmbeddingConfig,
    EncoderConfig,
    MLMHeadConfig,
    MLPConfig,
    NormConfig,
    RotaryConfig,
    StackConfig,
)
from encoderlens.convert.common import head_bias, head_in_weight, head_out_weight, linear_weight
from encoderlens.convert.heads import classifier_config, qa_config
from encoderlens.convert.registry import WeightReader, check_config_keys, register, require

ARCH = "modernbert"
_GLOBAL, _LOCAL = "full_attention", "sliding_attention"

#: ModernBertConfig keys this converter reads (sizes, norms, attention pattern, rotary, head).
HANDLED_KEYS = frozenset(
    {
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "hidden_activation",
        "max_position_embeddings",
        "norm_eps",
        "norm_bias",
        "pad_token_id",
        "attention_bias",
        "mlp_bias",
        "local_attention",
        "layer_types",
        "global_attn_every_n_layers",
        "rope_parameters",
        "rope_scaling",
        "global_rope_theta",
        "local_rope_theta",
        "classifier_activation",
        "classifier_bias",  # the head's dense bias: taken if present
        "classifier_pooling",  # sequence classification: "cls" or "mean"
        "decoder_bias",  # the decoder bias: taken if present
        "tie_word_embeddings",
    }
)
#: Keys without effect on ModernBertModel / ModernBertForMaskedLM in eval mode; ``layer_norm_eps`` and
#: ``position_embedding_type`` appear in released configs but HF ModernBERT reads neither.
IGNORED_KEYS = frozenset(
    {
        "attention_dropout",
        "embedding_dropout",
        "mlp_dropout",
        "classifier_dropout",
        "initializer_cutoff_factor",
        "deterministic_flash_attn",
        "reference_compile",
        "repad_logits_with_grad",
        "sparse_prediction",  # HF then predicts masked positions only (with labels); logits elsewhere equal
        "sparse_pred_ignore_index",
        "layer_norm_eps",
        "position_embedding_type",
    }
)


def _layer_types(hf: Any) -> list[str]:
    types = getattr(hf, "layer_types", None)
    if types is None:  # transformers < 5: an int period
        every = getattr(hf, "global_attn_every_n_layers", 3)
        types = [_LOCAL if i % every else _GLOBAL for i in range(hf.num_hidden_layers)]
    types = list(types)
    require(len(types) == hf.num_hidden_layers, ARCH, "len(layer_types)", len(types), "num_hidden_layers")
    for t in types:
        require(t in (_GLOBAL, _LOCAL), ARCH, "layer_types entry", t, f"{_GLOBAL!r}, {_LOCAL!r}")
    return types


def _rope_theta(hf: Any, layer_type: str) -> float:
    params = getattr(hf, "rope_parameters", None)
    if isinstance(params, dict) and layer_type in params:
        p = params[layer_type] or {}
        rope_type = p.get("rope_type", "default")
        require(rope_type == "default", ARCH, f"rope_parameters[{layer_type!r}].rope_type", rope_type, "'default'")
        require(
            p.get("partial_rotary_factor", 1.0) == 1.0,
            ARCH,
            "partial_rotary_factor",
            p.get("partial_rotary_factor"),
            "1.0 (HF ModernBERT ignores it)",
        )
        return float(p["rope_theta"])
    # transformers < 5
    require(getattr(hf, "rope_scaling", None) is None, ARCH, "rope_scaling", getattr(hf, "rope_scaling", None), "None")
    name = "global_rope_theta" if layer_type == _GLOBAL else "local_rope_theta"
    return float(getattr(hf, name))


def _norm(hf: Any) -> NormConfig:
    return NormConfig("layernorm", eps=hf.norm_eps, bias=bool(hf.norm_bias))


def modernbert_config(hf: Any, architecture: str, mlm: bool, tied: bool) -> EncoderConfig:
    """Map and check an HF ``ModernBertConfig``."""
    require(
        hf.hidden_activation in ACTIVATIONS, ARCH, "hidden_activation", hf.hidden_activation, ", ".join(ACTIVATIONS)
    )
    require(
        hf.hidden_size % hf.num_attention_heads == 0,
        ARCH,
        "hidden_size",
        hf.hidden_size,
        "a multiple of num_attention_heads",
    )
    # our gated MLP has no bias on the gate branch, which HF's Wi.bias would need
    require(not hf.mlp_bias, ARCH, "mlp_bias", hf.mlp_bias, "False (every released ModernBERT)")
    require(getattr(hf, "local_attention", 0) >= 0, ARCH, "local_attention", hf.local_attention, ">= 0")
    if mlm:
        act = hf.classifier_activation
        require(act in ACTIVATIONS, ARCH, "classifier_activation", act, ", ".join(ACTIVATIONS))
    norm = _norm(hf)
    d_model, n_heads = hf.hidden_size, hf.num_attention_heads
    d_head = d_model // n_heads
    types = _layer_types(hf)
    bias = bool(hf.attention_bias)
    attn = {
        t: AttentionConfig(
            n_heads=n_heads,
            d_head=d_head,
            qkv_bias=bias,
            out_bias=bias,
            rotary=RotaryConfig(base=_rope_theta(hf, t)),
            local_window=hf.local_attention // 2 if t == _LOCAL else None,
        )
        for t in set(types)
    }
    global_attn = attn.get(_GLOBAL) or AttentionConfig(
        n_heads=n_heads, d_head=d_head, qkv_bias=bias, out_bias=bias, rotary=RotaryConfig(base=_rope_theta(hf, _GLOBAL))
    )
    return EncoderConfig(
        architecture=architecture,
        model_type=hf.model_type,
        embed=EmbeddingConfig(d_vocab=hf.vocab_size, norm=norm, pad_token_id=getattr(hf, "pad_token_id", None)),
        stack=StackConfig(
            n_layers=hf.num_hidden_layers,
            d_model=d_model,
            attn=global_attn,
            mlp=MLPConfig(d_mlp=hf.intermediate_size, act_fn=hf.hidden_activation, gated=True, bias=False),
            norm=norm,
            norm_position="pre",
            final_norm=True,
            layer_attn=tuple(attn[t] for t in types),
            first_block_attn_norm=False,
        ),
        mlm_head=MLMHeadConfig(act_fn=hf.classifier_activation, norm=norm, tied=tied) if mlm else None,
    )


def _take_norm(r: WeightReader, theirs: str, ours: str, bias: bool, out: dict[str, Tensor]) -> None:
    out[ours + ".w"] = r.take(theirs + ".weight")
    if bias:
        out[ours + ".b"] = r.take(theirs + ".bias")


#: The task head each HF architecture puts on the prediction head (``head``); None: none (the MLM head, if
#: any, follows the weights present).
Task = Literal["sequence", "token", "qa"]
TASKS: dict[str, Task | None] = {
    "ModernBertModel": None,
    "ModernBertForMaskedLM": None,
    "ModernBertForSequenceClassification": "sequence",
    "ModernBertForTokenClassification": "token",
    "ModernBertForQuestionAnswering": "qa",
}
_POOLING: dict[str, ClassifierInput] = {"cls": "first_token", "mean": "mean"}


def _with_task_head(hf: Any, cfg: EncoderConfig, task: Task) -> EncoderConfig:
    """Add the classifier or QA head: the prediction head (dense -> act -> norm) then ``classifier``."""
    act = hf.classifier_activation
    require(act in ACTIVATIONS, ARCH, "classifier_activation", act, ", ".join(ACTIVATIONS))
    norm = _norm(hf)
    if task == "qa":
        return dataclasses.replace(cfg, qa_head=qa_config(hf, ARCH, cfg.architecture, act, norm))
    if task == "sequence":
        pooling = getattr(hf, "classifier_pooling", "cls")
        require(pooling in _POOLING, ARCH, "classifier_pooling", pooling, "'cls', 'mean'")
        head = classifier_config(hf, "sequence", _POOLING[pooling], hidden_act=act)
    else:
        head = classifier_config(hf, "token", hidden_act=act)
    return dataclasses.replace(cfg, classifier=dataclasses.replace(head, hidden_norm=norm))


def _take_task_head(r: WeightReader, out: dict[str, Tensor], prefix: str, norm_bias: bool) -> None:
    dense = r.take("head.dense.weight")
    out[prefix + "W_hidden"] = linear_weight(dense)
    dense_bias = r.take_optional("head.dense.bias")  # classifier_bias=False (the default): none
    out[prefix + "b_hidden"] = dense_bias if dense_bias is not None else torch.zeros(dense.shape[0])
    _take_norm(r, "head.norm", prefix + "ln", norm_bias, out)
    out[prefix + "W"] = linear_weight(r.take("classifier.weight"))
    out[prefix + "b"] = r.take("classifier.bias")


@register(*TASKS, model_types=["modernbert"])
def convert(hf_config: Any, state_dict: Mapping[str, Tensor]) -> tuple[EncoderConfig, dict[str, Tensor]]:
    """Convert a ModernBERT checkpoint; the task head follows the architecture, the MLM head the weights present."""
    check_config_keys(hf_config, ARCH, HANDLED_KEYS, IGNORED_KEYS)
    r = WeightReader(state_dict, ARCH)
    r.strip_prefix("model.")
    archs = list(getattr(hf_config, "architectures", None) or [])
    arch = next((a for a in archs if a in TASKS), archs[0] if archs else "ModernBertModel")
    task = TASKS.get(arch)
    mlm = task is None and r.has("head.dense.weight")
    if not mlm and (r.has("decoder.weight") or r.has("decoder.bias")):
        raise ValueError("modernbert checkpoint has decoder weights but no head.dense; the checkpoint is incomplete")
    emb = r.take("embeddings.tok_embeddings.weight")
    decoder = r.take_optional("decoder.weight") if mlm else None
    tied = decoder is None or decoder.equal(emb)
    if not tied and getattr(hf_config, "tie_word_embeddings", True):
        raise ValueError(
            "modernbert decoder.weight differs from the token embeddings although tie_word_embeddings=True; "
            "HF would tie them. Fix the checkpoint's config (tie_word_embeddings=False) to load the separate decoder"
        )
    cfg = modernbert_config(hf_config, arch, mlm=mlm, tied=tied)
    if task is not None:
        cfg = _with_task_head(hf_config, cfg, task)
    h, nb = cfg.n_heads, cfg.stack.norm.bias
    attn_bias = cfg.stack.attn.qkv_bias
    d_mlp = cfg.stack.mlp.d_mlp
    out: dict[str, Tensor] = {"embed.W_E": emb}
    _take_norm(r, "embeddings.norm", "embed_ln", nb, out)
    for i in range(cfg.n_layers):
        p, o = f"layers.{i}.", f"blocks.{i}."
        if i > 0:
            _take_norm(r, p + "attn_norm", o + "ln1", nb, out)
        wq, wk, wv = r.take(p + "attn.Wqkv.weight").chunk(3, dim=0)
        for ours, w in (("Q", wq), ("K", wk), ("V", wv)):
            out[o + f"attn.W_{ours}"] = head_in_weight(w, h)
        out[o + "attn.W_O"] = head_out_weight(r.take(p + "attn.Wo.weight"), h)
        if attn_bias:
            bq, bk, bv = r.take(p + "attn.Wqkv.bias").chunk(3, dim=0)
            for ours, b in (("Q", bq), ("K", bk), ("V", bv)):
                out[o + f"attn.b_{ours}"] = head_bias(b, h)
            out[o + "attn.b_O"] = r.take(p + "attn.Wo.bias")
        _take_norm(r, p + "mlp_norm", o + "ln2", nb, out)
        wi = r.take(p + "mlp.Wi.weight")
        require(wi.shape[0] == 2 * d_mlp, ARCH, "mlp.Wi rows", wi.shape[0], f"2 * intermediate_size = {2 * d_mlp}")
        out[o + "mlp.W_gate"] = linear_weight(wi[:d_mlp])  # HF: act(first half) * second half
        out[o + "mlp.W_in"] = linear_weight(wi[d_mlp:])
        out[o + "mlp.W_out"] = linear_weight(r.take(p + "mlp.Wo.weight"))
    _take_norm(r, "final_norm", "ln_final", nb, out)
    if mlm:
        dense = r.take("head.dense.weight")
        out["mlm_head.W_transform"] = linear_weight(dense)
        dense_bias = r.take_optional("head.dense.bias")
        out["mlm_head.b_transform"] = dense_bias if dense_bias is not None else torch.zeros(dense.shape[0])
        _take_norm(r, "head.norm", "mlm_head.ln", nb, out)
        if not tied:
            assert decoder is not None
            out["mlm_head.W_U_untied"] = linear_weight(decoder)
        dec_bias = r.take_optional("decoder.bias")
        out["mlm_head.b_U"] = dec_bias if dec_bias is not None else torch.zeros(emb.shape[0])
    if task is not None:
        _take_task_head(r, out, "qa_head." if task == "qa" else "classifier.", nb)
    r.finish()
    return cfg, out
