"""Sequence-to-sequence models: the LM head and the encoder-decoder config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from encoderlens.config.stack import StackConfig
from encoderlens.config.text import EmbeddingConfig


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

    The token embedding is shared by the encoder and the decoder (and the head when tied) unless
    ``shared_embedding=False`` (Marian with ``share_encoder_decoder_embeddings=False``: the decoder has its
    own table, possibly of another vocabulary size, and a tied head reads it); ``encoder_embed`` /
    ``decoder_embed`` describe each side's positions and embedding norm.

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
        shared_embedding: Whether encoder and decoder share one token embedding (False: the decoder
            has its own, of ``decoder_embed.d_vocab`` rows).
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
    shared_embedding: bool = True
    #: The device the model lives on (kept up to date by ``model.to``; TransformerLens's ``cfg.device``).
    device: str | None = field(default=None, compare=False)

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
            for field in ("d_vocab", "scale", "pad_token_id") if self.shared_embedding else ():
                if getattr(self.decoder_embed, field) != getattr(self.encoder_embed, field):
                    raise ValueError(f"encoder and decoder share one token embedding: their {field} must agree")
        if self.unembed is not None and self.decoder is None:
            raise ValueError("an LM head needs a decoder")
        if not self.shared_embedding and self.decoder is None:
            raise ValueError("shared_embedding=False describes a decoder's own embedding; this config has no decoder")
        if self.decoder_shift not in ("start_token", "wrap_last_token"):
            raise ValueError(f"decoder_shift must be 'start_token' or 'wrap_last_token', got {self.decoder_shift!r}")

    @property
    def d_model(self) -> int:
        return self.encoder.d_model

    @property
    def d_vocab(self) -> int:
        """Vocabulary of the encoder input (see ``d_vocab_out`` for the decoder and the head)."""
        return self.encoder_embed.d_vocab

    @property
    def d_vocab_out(self) -> int:
        """Vocabulary of the decoder input and of the logits."""
        return self.encoder_embed.d_vocab if self.decoder_embed is None else self.decoder_embed.d_vocab

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
