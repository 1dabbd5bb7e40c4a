"""BART / mBART -> :class:`~encoderlens.models.encoder_decoder.HookedEncoderDecoder`.

BART: post-LN blocks, learned positions with offset 2, ``layernorm_embedding`` on each side's embedding
sum, token embeddings times ``sqrt(d_model)`` when ``scale_embedding``, logits plus ``final_logits_bias``.
mBART: the same with pre-LN blocks and a final ``layer_norm`` in encoder and decoder; decoder inputs
are made from targets by moving the last target token (the language id) to the front.

Tied duplicates are checked, not dropped: ``encoder.embed_tokens.weight``, ``decoder.embed_tokens.weight``
and a tied ``lm_head.weight`` must equal ``shared.weight``.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from encoderlens.config import (
    ACTIVATIONS,
    AttentionConfig,
    EmbeddingConfig,
    EncoderDecoderConfig,
    MLPConfig,
    NormConfig,
    StackConfig,
    UnembedConfig,
)
from encoderlens.convert.common import head_bias, head_in_weight, head_out_weight, linear_weight
from encoderlens.convert.registry import WeightReader, register, require
from encoderlens.convert.t5 import eos_ids

#: HF BART layer norms are nn.LayerNorm with the default eps.
LN_EPS = 1e-5


def _stack(hf: Any, pre_ln: bool, decoder: bool) -> StackConfig:
    side = "decoder" if decoder else "encoder"
    heads = getattr(hf, f"{side}_attention_heads")
    norm = NormConfig("layernorm", eps=LN_EPS)
    return StackConfig(
        n_layers=getattr(hf, f"{side}_layers"),
        d_model=hf.d_model,
        attn=AttentionConfig(n_heads=heads, d_head=hf.d_model // heads, causal=decoder),
        mlp=MLPConfig(d_mlp=getattr(hf, f"{side}_ffn_dim"), act_fn=hf.activation_function),
        norm=norm,
        norm_position="pre" if pre_ln else "post",
        cross_attention=decoder,
        final_norm=pre_ln,
    )


def _check_config(hf: Any, arch: str, pre_ln: bool) -> None:
    act = hf.activation_function
    require(act in ACTIVATIONS, arch, "activation_function", act, ", ".join(ACTIVATIONS))
    for side in ("encoder", "decoder"):
        heads = getattr(hf, f"{side}_attention_heads")
        require(hf.d_model % heads == 0, arch, f"{side}_attention_heads", heads, "a divisor of d_model")
    # fairseq-era flags some configs still carry; HF's modeling hard-codes their value for this architecture
    for flag, expected in (("normalize_before", pre_ln), ("add_final_layer_norm", pre_ln)):
        value = getattr(hf, flag, None)
        require(value is None or bool(value) == expected, arch, flag, value, f"{expected} for {hf.model_type}")
    require(not getattr(hf, "add_bias_logits", False), arch, "add_bias_logits", True, "False (final_logits_bias only)")


def _take_attn(r: WeightReader, out: dict[str, Tensor], n_heads: int, src: str, dst: str) -> None:
    for ours, theirs in (("Q", "q_proj"), ("K", "k_proj"), ("V", "v_proj")):
        out[f"{dst}.W_{ours}"] = head_in_weight(r.take(f"{src}.{theirs}.weight"), n_heads)
        out[f"{dst}.b_{ours}"] = head_bias(r.take(f"{src}.{theirs}.bias"), n_heads)
    out[f"{dst}.W_O"] = head_out_weight(r.take(f"{src}.out_proj.weight"), n_heads)
    out[f"{dst}.b_O"] = r.take(f"{src}.out_proj.bias")


def _take_ln(r: WeightReader, out: dict[str, Tensor], src: str, dst: str) -> None:
    out[f"{dst}.w"] = r.take(f"{src}.weight")
    out[f"{dst}.b"] = r.take(f"{src}.bias")


def _take_tied(r: WeightReader, key: str, shared: Tensor, arch: str) -> None:
    t = r.take_optional(key)
    if t is not None and not t.equal(shared):
        raise ValueError(
            f"{arch} checkpoint has {key} different from shared.weight; untied input embeddings are not supported "
            "(encoderlens shares one token embedding between encoder and decoder, as BART does)"
        )


def convert_bart(
    hf_config: Any, state_dict: dict[str, Tensor], mbart: bool, head: bool | None
) -> tuple[EncoderDecoderConfig, dict[str, Tensor]]:
    """Convert a BART or mBART checkpoint.

    Args:
        mbart: mBART layout: pre-LN blocks, final norms, language-id decoder shift.
        head: Whether an LM head exists (None: iff ``lm_head.weight`` or ``final_logits_bias`` is present).
    """
    pre_ln = mbart
    arch_names = getattr(hf_config, "architectures", None) or []
    arch = arch_names[0] if arch_names else hf_config.model_type
    _check_config(hf_config, arch, pre_ln)
    r = WeightReader(state_dict, hf_config.model_type)
    if head is None:
        head = r.has("lm_head.weight") or r.has("final_logits_bias")
    r.strip_prefix("model.")
    out: dict[str, Tensor] = {}
    shared = r.take("shared.weight")
    out["embed.W_E"] = shared
    for side in ("encoder", "decoder"):
        _take_tied(r, f"{side}.embed_tokens.weight", shared, arch)
        out[f"{side}.pos_embed.W_pos"] = r.take(f"{side}.embed_positions.weight")
        _take_ln(r, out, f"{side}.layernorm_embedding", f"{side}.embed_ln")
        n_layers = getattr(hf_config, f"{side}_layers")
        heads = getattr(hf_config, f"{side}_attention_heads")
        for i in range(n_layers):
            src, dst = f"{side}.layers.{i}", f"{side}.blocks.{i}"
            _take_attn(r, out, heads, f"{src}.self_attn", f"{dst}.attn")
            _take_ln(r, out, f"{src}.self_attn_layer_norm", f"{dst}.ln1")
            if side == "decoder":
                _take_attn(r, out, heads, f"{src}.encoder_attn", f"{dst}.cross_attn")
                _take_ln(r, out, f"{src}.encoder_attn_layer_norm", f"{dst}.ln2")
            out[f"{dst}.mlp.W_in"] = linear_weight(r.take(f"{src}.fc1.weight"))
            out[f"{dst}.mlp.b_in"] = r.take(f"{src}.fc1.bias")
            out[f"{dst}.mlp.W_out"] = linear_weight(r.take(f"{src}.fc2.weight"))
            out[f"{dst}.mlp.b_out"] = r.take(f"{src}.fc2.bias")
            # TransformerLens's names: decoder blocks have ln2 (cross-attention) and ln3 (MLP)
            _take_ln(r, out, f"{src}.final_layer_norm", f"{dst}.{'ln3' if side == 'decoder' else 'ln2'}")
        if pre_ln:
            _take_ln(r, out, f"{side}.layer_norm", f"{side}.ln_final")
    unembed = None
    if head:
        lm = r.take_optional("lm_head.weight")
        tied = lm is None or lm.equal(shared)
        if not tied:
            assert lm is not None
            out["lm_head.W_U_untied"] = linear_weight(lm)
        bias = r.take_optional("final_logits_bias")
        if bias is not None:
            out["lm_head.b_U"] = bias.reshape(-1)
        unembed = UnembedConfig(tied=tied, scale=1.0, bias=bias is not None)
    r.finish()

    max_pos = hf_config.max_position_embeddings
    n_ctx = out["encoder.pos_embed.W_pos"].shape[0]
    # HF's learned-position table has 2 extra rows (a fairseq padding-offset legacy)
    require(n_ctx == max_pos + 2, arch, "max_position_embeddings", max_pos, f"{n_ctx - 2} (the table's rows - 2)")
    embed = EmbeddingConfig(
        d_vocab=hf_config.vocab_size,
        n_ctx=n_ctx,
        position_offset=2,
        norm=NormConfig("layernorm", eps=LN_EPS),
        scale=math.sqrt(hf_config.d_model) if hf_config.scale_embedding else 1.0,
        pad_token_id=hf_config.pad_token_id,
    )
    cfg = EncoderDecoderConfig(
        architecture=arch,
        model_type=hf_config.model_type,
        encoder_embed=embed,
        encoder=_stack(hf_config, pre_ln, decoder=False),
        decoder_embed=embed,
        decoder=_stack(hf_config, pre_ln, decoder=True),
        unembed=unembed,
        decoder_start_token_id=getattr(hf_config, "decoder_start_token_id", None),
        eos_token_ids=eos_ids(hf_config),
        pad_token_id=hf_config.pad_token_id,
        decoder_shift="wrap_last_token" if mbart else "start_token",
    )
    return cfg, out


@register("BartForConditionalGeneration")
def convert_bart_lm(hf_config: Any, state_dict: dict[str, Tensor]) -> tuple[EncoderDecoderConfig, dict[str, Tensor]]:
    """BART with its LM head (tied to the embedding, plus ``final_logits_bias``)."""
    return convert_bart(hf_config, state_dict, mbart=False, head=True)


@register("BartModel")
def convert_bart_model(hf_config: Any, state_dict: dict[str, Tensor]) -> tuple[EncoderDecoderConfig, dict[str, Tensor]]:
    """BART without a head: the forward returns the final decoder states."""
    return convert_bart(hf_config, state_dict, mbart=False, head=False)


@register(model_types=["bart"])
def convert_bart_by_weights(
    hf_config: Any, state_dict: dict[str, Tensor]
) -> tuple[EncoderDecoderConfig, dict[str, Tensor]]:
    """A BART config without ``architectures``: the head follows the weights."""
    return convert_bart(hf_config, state_dict, mbart=False, head=None)


@register("MBartForConditionalGeneration")
def convert_mbart_lm(hf_config: Any, state_dict: dict[str, Tensor]) -> tuple[EncoderDecoderConfig, dict[str, Tensor]]:
    """mBART with its LM head."""
    return convert_bart(hf_config, state_dict, mbart=True, head=True)


@register("MBartModel")
def convert_mbart_model(
    hf_config: Any, state_dict: dict[str, Tensor]
) -> tuple[EncoderDecoderConfig, dict[str, Tensor]]:
    """mBART without a head."""
    return convert_bart(hf_config, state_dict, mbart=True, head=False)


@register(model_types=["mbart"])
def convert_mbart_by_weights(
    hf_config: Any, state_dict: dict[str, Tensor]
) -> tuple[EncoderDecoderConfig, dict[str, Tensor]]:
    """An mBART config without ``architectures``: the head follows the weights."""
    return convert_bart(hf_config, state_dict, mbart=True, head=None)
