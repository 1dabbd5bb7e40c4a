"""WavLM (``WavLMModel``, ``WavLMForCTC``) -> :class:`~encoderlens.models.audio_encoder.HookedAudioEncoder`.

WavLM is wav2vec2's layout (conv front end, weight-norm positional conv, post-LN base / pre-LN large with
``do_stable_layer_norm``) with one change in attention: a gated relative position bias. Block 0's
``rel_attn_embed`` (``num_buckets`` x heads, T5 bidirectional buckets up to ``max_bucket_distance``) becomes
the stack's ``position_bias.W_rel``, shared by every block; each block's ``gru_rel_pos_linear`` and
``gru_rel_pos_const`` become its attention's ``W_gate``/``b_gate``/``gate_const``
(:class:`~encoderlens.components.attention_gated.GatedRelativeAttention`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from encoderlens.config import AudioEncoderConfig, RelativePositionConfig
from encoderlens.convert.common import linear_weight
from encoderlens.convert.registry import WeightReader, register, require
from encoderlens.convert.wav2vec2 import audio_encoder_config, convert_audio_body

ARCH = "wavlm"
#: WavLMConfig keys read here, besides wav2vec2's.
HANDLED_KEYS = frozenset({"num_buckets", "max_bucket_distance"})


def wavlm_config(hf: Any, architecture: str, ctc: bool, spec_embed: bool) -> AudioEncoderConfig:
    """wav2vec2's mapping plus the gated relative position bias."""
    require(hf.num_buckets >= 2 and hf.num_buckets % 2 == 0, ARCH, "num_buckets", hf.num_buckets, "an even int >= 2")
    cfg = audio_encoder_config(
        hf, ARCH, architecture, ctc=ctc, quantizer=False, spec_embed=spec_embed, extra_keys=HANDLED_KEYS
    )
    rel = RelativePositionConfig(
        num_buckets=int(hf.num_buckets), max_distance=int(hf.max_bucket_distance), bidirectional=True
    )
    stack = dataclasses.replace(
        cfg.stack, attn=dataclasses.replace(cfg.stack.attn, kind="gated_relative"), relative_position=rel
    )
    return dataclasses.replace(cfg, stack=stack)


@register("WavLMModel", "WavLMForCTC", model_types=["wavlm"])
def convert(hf_config: Any, state_dict: Mapping[str, Tensor]) -> tuple[AudioEncoderConfig, dict[str, Tensor]]:
    """Convert a WavLM checkpoint; the CTC head follows the weights present."""
    r = WeightReader(state_dict, ARCH)
    r.strip_prefix("wavlm.")
    ctc = r.has("lm_head.weight")
    architecture = (getattr(hf_config, "architectures", None) or ["WavLMModel"])[0]
    cfg = wavlm_config(hf_config, architecture, ctc=ctc, spec_embed=r.has("masked_spec_embed"))
    out: dict[str, Tensor] = {}
    convert_audio_body(r, cfg, out)
    out["position_bias.W_rel"] = r.take("encoder.layers.0.attention.rel_attn_embed.weight")
    for i in range(cfg.n_layers):
        p, o = f"encoder.layers.{i}.attention.", f"blocks.{i}.attn."
        out[o + "W_gate"] = linear_weight(r.take(p + "gru_rel_pos_linear.weight"))
        out[o + "b_gate"] = r.take(p + "gru_rel_pos_linear.bias")
        out[o + "gate_const"] = r.take(p + "gru_rel_pos_const").reshape(-1)
    if ctc:
        out["ctc_head.W_U"] = linear_weight(r.take("lm_head.weight"))
        out["ctc_head.b_U"] = r.take("lm_head.bias")
    r.finish()
    return cfg, out
