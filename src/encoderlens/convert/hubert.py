"""HuBERT (``HubertModel``, ``HubertForCTC``) -> :class:`HookedAudioEncoder`.

HuBERT shares wav2vec2's layout (conv front end, weight-norm positional conv, post-LN base / pre-LN
large encoders) with two extra options handled here through the shared config mapping:
``feat_proj_layer_norm`` (a LayerNorm before the feature projection, or none) and
``conv_pos_batch_norm`` (BatchNorm + plain conv instead of the weight-norm positional conv).
A CTC head is taken if ``lm_head.*`` exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from encoderlens.config import AudioEncoderConfig
from encoderlens.convert.registry import register
from encoderlens.convert.wav2vec2 import convert_audio_checkpoint


@register("HubertModel", "HubertForCTC", model_types=["hubert"])
def convert(hf_config: Any, state_dict: Mapping[str, Tensor]) -> tuple[AudioEncoderConfig, dict[str, Tensor]]:
    """Convert a HuBERT checkpoint; the CTC head follows the weights present."""
    return convert_audio_checkpoint(hf_config, state_dict, "hubert", "hubert.", "HubertModel")
