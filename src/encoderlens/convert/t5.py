"""T5 family -> :class:`~encoderlens.models.encoder_decoder.HookedEncoderDecoder`.

Covers T5 v1.0 (``feed_forward_proj="relu"``, tied head with ``d_model**-0.5`` output scaling),
T5 v1.1 / Flan-T5 (``"gated-gelu"``, untied ``lm_head``) and mT5, as ``*ForConditionalGeneration``,
``*Model`` (no head) and ``*EncoderModel`` (encoder only).

Tied duplicates are checked, not dropped: ``encoder.embed_tokens.weight``, ``decoder.embed_tokens.weight``
and a tied ``lm_head.weight`` must equal ``shared.weight``. A ``lm_head.weight`` that differs is an untied
head (as HF treats it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from encoderlens.config import (
    AttentionConfig,
    EmbeddingConfig,
    EncoderDecoderConfig,
    MLPConfig,
    NormConfig,
    RelativePositionConfig,
    StackConfig,
    UnembedConfig,
)
from encoderlens.convert.common import head_in_weight, head_out_weight, linear_weight
from encoderlens.convert.registry import WeightReader, check_config_keys, register, require
from encoderlens.convert.seq2seq import arch_name, eos_ids, take_lm_head, take_tied

#: feed_forward_proj values we implement -> (gated, activation). HF maps "gated-gelu" to the tanh
#: approximation ("gelu_new"), which is what the original checkpoints were trained with.
FEED_FORWARD = {
    "relu": (False, "relu"),
    "gated-gelu": (True, "gelu_new"),
    "gated-gelu_new": (True, "gelu_new"),
}


#: T5Config / MT5Config keys this converter reads.
HANDLED_KEYS = frozenset(
    {
        "vocab_size",
        "d_model",
        "d_kv",
        "d_ff",
        "num_layers",
        "num_decoder_layers",
        "num_heads",
        "relative_attention_num_buckets",
        "relative_attention_max_distance",
        "layer_norm_epsilon",
        "feed_forward_proj",
        "dense_act_fn",  # derived from feed_forward_proj
        "is_gated_act",  # derived from feed_forward_proj
        "tie_word_embeddings",
        "scale_decoder_outputs",
        "pad_token_id",
        "decoder_start_token_id",
        "is_decoder",  # HF sets it per stack itself
    }
)
#: Keys without effect in eval mode; ``n_positions`` is a legacy key of the original releases (T5 has
#: no absolute positions).
IGNORED_KEYS = frozenset({"dropout_rate", "classifier_dropout", "n_positions"})


def t5_stack(hf: Any, n_layers: int, decoder: bool) -> StackConfig:
    """One T5 stack: pre-LN RMSNorm blocks, no biases, unscaled attention, shared relative bias."""
    proj = hf.feed_forward_proj
    gated, act = FEED_FORWARD[proj]
    norm = NormConfig("rmsnorm", eps=hf.layer_norm_epsilon, bias=False)
    return StackConfig(
        n_layers=n_layers,
        d_model=hf.d_model,
        # T5 folds 1/sqrt(d_head) into its initialisation: scores are plain q.k
        attn=AttentionConfig(
            n_heads=hf.num_heads, d_head=hf.d_kv, causal=decoder, qkv_bias=False, out_bias=False, scale=1.0
        ),
        mlp=MLPConfig(d_mlp=hf.d_ff, act_fn=act, gated=gated, bias=False, out_float32_in_fp16=True),
        norm=norm,
        norm_position="pre",
        cross_attention=decoder,
        final_norm=True,
        relative_position=RelativePositionConfig(
            num_buckets=hf.relative_attention_num_buckets,
            max_distance=hf.relative_attention_max_distance,
            bidirectional=not decoder,
        ),
    )


def _check_config(hf: Any, arch: str) -> None:
    check_config_keys(hf, hf.model_type, HANDLED_KEYS, IGNORED_KEYS)
    proj = getattr(hf, "feed_forward_proj", None)
    require(proj in FEED_FORWARD, arch, "feed_forward_proj", proj, ", ".join(FEED_FORWARD))
    require(hf.num_heads >= 1 and hf.d_kv >= 1, arch, "num_heads/d_kv", (hf.num_heads, hf.d_kv), "positive sizes")
    buckets = hf.relative_attention_num_buckets
    require(buckets >= 4, arch, "relative_attention_num_buckets", buckets, ">= 4")
    require(
        hf.relative_attention_max_distance > buckets // 4,
        arch,
        "relative_attention_max_distance",
        hf.relative_attention_max_distance,
        "> relative_attention_num_buckets // 4",
    )


def _take_layer(r: WeightReader, out: dict[str, Tensor], n_heads: int, gated: bool, src: str, dst: str) -> None:
    """One T5 block: ``layer.0`` self-attention, (decoder) ``layer.1`` cross-attention, last layer the MLP."""
    # (HF sub-layer index, HF attention name, our attention, our norm)
    attn_parts = [(0, "SelfAttention", "attn", "ln1")]
    if dst.startswith("decoder"):
        attn_parts.append((1, "EncDecAttention", "cross_attn", "ln2"))
    for j, theirs, ours, ln in attn_parts:
        p = f"{src}.layer.{j}"
        for w in ("q", "k", "v"):
            out[f"{dst}.{ours}.W_{w.upper()}"] = head_in_weight(r.take(f"{p}.{theirs}.{w}.weight"), n_heads)
        out[f"{dst}.{ours}.W_O"] = head_out_weight(r.take(f"{p}.{theirs}.o.weight"), n_heads)
        out[f"{dst}.{ln}.w"] = r.take(f"{p}.layer_norm.weight")
    ff = f"{src}.layer.{len(attn_parts)}"
    if gated:
        # act(wi_0 x) * (wi_1 x): wi_0 is the gate, wi_1 the linear branch
        out[f"{dst}.mlp.W_gate"] = linear_weight(r.take(f"{ff}.DenseReluDense.wi_0.weight"))
        out[f"{dst}.mlp.W_in"] = linear_weight(r.take(f"{ff}.DenseReluDense.wi_1.weight"))
    else:
        out[f"{dst}.mlp.W_in"] = linear_weight(r.take(f"{ff}.DenseReluDense.wi.weight"))
    out[f"{dst}.mlp.W_out"] = linear_weight(r.take(f"{ff}.DenseReluDense.wo.weight"))
    # TransformerLens's names: ln2 is the cross-attention norm in decoder blocks, ln3 their MLP norm
    out[f"{dst}.{'ln3' if len(attn_parts) > 1 else 'ln2'}.w"] = r.take(f"{ff}.layer_norm.weight")


def convert_t5(
    hf_config: Any,
    state_dict: Mapping[str, Tensor],
    head: bool | None,
    decoder: bool | None,
    default_scale: bool | None,
) -> tuple[EncoderDecoderConfig, dict[str, Tensor]]:
    """Convert a T5-family checkpoint.

    Args:
        head: Whether an LM head exists (None: iff ``lm_head.weight`` is in the checkpoint).
        decoder: Whether a decoder exists (None: iff decoder weights are in the checkpoint).
        default_scale: Whether a tied head rescales by ``d_model**-0.5`` when the config has no
            ``scale_decoder_outputs`` (None: ``tie_word_embeddings``, the transformers 4 rule).
    """
    arch = arch_name(hf_config)
    _check_config(hf_config, arch)
    r = WeightReader(state_dict, hf_config.model_type)
    if decoder is None:
        decoder = r.has("decoder.final_layer_norm.weight")
    if head is None:
        head = r.has("lm_head.weight")
    if head and not decoder:
        raise ValueError(f"{arch} checkpoint has an lm_head but no decoder weights; the checkpoint is incomplete")
    n_dec = hf_config.num_decoder_layers if hf_config.num_decoder_layers is not None else hf_config.num_layers
    gated = FEED_FORWARD[hf_config.feed_forward_proj][0]
    n_heads = hf_config.num_heads

    out: dict[str, Tensor] = {}
    shared = r.take("shared.weight")
    out["embed.W_E"] = shared
    take_tied(r, "encoder.embed_tokens.weight", shared, arch)
    stacks = [("encoder", hf_config.num_layers)] + ([("decoder", n_dec)] if decoder else [])
    for side, n in stacks:
        out[f"{side}.position_bias.W_rel"] = r.take(
            f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        )
        for i in range(n):
            _take_layer(r, out, n_heads, gated, f"{side}.block.{i}", f"{side}.blocks.{i}")
        out[f"{side}.ln_final.w"] = r.take(f"{side}.final_layer_norm.weight")
    unembed = None
    if decoder:
        take_tied(r, "decoder.embed_tokens.weight", shared, arch)
        # old checkpoints carry a cross-attention bias table that T5 never reads (HF ignores it on load)
        r.take_optional("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight")
    if head:
        tied = take_lm_head(r, out, shared)
        scale_flag = getattr(hf_config, "scale_decoder_outputs", None)
        if scale_flag is None:
            scale_flag = hf_config.tie_word_embeddings if default_scale is None else default_scale
        unembed = UnembedConfig(tied=tied, scale=hf_config.d_model**-0.5 if scale_flag else 1.0)
    r.finish()

    pad = getattr(hf_config, "pad_token_id", None)
    embed = EmbeddingConfig(d_vocab=hf_config.vocab_size, pad_token_id=pad)
    start = getattr(hf_config, "decoder_start_token_id", None)
    cfg = EncoderDecoderConfig(
        architecture=arch,
        model_type=hf_config.model_type,
        encoder_embed=embed,
        encoder=t5_stack(hf_config, hf_config.num_layers, decoder=False),
        decoder_embed=embed if decoder else None,
        decoder=t5_stack(hf_config, n_dec, decoder=True) if decoder else None,
        unembed=unembed,
        # T5 starts decoding from the pad token when the config does not say otherwise
        decoder_start_token_id=start if start is not None else pad,
        eos_token_ids=eos_ids(hf_config),
        pad_token_id=pad,
    )
    return cfg, out


@register("T5ForConditionalGeneration")
def convert_t5_lm(hf_config: Any, state_dict: Mapping[str, Tensor]) -> tuple[EncoderDecoderConfig, dict[str, Tensor]]:
    """T5 with an LM head (tied unless ``lm_head.weight`` differs from ``shared.weight``)."""
    return convert_t5(hf_config, state_dict, head=True, decoder=True, default_scale=None)


@register("T5Model")
def convert_t5_model(
    hf_config: Any, state_dict: Mapping[str, Tensor]
) -> tuple[EncoderDecoderConfig, dict[str, Tensor]]:
    """T5 without a head: the forward returns the final decoder states."""
    return convert_t5(hf_config, state_dict, head=False, decoder=True, default_scale=None)


@register("T5EncoderModel", "MT5EncoderModel")
def convert_t5_encoder(
    hf_config: Any, state_dict: Mapping[str, Tensor]
) -> tuple[EncoderDecoderConfig, dict[str, Tensor]]:
    """Encoder-only T5 / mT5: a model with ``decoder = None`` whose forward returns the encoder output."""
    return convert_t5(hf_config, state_dict, head=False, decoder=False, default_scale=None)


@register(model_types=["t5"])
def convert_t5_by_weights(
    hf_config: Any, state_dict: Mapping[str, Tensor]
) -> tuple[EncoderDecoderConfig, dict[str, Tensor]]:
    """A T5 config without ``architectures`` (e.g. a freshly built HF model): parts follow the weights."""
    return convert_t5(hf_config, state_dict, head=None, decoder=None, default_scale=None)


# transformers >= 5 never rescales mT5's decoder output (real mT5 heads are untied, so every version agrees)
@register("MT5ForConditionalGeneration")
def convert_mt5_lm(hf_config: Any, state_dict: Mapping[str, Tensor]) -> tuple[EncoderDecoderConfig, dict[str, Tensor]]:
    """mT5 with an LM head."""
    return convert_t5(hf_config, state_dict, head=True, decoder=True, default_scale=False)


@register("MT5Model")
def convert_mt5_model(
    hf_config: Any, state_dict: Mapping[str, Tensor]
) -> tuple[EncoderDecoderConfig, dict[str, Tensor]]:
    """mT5 without a head."""
    return convert_t5(hf_config, state_dict, head=False, decoder=True, default_scale=False)


@register(model_types=["mt5"])
def convert_mt5_by_weights(
    hf_config: Any, state_dict: Mapping[str, Tensor]
) -> tuple[EncoderDecoderConfig, dict[str, Tensor]]:
    """An mT5 config without ``architectures``: parts follow the weights."""
    return convert_t5(hf_config, state_dict, head=None, decoder=None, default_scale=False)
