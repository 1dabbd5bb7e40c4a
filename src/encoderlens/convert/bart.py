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
from collections.abc import Mapping
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
from encoderlens.convert.common import LayerNames, head_out_weight, take_heads_in, take_layer, take_norm
from encoderlens.convert.registry import WeightReader, check_config_keys, register, require
from encoderlens.convert.seq2seq import arch_name, eos_ids, take_lm_head, take_tied

#: HF BART layer norms are nn.LayerNorm with the default eps.
LN_EPS = 1e-5

#: One BART layer: self-attention, its norm, the MLP and its norm (the decoder adds cross-attention).
LAYER_NAMES = LayerNames(
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.out_proj",
    ln1="self_attn_layer_norm",
    mlp_in="fc1",
    mlp_out="fc2",
    ln2="final_layer_norm",
)

#: BartConfig / MBartConfig keys this converter reads.
HANDLED_KEYS = frozenset(
    {
        "vocab_size",
        "d_model",
        "encoder_layers",
        "decoder_layers",
        "encoder_attention_heads",
        "decoder_attention_heads",
        "encoder_ffn_dim",
        "decoder_ffn_dim",
        "activation_function",
        "max_position_embeddings",
        "scale_embedding",
        "pad_token_id",
        "decoder_start_token_id",
        "normalize_before",
        "add_final_layer_norm",
        "add_bias_logits",
        "tie_word_embeddings",
        "is_decoder",  # HF sets it per stack itself
    }
)
#: Keys without effect in eval mode, and fairseq-era keys HF's BART / mBART never read (the
#: embedding norm and learned positions with offset 2 are hard-coded; ``num_hidden_layers`` mirrors
#: ``encoder_layers``).
IGNORED_KEYS = frozenset(
    {
        "dropout",
        "attention_dropout",
        "activation_dropout",
        "classifier_dropout",
        "classif_dropout",
        "encoder_layerdrop",
        "decoder_layerdrop",
        "init_std",
        "num_hidden_layers",
        "normalize_embedding",
        "static_position_embeddings",
        "extra_pos_embeddings",
        "force_bos_token_to_be_generated",
    }
)


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


def _check_config(
    hf: Any,
    arch: str,
    pre_ln: bool,
    handled: frozenset[str] = HANDLED_KEYS,
    ignored: frozenset[str] = IGNORED_KEYS,
) -> None:
    check_config_keys(hf, hf.model_type, handled, ignored)
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


def _take_cross_attn(r: WeightReader, out: dict[str, Tensor], n_heads: int, src: str, dst: str) -> None:
    for w in ("q", "k", "v"):
        take_heads_in(r, out, f"{src}encoder_attn.{w}_proj", dst + "cross_attn.{}_" + w.upper(), n_heads)
    out[dst + "cross_attn.W_O"] = head_out_weight(r.take(src + "encoder_attn.out_proj.weight"), n_heads)
    out[dst + "cross_attn.b_O"] = r.take(src + "encoder_attn.out_proj.bias")
    take_norm(r, out, src + "encoder_attn_layer_norm", dst + "ln2")


def convert_bart(
    hf_config: Any, state_dict: Mapping[str, Tensor], mbart: bool, head: bool | None
) -> tuple[EncoderDecoderConfig, dict[str, Tensor]]:
    """Convert a BART or mBART checkpoint.

    Args:
        mbart: mBART layout: pre-LN blocks, final norms, language-id decoder shift.
        head: Whether an LM head exists (None: iff ``lm_head.weight`` or ``final_logits_bias`` is present).
    """
    pre_ln = mbart
    arch = arch_name(hf_config)
    _check_config(hf_config, arch, pre_ln)
    r = WeightReader(state_dict, hf_config.model_type)
    if head is None:
        head = r.has("lm_head.weight") or r.has("final_logits_bias")
    r.strip_prefix("model.")
    out: dict[str, Tensor] = {}
    shared = r.take("shared.weight")
    out["embed.W_E"] = shared
    for side in ("encoder", "decoder"):
        take_tied(r, f"{side}.embed_tokens.weight", shared, arch)
        out[f"{side}.pos_embed.W_pos"] = r.take(f"{side}.embed_positions.weight")
        take_norm(r, out, f"{side}.layernorm_embedding", f"{side}.embed_ln")
        n_layers = getattr(hf_config, f"{side}_layers")
        heads = getattr(hf_config, f"{side}_attention_heads")
        for i in range(n_layers):
            src, dst = f"{side}.layers.{i}.", f"{side}.blocks.{i}."
            take_layer(r, out, src, dst, heads, LAYER_NAMES)
            if side == "decoder":
                # TransformerLens's names: decoder blocks have ln2 (cross-attention) and ln3 (MLP)
                for key in [k for k in out if k.startswith(dst + "ln2.")]:
                    out[dst + "ln3." + key[len(dst + "ln2.") :]] = out.pop(key)
                _take_cross_attn(r, out, heads, src, dst)
        if pre_ln:
            take_norm(r, out, f"{side}.layer_norm", f"{side}.ln_final")
    unembed = None
    if head:
        tied = take_lm_head(r, out, shared)
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
def convert_bart_lm(hf_config: Any, state_dict: Mapping[str, Tensor]) -> tuple[EncoderDecoderConfig, dict[str, Tensor]]:
    """BART with its LM head (tied to the embedding, plus ``final_logits_bias``)."""
    return convert_bart(hf_config, state_dict, mbart=False, head=True)


@register("BartModel")
def convert_bart_model(
    hf_config: Any, state_dict: Mapping[str, Tensor]
) -> tuple[EncoderDecoderConfig, dict[str, Tensor]]:
    """BART without a head: the forward returns the final decoder states."""
    return convert_bart(hf_config, state_dict, mbart=False, head=False)


@register(model_types=["bart"])
def convert_bart_by_weights(
    hf_config: Any, state_dict: Mapping[str, Tensor]
) -> tuple[EncoderDecoderConfig, dict[str, Tensor]]:
    """A BART config without ``architectures``: the head follows the weights."""
    return convert_bart(hf_config, state_dict, mbart=False, head=None)


@register("MBartForConditionalGeneration")
def convert_mbart_lm(
    hf_config: Any, state_dict: Mapping[str, Tensor]
) -> tuple[EncoderDecoderConfig, dict[str, Tensor]]:
    """mBART with its LM head."""
    return convert_bart(hf_config, state_dict, mbart=True, head=True)


@register("MBartModel")
def convert_mbart_model(
    hf_config: Any, state_dict: Mapping[str, Tensor]
) -> tuple[EncoderDecoderConfig, dict[str, Tensor]]:
    """mBART without a head."""
    return convert_bart(hf_config, state_dict, mbart=True, head=False)


@register(model_types=["mbart"])
def convert_mbart_by_weights(
    hf_config: Any, state_dict: Mapping[str, Tensor]
) -> tuple[EncoderDecoderConfig, dict[str, Tensor]]:
    """An mBART config without ``architectures``: the head follows the weights."""
    return convert_bart(hf_config, state_dict, mbart=True, head=None)
