"""Speech encoders: convolutional front end, CTC head, quantizer and the audio encoder config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from encoderlens.config.attention import ACTIVATIONS, NormConfig
from encoderlens.config.stack import StackConfig, _SingleStackDims

ConvNorm = Literal["group", "layer"]
PosConvNorm = Literal["weight_norm", "batch_norm"]


@dataclass(frozen=True)
class AudioFrontendConfig:
    """The wav2vec2/HuBERT front end: conv feature encoder, feature projection, convolutional positions.

    Attributes:
        conv_dim: Output channels of each conv layer.
        conv_kernel: Kernel size of each conv layer (samples for the first, frames after).
        conv_stride: Stride of each conv layer.
        conv_bias: Whether the conv layers have biases.
        conv_norm: ``"group"``: only the first conv layer is normalised, per channel over time
            (``GroupNorm(C, C)``, wav2vec2-base / HuBERT-base); ``"layer"``: every conv layer is
            followed by a LayerNorm over channels at each frame (large / lv60 checkpoints).
        conv_act_fn: Activation after each conv layer (and after the positional conv).
        conv_norm_eps: Epsilon of the conv-layer norms (PyTorch's default 1e-5 in HF).
        proj_norm: LayerNorm before the feature projection, or None (HuBERT ``feat_proj_layer_norm=False``).
        d_model: Width the features are projected to (the residual stream).
        pos_conv_kernel: Kernel of the convolutional positional embedding.
        pos_conv_groups: Groups of that convolution.
        pos_conv_norm: ``"weight_norm"`` (the conv weight is ``g * v / ||v||``, norm over everything
            but the kernel axis) or ``"batch_norm"`` (BatchNorm1d before a plain conv, some HuBERT configs).
        pos_conv_bn_eps: BatchNorm epsilon (``"batch_norm"`` only).
        spec_augment: Whether a learned ``masked_spec_embed`` exists and HF applies it to masked frames
            (``mask_time_indices``).
    """

    conv_dim: tuple[int, ...]
    conv_kernel: tuple[int, ...]
    conv_stride: tuple[int, ...]
    conv_bias: bool
    conv_norm: ConvNorm
    conv_act_fn: str
    proj_norm: NormConfig | None
    d_model: int
    pos_conv_kernel: int
    pos_conv_groups: int
    conv_norm_eps: float = 1e-5
    pos_conv_norm: PosConvNorm = "weight_norm"
    pos_conv_bn_eps: float = 1e-5
    spec_augment: bool = False

    def __post_init__(self) -> None:
        n = len(self.conv_dim)
        if n == 0 or len(self.conv_kernel) != n or len(self.conv_stride) != n:
            raise ValueError(
                f"conv_dim, conv_kernel and conv_stride must be non-empty and of equal length, got "
                f"{len(self.conv_dim)}, {len(self.conv_kernel)}, {len(self.conv_stride)}"
            )
        if any(k < 1 for k in self.conv_kernel) or any(s < 1 for s in self.conv_stride):
            raise ValueError(f"conv kernels and strides must be >= 1, got {self.conv_kernel}, {self.conv_stride}")
        if self.conv_norm not in ("group", "layer"):
            raise ValueError(f"conv_norm must be 'group' or 'layer', got {self.conv_norm!r}")
        if self.pos_conv_norm not in ("weight_norm", "batch_norm"):
            raise ValueError(f"pos_conv_norm must be 'weight_norm' or 'batch_norm', got {self.pos_conv_norm!r}")
        if self.d_model % self.pos_conv_groups != 0:
            raise ValueError(f"d_model {self.d_model} must be a multiple of pos_conv_groups {self.pos_conv_groups}")
        if self.conv_act_fn not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.conv_act_fn!r}; expected one of {ACTIVATIONS}")

    @property
    def hop_length(self) -> int:
        """Samples between consecutive frames (the product of the strides; 320 = 20 ms at 16 kHz)."""
        hop = 1
        for s in self.conv_stride:
            hop *= s
        return hop

    @property
    def receptive_field(self) -> int:
        """Samples that one output frame of the conv stack sees (400 = 25 ms for the standard stack)."""
        field = 1
        for k, s in zip(reversed(self.conv_kernel), reversed(self.conv_stride)):
            field = (field - 1) * s + k
        return field


@dataclass(frozen=True)
class CTCHeadConfig:
    """A linear CTC head: ``logits = resid_final @ W_U + b_U``.

    Attributes:
        d_vocab: Number of CTC labels (characters plus the blank).
        blank_id: Index of the CTC blank (HF uses ``config.pad_token_id``).
    """

    d_vocab: int
    blank_id: int = 0


@dataclass(frozen=True)
class QuantizerConfig:
    """wav2vec2 pre-training head: Gumbel product quantizer plus the two contrastive projections.

    Attributes:
        num_groups: Codebooks (``num_codevector_groups``).
        num_vars: Entries per codebook (``num_codevectors_per_group``).
        codevector_dim: Width of a concatenated quantized vector.
        proj_codevector_dim: Width both sides are projected to for the contrastive similarity.
        d_features: Width of the (normalised) conv features the quantizer reads.
    """

    num_groups: int
    num_vars: int
    codevector_dim: int
    proj_codevector_dim: int
    d_features: int

    def __post_init__(self) -> None:
        if self.codevector_dim % self.num_groups != 0:
            raise ValueError(f"codevector_dim {self.codevector_dim} must be a multiple of num_groups {self.num_groups}")


@dataclass(frozen=True)
class AudioEncoderConfig(_SingleStackDims):
    """A speech encoder (wav2vec2 / HuBERT): conv front end + transformer stack (+ optional heads).

    The two HF layouts differ only in where the norms sit, which ``stack.norm_position`` says:

    - ``"post"`` (``do_stable_layer_norm=False``, base checkpoints): ``embed_norm`` normalises
      ``projected + pos_conv`` before block 0; blocks are post-LN; no final norm.
    - ``"pre"`` (``do_stable_layer_norm=True``, large / lv60 checkpoints): ``projected + pos_conv`` enters
      block 0 unnormalised; blocks are pre-LN; ``stack.final_norm`` follows the last block.

    Attributes:
        architecture: HF architecture (informational).
        model_type: HF model type (informational).
        frontend: Conv front end.
        stack: Transformer blocks.
        embed_norm: Norm of ``projected + pos_conv`` (post-LN layout), else None.
        ctc_head: CTC head, if the checkpoint has one.
        quantizer: wav2vec2 pre-training quantizer and projections, if the checkpoint has them.
    """

    architecture: str
    model_type: str
    frontend: AudioFrontendConfig
    stack: StackConfig
    embed_norm: NormConfig | None = None
    ctc_head: CTCHeadConfig | None = None
    quantizer: QuantizerConfig | None = None
    #: The device the model lives on (kept up to date by ``model.to``; TransformerLens's ``cfg.device``).
    device: str | None = field(default=None, compare=False)

    family = "audio_encoder"

    def __post_init__(self) -> None:
        if self.frontend.d_model != self.stack.d_model:
            raise ValueError(f"frontend.d_model {self.frontend.d_model} must equal stack.d_model {self.stack.d_model}")
        pre = self.stack.norm_position == "pre"
        if pre and self.embed_norm is not None:
            raise ValueError("a pre-LN audio encoder has no embedding norm (its norm is the final one)")
        if not pre and self.embed_norm is None:
            raise ValueError("a post-LN audio encoder normalises projected + pos_conv: set embed_norm")

    @property
    def d_vocab(self) -> int | None:
        return None if self.ctc_head is None else self.ctc_head.d_vocab
