"""Whisper (``WhisperForConditionalGeneration``, ``WhisperModel``) -> :class:`~encoderlens.models.whisper.HookedWhisper`.

Encoder: log-mel features -> two GELU convs (``conv1``, ``conv2``, stride 2) -> plus the stored sinusoidal
``embed_positions`` -> pre-LN blocks -> ``layer_norm``. Decoder: token embedding plus learned positions (no
offset, no scale: HF's ``embed_scale`` is never applied) -> pre-LN blocks with cross-attention ->
``layer_norm`` -> ``proj_out`` (tied to the token embedding). Attention keys have no bias in HF; ours is a
zero ``b_K``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from encoderlens.config import (
    ACTIVATIONS,
    AttentionConfig,
    EmbeddingConfig,
    LogMelConfig,
    MLPConfig,
    NormConfig,
    StackConfig,
    UnembedConfig,
    WhisperConfig,
)
from encoderlens.convert.common import head_bias, head_in_weight, head_out_weight, linear_weight
from encoderlens.convert.registry import WeightReader, register, require
from encoderlens.convert.seq2seq import eos_ids

ARCH = "whisper"
LN_EPS = 1e-5  # nn.LayerNorm's default, which HF's Whisper uses


def _stack(hf: Any, side: str) -> StackConfig:
    decoder = side == "decoder"
    heads = getattr(hf, f"{side}_attention_heads")
    return StackConfig(
        n_layers=getattr(hf, f"{side}_layers"),
        d_model=hf.d_model,
        attn=AttentionConfig(n_heads=heads, d_head=hf.d_model // heads, causal=decoder),
        mlp=MLPConfig(d_mlp=getattr(hf, f"{side}_ffn_dim"), act_fn=hf.activation_function),
        norm=NormConfig("layernorm", eps=LN_EPS),
        norm_position="pre",
        cross_attention=decoder,
        final_norm=True,
    )


def _check(hf: Any) -> None:
    act = hf.activation_function
    require(act in ACTIVATIONS, ARCH, "activation_function", act, ", ".join(ACTIVATIONS))
    for side in ("encoder", "decoder"):
        heads = getattr(hf, f"{side}_attention_heads")
        require(hf.d_model % heads == 0, ARCH, f"{side}_attention_heads", heads, "a divisor of d_model")
    require(not getattr(hf, "use_weighted_layer_sum", False), ARCH, "use_weighted_layer_sum", True, "False")


def _take_attn(r: WeightReader, out: dict[str, Tensor], n_heads: int, src: str, dst: str) -> None:
    for ours, theirs in (("Q", "q_proj"), ("K", "k_proj"), ("V", "v_proj")):
        out[f"{dst}.W_{ours}"] = head_in_weight(r.take(f"{src}.{theirs}.weight"), n_heads)
    out[f"{dst}.b_Q"] = head_bias(r.take(f"{src}.q_proj.bias"), n_heads)
    out[f"{dst}.b_V"] = head_bias(r.take(f"{src}.v_proj.bias"), n_heads)
    out[f"{dst}.b_K"] = torch.zeros_like(out[f"{dst}.b_Q"])  # HF's k_proj has no bias
    out[f"{dst}.W_O"] = head_out_weight(r.take(f"{src}.out_proj.weight"), n_heads)
    out[f"{dst}.b_O"] = r.take(f"{src}.out_proj.bias")


def _take_ln(r: WeightReader, out: dict[str, Tensor], src: str, dst: str) -> None:
    out[f"{dst}.w"] = r.take(f"{src}.weight")
    out[f"{dst}.b"] = r.take(f"{src}.bias")


def convert_whisper(
    hf_config: Any, state_dict: Mapping[str, Tensor], head: bool | None
) -> tuple[WhisperConfig, dict[str, Tensor]]:
    """Convert a Whisper checkpoint (head None: iff ``proj_out.weight`` is present or the config names one)."""
    _check(hf_config)
    arch_names = getattr(hf_config, "architectures", None) or []
    arch = arch_names[0] if arch_names else "WhisperModel"
    r = WeightReader(state_dict, ARCH)
    if head is None:
        head = r.has("proj_out.weight")
    r.strip_prefix("model.")
    out: dict[str, Tensor] = {}
    out["encoder.stem.W1"] = r.take("encoder.conv1.weight")
    out["encoder.stem.b1"] = r.take("encoder.conv1.bias")
    out["encoder.stem.W2"] = r.take("encoder.conv2.weight")
    out["encoder.stem.b2"] = r.take("encoder.conv2.bias")
    out["encoder.W_pos"] = r.take("encoder.embed_positions.weight")
    embed = r.take("decoder.embed_tokens.weight")
    out["embed.W_E"] = embed
    out["decoder.pos_embed.W_pos"] = r.take("decoder.embed_positions.weight")
    for side in ("encoder", "decoder"):
        heads = getattr(hf_config, f"{side}_attention_heads")
        for i in range(getattr(hf_config, f"{side}_layers")):
            src, dst = f"{side}.layers.{i}", f"{side}.blocks.{i}"
            _take_attn(r, out, heads, f"{src}.self_attn", f"{dst}.attn")
            _take_ln(r, out, f"{src}.self_attn_layer_norm", f"{dst}.ln1")
            # TransformerLens's names: decoder blocks have ln2 (cross-attention) and ln3 (MLP)
            mlp_ln = "ln3" if side == "decoder" else "ln2"
            if side == "decoder":
                _take_attn(r, out, heads, f"{src}.encoder_attn", f"{dst}.cross_attn")
                _take_ln(r, out, f"{src}.encoder_attn_layer_norm", f"{dst}.ln2")
            out[f"{dst}.mlp.W_in"] = linear_weight(r.take(f"{src}.fc1.weight"))
            out[f"{dst}.mlp.b_in"] = r.take(f"{src}.fc1.bias")
            out[f"{dst}.mlp.W_out"] = linear_weight(r.take(f"{src}.fc2.weight"))
            out[f"{dst}.mlp.b_out"] = r.take(f"{src}.fc2.bias")
            _take_ln(r, out, f"{src}.final_layer_norm", f"{dst}.{mlp_ln}")
        _take_ln(r, out, f"{side}.layer_norm", f"{side}.ln_final")
    unembed = None
    if head:
        lm = r.take_optional("proj_out.weight")
        tied = lm is None or lm.equal(embed)
        if not tied:
            assert lm is not None
            out["lm_head.W_U_untied"] = linear_weight(lm)
        unembed = UnembedConfig(tied=tied)
    r.finish()

    n_audio_ctx = out["encoder.W_pos"].shape[0]
    require(
        n_audio_ctx == hf_config.max_source_positions,
        ARCH,
        "max_source_positions",
        hf_config.max_source_positions,
        f"{n_audio_ctx} (the rows of encoder.embed_positions)",
    )
    cfg = WhisperConfig(
        architecture=arch,
        model_type=hf_config.model_type,
        mel=LogMelConfig(n_mels=int(hf_config.num_mel_bins)),
        n_audio_ctx=n_audio_ctx,
        encoder=_stack(hf_config, "encoder"),
        decoder_embed=EmbeddingConfig(
            d_vocab=hf_config.vocab_size,
            n_ctx=out["decoder.pos_embed.W_pos"].shape[0],
            pad_token_id=hf_config.pad_token_id,
        ),
        decoder=_stack(hf_config, "decoder"),
        unembed=unembed,
        decoder_start_token_id=getattr(hf_config, "decoder_start_token_id", None),
        eos_token_ids=eos_ids(hf_config),
        pad_token_id=hf_config.pad_token_id,
        median_filter_width=int(getattr(hf_config, "median_filter_width", 7)),
    )
    return cfg, out


@register("WhisperForConditionalGeneration")
def convert_whisper_lm(hf_config: Any, state_dict: Mapping[str, Tensor]) -> tuple[WhisperConfig, dict[str, Tensor]]:
    """Whisper with its LM head (``proj_out``, tied to the decoder's token embedding)."""
    return convert_whisper(hf_config, state_dict, head=True)


@register("WhisperModel")
def convert_whisper_model(hf_config: Any, state_dict: Mapping[str, Tensor]) -> tuple[WhisperConfig, dict[str, Tensor]]:
    """Whisper without a head: the forward returns the final decoder states."""
    return convert_whisper(hf_config, state_dict, head=False)


@register(model_types=["whisper"])
def convert_whisper_by_weights(
    hf_config: Any, state_dict: Mapping[str, Tensor]
) -> tuple[WhisperConfig, dict[str, Tensor]]:
    """A Whisper config without ``architectures``: the head follows the weights."""
    return convert_whisper(hf_config, state_dict, head=None)
