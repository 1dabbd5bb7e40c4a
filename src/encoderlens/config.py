"""Typed, frozen configuration dataclasses.

Behaviour is described here (``causal``, ``norm_position``, ``gated``...) and nowhere else: components
read these fields, never model names. Converters in :mod:`encoderlens.convert` build these from a
Hugging Face config and reject settings they do not handle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

NormKind = Literal["layernorm", "rmsnorm"]
NormPosition = Literal["pre", "post"]

#: Activation functions understood by :func:`encoderlens.components.mlp.get_activation`.
ACTIVATIONS = (
    "gelu",
    "gelu_new",
    "gelu_fast",
    "gelu_pytorch_tanh",
    "quick_gelu",
    "relu",
    "silu",
    "swish",
    "tanh",
)


@dataclass(frozen=True)
class NormConfig:
    """A normalisation layer.

    Attributes:
        kind: ``"layernorm"`` (mean-subtracted, with optional bias) or ``"rmsnorm"`` (T5 style:
            no mean subtraction, no bias).
        eps: Added to the variance before the square root.
        bias: Whether a layernorm has an additive bias.
    """

    kind: NormKind = "layernorm"
    eps: float = 1e-12
    bias: bool = True


@dataclass(frozen=True)
class RelativePositionConfig:
    """T5-style bucketed relative position bias.

    Attributes:
        num_buckets: Number of buckets (half per direction when bidirectional).
        max_distance: Distances at or beyond this share the last bucket.
        bidirectional: True in encoders (past and future get separate buckets); False in a causal
            decoder, where only the past is bucketed.
    """

    num_buckets: int = 32
    max_distance: int = 128
    bidirectional: bool = True


@dataclass(frozen=True)
class AttentionConfig:
    """Multi-head attention.

    Attributes:
        n_heads: Number of heads.
        d_head: Size of each head.
        causal: Whether a query may only attend to itself and earlier keys.
        qkv_bias: Whether Q, K and V projections have biases.
        out_bias: Whether the output projection has a bias.
        scale: Multiplier applied to ``q @ k``. ``None`` means ``d_head ** -0.5``; T5 folds the
            scale into its weights and uses ``1.0``.
    """

    n_heads: int
    d_head: int
    causal: bool = False
    qkv_bias: bool = True
    out_bias: bool = True
    scale: float | None = None

    @property
    def attn_scale(self) -> float:
        return self.d_head**-0.5 if self.scale is None else self.scale


@dataclass(frozen=True)
class MLPConfig:
    """Position-wise feed-forward block.

    Attributes:
        d_mlp: Hidden size.
        act_fn: Activation name (see :data:`ACTIVATIONS`).
        gated: Gated-linear-unit MLP (``act(x W_gate) * (x W_in)``) as in T5 v1.1 / Flan-T5.
        bias: Whether the linear layers have biases.
    """

    d_mlp: int
    act_fn: str
    gated: bool = False
    bias: bool = True

    def __post_init__(self) -> None:
        if self.act_fn not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.act_fn!r}; expected one of {ACTIVATIONS}")


@dataclass(frozen=True)
class StackConfig:
    """A stack of identical transformer blocks.

    Attributes:
        n_layers: Number of blocks.
        d_model: Residual stream width.
        attn: Self-attention settings.
        mlp: MLP settings.
        norm: Settings of every norm inside the blocks (and the final norm).
        norm_position: ``"post"`` (BERT, wav2vec2-base: ``x = LN(x + f(x))``) or ``"pre"``
            (T5, wav2vec2-large: ``x = x + f(LN(x))``).
        cross_attention: Whether each block attends to an encoder output (decoders).
        final_norm: Whether a norm follows the last block.
        relative_position: T5 relative position bias (computed once, shared by all blocks).
    """

    n_layers: int
    d_model: int
    attn: AttentionConfig
    mlp: MLPConfig
    norm: NormConfig
    norm_position: NormPosition
    cross_attention: bool = False
    final_norm: bool = False
    relative_position: RelativePositionConfig | None = None

    def __post_init__(self) -> None:
        if self.norm_position not in ("pre", "post"):
            raise ValueError(f"norm_position must be 'pre' or 'post', got {self.norm_position!r}")
        if self.n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {self.n_layers}")

    @property
    def n_heads(self) -> int:
        return self.attn.n_heads

    @property
    def d_head(self) -> int:
        return self.attn.d_head


@dataclass(frozen=True)
class EmbeddingConfig:
    """Token, position and token-type embeddings.

    Attributes:
        d_vocab: Vocabulary size.
        n_ctx: Number of learned absolute positions (0: no learned positions).
        n_token_types: Number of token types / segments (0: none).
        position_offset: Added to position indices before lookup (RoBERTa, BART).
        norm: Norm applied to the summed embedding (BERT), or None.
        scale: Multiplier on token embeddings (BART with ``scale_embedding``).
        pad_token_id: Padding token id, if the tokenizer has one.
    """

    d_vocab: int
    n_ctx: int = 0
    n_token_types: int = 0
    position_offset: int = 0
    norm: NormConfig | None = None
    scale: float = 1.0
    pad_token_id: int | None = None


@dataclass(frozen=True)
class MLMHeadConfig:
    """BERT-style masked-language-model head: dense -> act -> norm -> unembed.

    Attributes:
        act_fn: Activation of the transform.
        norm: Norm after the transform.
        tied: Whether the unembedding shares weights with the token embedding.
    """

    act_fn: str
    norm: NormConfig
    tied: bool = True


@dataclass(frozen=True)
class EncoderConfig:
    """A bidirectional text encoder (BERT family).

    Attributes:
        architecture: The HF architecture the checkpoint came from (informational only).
        model_type: The HF ``model_type`` (informational only).
        embed: Embedding settings.
        stack: Block stack settings.
        mlm_head: Masked-LM head, if the checkpoint has one.
        pooler: Whether a tanh pooler over the first token exists.
        nsp_head: Whether a next-sentence-prediction classifier exists (needs the pooler).
    """

    architecture: str
    model_type: str
    embed: EmbeddingConfig
    stack: StackConfig
    mlm_head: MLMHeadConfig | None = None
    pooler: bool = False
    nsp_head: bool = False

    family = "encoder"

    @property
    def d_model(self) -> int:
        return self.stack.d_model

    @property
    def n_layers(self) -> int:
        return self.stack.n_layers

    @property
    def n_heads(self) -> int:
        return self.stack.attn.n_heads

    @property
    def d_head(self) -> int:
        return self.stack.attn.d_head

    @property
    def d_vocab(self) -> int:
        return self.embed.d_vocab
