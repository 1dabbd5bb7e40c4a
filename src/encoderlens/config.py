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


@dataclass(frozen=True)
class UnembedConfig:
    """A linear language-model head: ``logits = (x * scale) @ W_U + b_U``.

    Attributes:
        tied: Whether ``W_U`` is the transpose of the token embedding (one parameter, not a copy).
        scale: Multiplier on the final residual before ``W_U``. T5 v1.0 rescales by ``d_model**-0.5``
            when its head is tied; T5 v1.1 / Flan-T5 / mT5 (untied head) and BART use ``1.0``.
        bias: Whether the logits have a bias (BART's ``final_logits_bias``).
    """

    tied: bool = True
    scale: float = 1.0
    bias: bool = False


DecoderShift = Literal["start_token", "wrap_last_token"]


@dataclass(frozen=True)
class EncoderDecoderConfig:
    """A sequence-to-sequence transformer (T5 family, BART, mBART).

    The token embedding is shared by the encoder and the decoder (and the head when tied);
    ``encoder_embed`` / ``decoder_embed`` describe each side's learned positions and embedding norm.

    Attributes:
        architecture: The HF architecture the checkpoint came from (informational only).
        model_type: The HF ``model_type`` (informational only).
        encoder_embed: Encoder embedding settings (vocabulary, scale, learned positions, norm).
        encoder: Encoder block stack.
        decoder_embed: Decoder embedding settings; None for an encoder-only checkpoint.
        decoder: Decoder block stack (causal self-attention, cross-attention); None for an
            encoder-only checkpoint (``T5EncoderModel``).
        unembed: The LM head, or None when the checkpoint has none (``T5Model``, ``BartModel``).
        decoder_start_token_id: First decoder token of generation and of shifted targets.
        eos_token_ids: Tokens that end a generated sequence.
        pad_token_id: Padding token (also fed to finished sequences during batched generation).
        decoder_shift: How targets become decoder inputs: ``"start_token"`` (T5, BART:
            ``[start] + targets[:-1]``) or ``"wrap_last_token"`` (mBART: the last non-pad target token,
            the language id, moves to the front).
    """

    architecture: str
    model_type: str
    encoder_embed: EmbeddingConfig
    encoder: StackConfig
    decoder_embed: EmbeddingConfig | None = None
    decoder: StackConfig | None = None
    unembed: UnembedConfig | None = None
    decoder_start_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    decoder_shift: DecoderShift = "start_token"

    family = "encoder_decoder"

    def __post_init__(self) -> None:
        if (self.decoder is None) != (self.decoder_embed is None):
            raise ValueError("decoder and decoder_embed must both be given (seq2seq) or both be None (encoder only)")
        if self.decoder is not None:
            assert self.decoder_embed is not None
            if not self.decoder.cross_attention:
                raise ValueError("the decoder stack of an encoder-decoder needs cross_attention=True")
            if not self.decoder.attn.causal:
                raise ValueError("the decoder stack of an encoder-decoder needs causal self-attention")
            if self.decoder.d_model != self.encoder.d_model:
                raise ValueError(
                    f"encoder and decoder widths differ ({self.encoder.d_model} vs {self.decoder.d_model})"
                )
            for field in ("d_vocab", "scale", "pad_token_id"):
                if getattr(self.decoder_embed, field) != getattr(self.encoder_embed, field):
                    raise ValueError(f"encoder and decoder share one token embedding: their {field} must agree")
        if self.unembed is not None and self.decoder is None:
            raise ValueError("an LM head needs a decoder")
        if self.decoder_shift not in ("start_token", "wrap_last_token"):
            raise ValueError(f"decoder_shift must be 'start_token' or 'wrap_last_token', got {self.decoder_shift!r}")

    @property
    def d_model(self) -> int:
        return self.encoder.d_model

    @property
    def d_vocab(self) -> int:
        return self.encoder_embed.d_vocab

    @property
    def n_layers(self) -> int:
        """Encoder depth (see ``n_decoder_layers`` for the decoder)."""
        return self.encoder.n_layers

    @property
    def n_decoder_layers(self) -> int:
        return 0 if self.decoder is None else self.decoder.n_layers

    @property
    def n_heads(self) -> int:
        return self.encoder.attn.n_heads

    @property
    def d_head(self) -> int:
        return self.encoder.attn.d_head
