"""The speech encoder from projected frames on, and TransformerLens's frame API on it.

TransformerLens's ``HookedAudioEncoder`` splits a forward in two: ``to_frames(audio) -> (frames, frame_mask)``
(conv front end and feature projection) and ``encoder_output(frames, mask)`` (positional conv, norm,
blocks). :class:`AudioFrames` gives the same split, on top of the one frames-onward path every forward uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from encoderlens.components.attention import build_additive_mask
from encoderlens.components.audio_frontend import AudioFrontend, frame_mask_from_lengths
from encoderlens.components.stack import run_blocks
from encoderlens.config import AudioEncoderConfig
from encoderlens.hooks import HookPoint
from encoderlens.io.audio import AudioBatch, AudioInput
from encoderlens.models.base import HookedModel


class AudioFrames(HookedModel):
    """Frames onward (:meth:`_run_frames`), ``to_frames``, ``encoder_output`` and ``processor``."""

    cfg: AudioEncoderConfig
    feature_extractor: Any
    frontend: AudioFrontend
    hook_projected: HookPoint
    hook_pos_conv: HookPoint
    embed_ln: nn.Module | None
    hook_full_embed: HookPoint
    blocks: nn.ModuleList
    ln_final: nn.Module | None
    prepare: Callable[..., AudioBatch]

    def _run_frames(
        self,
        x: Float[Tensor, "batch frames d_model"],
        attn_mask: Bool[Tensor, "batch frames"] | None,
        mask_time_indices: Any = None,
        stop_at_layer: int | None = None,
    ) -> Float[Tensor, "batch frames d_model"]:
        """Projected frames -> (time masking, zeroed padding) ``hook_projected`` -> positional conv -> blocks."""
        if mask_time_indices is not None:
            x = self._apply_time_mask(x, mask_time_indices)
        if attn_mask is not None:
            # HF zeroes padded frames before the positional conv
            x = torch.where(attn_mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        x = self.hook_projected(x)
        x = x + self.hook_pos_conv(self.frontend.pos_conv(x))
        if self.embed_ln is not None:
            x = self.embed_ln(x)
        x = self.hook_full_embed(x)
        n_frames = x.shape[1]
        additive = build_additive_mask(attn_mask, n_frames, n_frames, False, x.dtype, x.device)
        return run_blocks(self.blocks, x, additive_mask=additive, stop_at_layer=stop_at_layer, final_norm=self.ln_final)

    # ------------------------------------------------------------------ TransformerLens's frame API
    @property
    def processor(self) -> Any:
        """The checkpoint's HF feature extractor (TransformerLens's ``processor``)."""
        if self.feature_extractor is None:
            raise AttributeError(
                "this model was loaded without a feature extractor (no preprocessor_config.json); "
                "its preprocessing settings are model.preprocessing"
            )
        return self.feature_extractor

    def to_frames(
        self,
        raw_inputs: AudioInput,
        sampling_rate: int | None = None,
        move_to_device: bool = True,
        **audio_options: Any,
    ) -> tuple[Float[Tensor, "batch frames d_model"], Int[Tensor, "batch frames"] | None]:
        """Audio -> ``(frames, frame_mask)``: the projected conv features, as TransformerLens's ``to_frames``.

        ``frames`` is the feature projection's output (``hook_projected`` before padded frames are zeroed);
        ``model(frames)``, ``model((frames, frame_mask))`` and :meth:`encoder_output` continue from there.

        Args:
            raw_inputs: Any audio :meth:`forward` accepts (waveforms, ``(batch, samples)``, lists, files).
            sampling_rate: Rate of array inputs (default: the model's).
            move_to_device: Keep them on the model's device (False: move them to the CPU).
            **audio_options: ``resample``, ``channel_axis``, ``normalize``, ``use_attention_mask``,
                ``attention_mask`` (see :meth:`forward`).

        Returns:
            ``frames (batch, frames, d_model)`` and ``frame_mask (batch, frames)`` (1 = real frame), or None for
            the mask when the checkpoint uses no attention mask (HF's feature extractor gives none for
            group-norm checkpoints such as HuBERT base: padded frames are then attended to, as in HF).
        """
        attention_mask = audio_options.pop("attention_mask", None)
        batch = self.prepare(raw_inputs, sampling_rate=sampling_rate, attention_mask=attention_mask, **audio_options)
        features = self.frontend.conv_features(batch.input_values)
        frames = self.frontend.projection(self.frontend.projection.normalize(features))
        mask = None
        if batch.use_attention_mask:
            fm = self.frontend.projection.W
            mask = (
                frame_mask_from_lengths(
                    batch.lengths, frames.shape[1], self.cfg.frontend.conv_kernel, self.cfg.frontend.conv_stride
                )
                .long()
                .to(fm.device)
            )
        if not move_to_device:
            frames = frames.cpu()
            mask = mask.cpu() if mask is not None else None
        return frames, mask

    def encoder_output(
        self,
        frames: Float[Tensor, "batch frames d_model"],
        one_zero_attention_mask: Any = None,
    ) -> Float[Tensor, "batch frames d_model"]:
        """The final hidden states (HF ``last_hidden_state``) of frames from :meth:`to_frames`.

        Args:
            frames: ``(batch, frames, d_model)`` projected features.
            one_zero_attention_mask: ``(batch, frames)``, 1 = real frame (padded frames are zeroed and
                not attended to, as HF does with a mask); None: every frame is real.
        """
        x, mask = self._frames_and_mask(frames, one_zero_attention_mask)
        return self._run_frames(x, mask)

    def _frames_and_mask(self, frames: Any, mask: Any) -> tuple[Tensor, Tensor | None]:
        p = self.frontend.projection.W
        if not isinstance(frames, Tensor) or frames.ndim != 3 or frames.shape[-1] != self.cfg.d_model:
            got = tuple(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
            raise ValueError(
                f"frames must be a (batch, frames, d_model={self.cfg.d_model}) tensor from model.to_frames(audio); "
                f"got {got}"
            )
        x = frames.to(device=p.device, dtype=p.dtype)
        if mask is None:
            return x, None
        m = torch.as_tensor(mask, device=p.device)
        if tuple(m.shape) != tuple(x.shape[:2]):
            raise ValueError(
                f"the frame mask must have shape (batch, frames) = {tuple(x.shape[:2])}, got {tuple(m.shape)} "
                "(a sample-level mask goes with waveforms, as attention_mask=)"
            )
        if m.dtype != torch.bool and not bool(((m == 0) | (m == 1)).all()):
            raise ValueError("the frame mask must hold only 0/1 or booleans (1 = real frame)")
        return x, m.bool()

    def _apply_time_mask(self, x: Tensor, mask_time_indices: Any) -> Tensor:
        emb = self.frontend.masked_spec_embed
        if emb is None:
            raise ValueError(
                "mask_time_indices needs the learned masked_spec_embed, and this checkpoint has none "
                "(its HF config has mask_time_prob = mask_feature_prob = 0 or apply_spec_augment=False)"
            )
        m = torch.as_tensor(mask_time_indices, device=x.device)
        if tuple(m.shape) != tuple(x.shape[:2]):
            raise ValueError(
                f"mask_time_indices must have shape (batch, frames) = {tuple(x.shape[:2])}, got {tuple(m.shape)}; "
                "use model.num_frames(samples) to size it"
            )
        if m.dtype != torch.bool and not bool(((m == 0) | (m == 1)).all()):
            raise ValueError("mask_time_indices must hold only 0/1 or booleans (1 = masked frame)")
        return torch.where(m.bool()[..., None], emb.to(x.dtype), x)


def frames_input(input: Any) -> tuple[Tensor, Any] | None:
    """``(frames, mask)`` when ``input`` is precomputed frames (3-D tensor or ``(frames, mask)`` tuple), else None."""
    if isinstance(input, Tensor) and input.ndim == 3:
        return input, None
    if isinstance(input, tuple) and len(input) == 2 and isinstance(input[0], Tensor) and input[0].ndim == 3:
        return input[0], input[1]
    return None
