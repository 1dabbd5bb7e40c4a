"""The wav2vec2 / HuBERT front end, built natively with hook points everywhere.

Pipeline (hook names as they appear on :class:`~encoderlens.models.audio_encoder.HookedAudioEncoder`)::

    waveform (batch, samples)      hook_waveform
      -> conv 0 -> [norm] -> act   frontend.conv.0.hook_conv / .norm.* / .hook_out
      -> conv 1 -> [norm] -> act   ...                                          (batch, frames_j, channels_j)
      -> features                  hook_features                                (batch, frames, conv_dim[-1])
      -> LayerNorm                 frontend.projection.ln.*, hook_features_normed
      -> linear (+ masking)        hook_projected                               (batch, frames, d_model)
      -> grouped conv over time    frontend.pos_conv.hook_conv, hook_pos_conv   (batch, frames, d_model)

All activations are shown to hooks as ``(batch, frames, channels)``, like every other activation in
encoderlens (position second, features last). Internally the convolutions run on ``(batch, channels,
frames)``; the hook sees a transposed view, and a tensor a hook returns is transposed back.

Conv weights keep PyTorch's ``Conv1d`` layout ``(out_channels, in_channels, kernel)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from encoderlens.components.mlp import apply_activation, get_activation, get_inplace_activation
from encoderlens.components.norm import LayerNorm
from encoderlens.config import AudioFrontendConfig, NormConfig
from encoderlens.hooks import HookPoint


def conv_output_lengths(
    lengths: Int[Tensor, "..."] | int, kernels: tuple[int, ...], strides: tuple[int, ...]
) -> Int[Tensor, "..."] | int:
    """Frames the conv stack makes from ``lengths`` samples: ``floor((L - k) / s) + 1`` per layer.

    This is HF's ``_get_feat_extract_output_lengths`` (without adapters). Values below 1 mean the audio is
    shorter than the receptive field.
    """
    for k, s in zip(kernels, strides):
        if isinstance(lengths, Tensor):
            lengths = torch.div(lengths - k, s, rounding_mode="floor") + 1
        else:
            lengths = (lengths - k) // s + 1
    return lengths


def frame_mask_from_lengths(
    sample_lengths: Int[Tensor, " batch"],
    n_frames: int,
    kernels: tuple[int, ...],
    strides: tuple[int, ...],
) -> Bool[Tensor, "batch frames"]:
    """Frame-level padding mask (True = real frame) exactly as HF's ``_get_feature_vector_attention_mask``.

    HF marks the frame ``output_length - 1`` and fills everything before it; for lengths of at least
    one frame this equals ``arange(n_frames) < output_length``, which is what we compute (the inputs are
    validated to give at least one frame, see :func:`encoderlens.io.audio.prepare_audio`).
    """
    out_len = conv_output_lengths(sample_lengths.long(), kernels, strides)
    assert isinstance(out_len, Tensor)
    _check_frames_on_host(sample_lengths, out_len)
    return torch.arange(n_frames, device=out_len.device)[None, :] < out_len[:, None]


def _check_frames_on_host(sample_lengths: Tensor, out_len: Tensor) -> None:
    """Refuse items shorter than one frame, when the lengths are on the host.

    :func:`encoderlens.io.audio.prepare_audio` validates lengths on the host already; this catches
    lengths given by hand. On an accelerator reading the values would be a host-device sync in every
    forward, so device tensors are not read.
    """
    if out_len.device.type == "cpu" and bool((out_len < 1).any()):
        raise ValueError(
            f"audio of {sample_lengths.tolist()} samples gives {out_len.tolist()} frames; every item needs at "
            "least one frame (a waveform at least as long as the conv receptive field)"
        )


class ChannelNorm(nn.Module):
    """Per-channel normalisation over time: ``GroupNorm(C, C)`` as in HF's first group-norm conv layer.

    Each channel of each item is normalised by its mean and variance over all frames (padding included,
    as in HF). Hooks (``(batch, frames, channels)`` layout): ``hook_scale`` (``sqrt(var + eps)``, shape
    ``(batch, 1, channels)``) and ``hook_normalized`` (before the affine ``w``/``b``).
    """

    def __init__(self, channels: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(channels))
        self.b = nn.Parameter(torch.zeros(channels))
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: Float[Tensor, "batch channels frames"]) -> Float[Tensor, "batch channels frames"]:
        if not (self.hook_scale.has_hooks() or self.hook_normalized.has_hooks()):
            return F.group_norm(x, x.shape[1], self.w, self.b, self.eps)
        b, c, t = x.shape
        if not (self.hook_scale.may_edit() or self.hook_normalized.may_edit()):
            # only read (cached): the fused kernel gives the normalised activation and the statistics in one
            # pass (a waveform's first conv layer is the largest activation of the model: no extra copies)
            normalized, _, rstd = torch.native_group_norm(x, None, None, b, c, t, c, self.eps)
            self.hook_scale(rstd.reciprocal().view(b, 1, c))
            normalized = self.hook_normalized(normalized.transpose(1, 2)).transpose(1, 2)
            return torch.addcmul(self.b[:, None], normalized, self.w[:, None])
        # a hook may edit the scale or the normalised activation: step by step, so the edit flows on
        xt = x.transpose(1, 2)
        xt = xt - xt.mean(1, keepdim=True)
        scale = self.hook_scale((xt.pow(2).mean(1, keepdim=True) + self.eps).sqrt())
        xt = self.hook_normalized(xt / scale)
        return (xt * self.w + self.b).transpose(1, 2)


class ConvLayer(nn.Module):
    """One feature-encoder layer: ``act(norm(conv(x)))``.

    Attributes:
        W: ``(out_channels, in_channels, kernel)``.
        b: ``(out_channels,)`` or None.
        norm: :class:`ChannelNorm` (group-norm first layer), :class:`LayerNorm` over channels at each
            frame (layer-norm stacks), or None.

    Hooks: ``hook_conv`` (raw conv output), ``norm.hook_scale`` / ``norm.hook_normalized``, ``hook_out``
    (after the activation), all ``(batch, frames, channels)``.
    """

    def __init__(self, cfg: AudioFrontendConfig, j: int) -> None:
        super().__init__()
        c_in = 1 if j == 0 else cfg.conv_dim[j - 1]
        c_out = cfg.conv_dim[j]
        self.stride = cfg.conv_stride[j]
        self.W = nn.Parameter(torch.empty(c_out, c_in, cfg.conv_kernel[j]))
        self.b = nn.Parameter(torch.zeros(c_out)) if cfg.conv_bias else None
        self.hook_conv = HookPoint()  # defined before the norm so hook names list in execution order
        self.norm: ChannelNorm | LayerNorm | None
        if cfg.conv_norm == "layer":
            self.norm = LayerNorm(c_out, NormConfig("layernorm", eps=cfg.conv_norm_eps))
        elif j == 0:
            self.norm = ChannelNorm(c_out, cfg.conv_norm_eps)
        else:
            self.norm = None
        self.act = get_activation(cfg.conv_act_fn)
        self.act_inplace = get_inplace_activation(cfg.conv_act_fn)
        self.hook_out = HookPoint()

    def forward(self, x: Float[Tensor, "batch in_channels in_frames"]) -> Float[Tensor, "batch out_channels frames"]:
        # computed in the conv's (batch, channels, frames) layout (elementwise kernels on contiguous memory,
        # as HF); hooks see (batch, frames, channels) views
        x = F.conv1d(x, self.W, self.b, stride=self.stride)
        x = self.hook_conv(x.transpose(1, 2)).transpose(1, 2)
        if isinstance(self.norm, LayerNorm):
            x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        elif isinstance(self.norm, ChannelNorm):
            x = self.norm(x)
        return self.hook_out(self._activate(x).transpose(1, 2)).transpose(1, 2)

    def _activate(self, x: Float[Tensor, "batch channels frames"]) -> Float[Tensor, "batch channels frames"]:
        """The activation; in place when nothing else holds ``x``.

        Why: the first layer's activations are the model's largest (52 MB each for HuBERT at 4 x 2 s),
        above glibc's mmap threshold, so each fresh one is page-faulted in: writing the activation over
        the norm's fresh output halves the cost of that step. Not in place when a hook saw ``x`` (the
        raw conv output, when there is no norm) or when autograd needs ``x`` for the gradient.
        """
        fresh = self.norm is not None or not self.hook_conv.has_hooks()
        return apply_activation(x, self.act, self.act_inplace, fresh)


class FeatureProjection(nn.Module):
    """``projected = LN(features) @ W + b`` (the LayerNorm is absent for HuBERT ``feat_proj_layer_norm=False``).

    Attributes:
        ln: :class:`LayerNorm` over the conv channels, or None.
        W: ``(conv_dim[-1], d_model)``; b: ``(d_model,)``.
    """

    def __init__(self, cfg: AudioFrontendConfig) -> None:
        super().__init__()
        c = cfg.conv_dim[-1]
        self.ln = LayerNorm(c, cfg.proj_norm) if cfg.proj_norm is not None else None
        self.W = nn.Parameter(torch.empty(c, cfg.d_model))
        self.b = nn.Parameter(torch.zeros(cfg.d_model))

    def normalize(self, features: Float[Tensor, "batch frames channels"]) -> Float[Tensor, "batch frames channels"]:
        return self.ln(features) if self.ln is not None else features

    def forward(self, normed: Float[Tensor, "batch frames channels"]) -> Float[Tensor, "batch frames d_model"]:
        return F.linear(normed, self.W.t(), self.b)


class ConvPositionalEmbedding(nn.Module):
    """Relative positions from a grouped convolution over time: ``act(conv(x))``.

    ``pos_conv_norm="weight_norm"``: the weight is ``W_g * W_v / ||W_v||`` with the norm taken over
    output and input channels for each kernel tap (``weight_norm(dim=2)``), recomputed on every call so
    gradients reach ``W_g`` and ``W_v`` as in HF. ``"batch_norm"``: an eval-mode BatchNorm over channels
    (``bn_w, bn_b, bn_mean, bn_var``) precedes a plain conv ``W``.

    The conv pads ``kernel // 2`` on both sides; with an even kernel the last output frame is removed
    so the output has as many frames as the input (HF's ``SamePadLayer``).

    Hook: ``hook_conv`` (after padding removal, before the activation), ``(batch, frames, d_model)``.
    """

    def __init__(self, cfg: AudioFrontendConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, k, g = cfg.d_model, cfg.pos_conv_kernel, cfg.pos_conv_groups
        self.weight_norm = cfg.pos_conv_norm == "weight_norm"
        if self.weight_norm:
            self.W_g = nn.Parameter(torch.ones(1, 1, k))
            self.W_v = nn.Parameter(torch.empty(d, d // g, k))
        else:
            self.W = nn.Parameter(torch.empty(d, d // g, k))
            self.bn_w = nn.Parameter(torch.ones(d))
            self.bn_b = nn.Parameter(torch.zeros(d))
            # running statistics: parameters without gradient, so the converter's every-weight check covers them
            self.bn_mean = nn.Parameter(torch.zeros(d), requires_grad=False)
            self.bn_var = nn.Parameter(torch.ones(d), requires_grad=False)
        self.b = nn.Parameter(torch.zeros(d))
        self.act = get_activation(cfg.conv_act_fn)
        self.hook_conv = HookPoint()

    @property
    def weight(self) -> Float[Tensor, "d_model d_group kernel"]:
        """The effective conv weight ``(d_model, d_model // groups, kernel)``."""
        if self.weight_norm:
            # W_v * W_g / ||W_v|| (norm over all but the kernel axis): PyTorch's (and so HF's) weight-norm
            # kernel, one pass; a strided norm over axes (0, 1) costs ~7x more
            return torch._weight_norm(self.W_v, self.W_g, 2)
        return self.W

    def forward(self, x: Float[Tensor, "batch frames d_model"]) -> Float[Tensor, "batch frames d_model"]:
        h = x.transpose(1, 2)
        if not self.weight_norm:
            h = F.batch_norm(h, self.bn_mean, self.bn_var, self.bn_w, self.bn_b, False, 0.0, self.cfg.pos_conv_bn_eps)
        k = self.cfg.pos_conv_kernel
        h = F.conv1d(h, self.weight, self.b, padding=k // 2, groups=self.cfg.pos_conv_groups)
        if k % 2 == 0:
            h = h[:, :, :-1]
        return self.act(self.hook_conv(h.transpose(1, 2)))


class AudioFrontend(nn.Module):
    """Container of the front-end parts: ``conv.{j}``, ``projection``, ``pos_conv`` and the optional
    ``masked_spec_embed`` (the learned vector HF writes into masked frames, ``mask_time_indices``).

    The model calls the parts in turn and places its own hook points between them (see the module
    docstring), so a hook name says where in the pipeline it sits.
    """

    def __init__(self, cfg: AudioFrontendConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.conv = nn.ModuleList([ConvLayer(cfg, j) for j in range(len(cfg.conv_dim))])
        self.projection = FeatureProjection(cfg)
        self.pos_conv = ConvPositionalEmbedding(cfg)
        self.masked_spec_embed = nn.Parameter(torch.zeros(cfg.d_model)) if cfg.spec_augment else None

    def conv_features(self, waveform: Float[Tensor, "batch samples"]) -> Float[Tensor, "batch frames channels"]:
        """Run the conv stack on raw (normalised) samples."""
        x = waveform[:, None, :]
        for layer in self.conv:
            x = layer(x)
        return x.transpose(1, 2)

    def output_lengths(self, lengths: Int[Tensor, "..."] | int) -> Int[Tensor, "..."] | int:
        """Frames made from ``lengths`` samples (HF ``_get_feat_extract_output_lengths``)."""
        return conv_output_lengths(lengths, self.cfg.conv_kernel, self.cfg.conv_stride)
