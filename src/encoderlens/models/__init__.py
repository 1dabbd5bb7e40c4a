"""Model families, listed explicitly in :data:`FAMILIES` (the table the generic loader reads)."""

from __future__ import annotations

import os
from typing import Any

import torch

from encoderlens.models.audio_encoder import AudioEncoderOutput, HookedAudioEncoder, Transcription
from encoderlens.models.base import HookedModel, load_pretrained, resolve_tl_keywords
from encoderlens.models.encoder import EncoderOutput, HookedEncoder
from encoderlens.models.encoder_decoder import EncoderDecoderOutput, HookedEncoderDecoder
from encoderlens.models.mask_fill import MaskPrediction
from encoderlens.models.placement import DeviceLike, DeviceMap
from encoderlens.models.whisper import HookedWhisper

#: ``family -> model class``: the converted config's ``family`` picks the class. A new family is one
#: more entry here.
FAMILIES: dict[str, type[HookedModel]] = {
    cls.family: cls for cls in (HookedEncoder, HookedAudioEncoder, HookedEncoderDecoder, HookedWhisper)
}


def from_pretrained(
    name_or_path: str | os.PathLike[str] | None = None,
    hf_model: Any = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    *,
    revision: str | None = None,
    move_to_device: bool = True,
    torch_dtype: torch.dtype | None = None,
    device_map: DeviceMap | None = None,
    max_memory: dict[DeviceLike, int | str] | None = None,
    **extras: Any,
) -> Any:
    """Load any supported checkpoint; the model class follows the checkpoint's family.

    Args:
        name_or_path: Hub name, local folder, or ``"default"`` / None for the embedded model.
        hf_model: An already-loaded ``transformers`` model (its weights are converted).
        device: Where to put the model.
        dtype: Parameter dtype (float32 for parity work).
        revision: Hub revision of a hub name.
        move_to_device: False keeps the model on the CPU (TransformerLens keyword).
        torch_dtype: Alias of ``dtype``.
        device_map: Spread the model over several devices: ``"auto"`` / ``"balanced"`` / ``"sequential"``
            (sized from ``max_memory``), a dict of module prefix -> device (``{"embed": 0, "blocks.0": 0,
            "blocks.1": 1, ..., "mlm_head": 0}``), or one device. Each weight is copied straight to its
            device; ``model.hf_device_map`` reports the placement. See docs/performance.md.
        max_memory: Per-device limits for the strategies (``{0: "20GiB", 1: "20GiB", "cpu": "100GiB"}``).
        **extras: Override loaded extras, e.g. ``tokenizer=...`` (see :meth:`HookedModel.from_pretrained`).

    Example:
        >>> model = encoderlens.models.from_pretrained("default")
    """
    dtype = resolve_tl_keywords(extras, dtype, torch_dtype)
    return load_pretrained(
        name_or_path,
        FAMILIES,
        hf_model,
        device if move_to_device else None,
        dtype,
        revision,
        device_map=device_map,
        max_memory=max_memory,
        **extras,
    )


__all__ = [
    "FAMILIES",
    "AudioEncoderOutput",
    "EncoderDecoderOutput",
    "EncoderOutput",
    "HookedAudioEncoder",
    "HookedEncoder",
    "HookedEncoderDecoder",
    "HookedWhisper",
    "MaskPrediction",
    "Transcription",
    "from_pretrained",
]
