"""Whisper: the log-mel front end and the audio-encoder / text-decoder model."""

from __future__ import annotations

from dataclasses import dataclass, field

from encoderlens.config.encoder_decoder import UnembedConfig
from encoderlens.config.stack import StackConfig
from encoderlens.config.text import EmbeddingConfig


@dataclass(frozen=True)
class LogMelConfig:
    """Whisper's log-mel front end (HF ``WhisperFeatureExtractor``).

    Attributes:
        n_mels: Mel bins (80; 128 for large-v3 / turbo).
        sampling_rate: Expected sample rate in Hz.
        n_fft: STFT window (periodic Hann) and FFT size.
        hop_length: Samples between frames.
        chunk_length: Seconds every input is padded (or refused beyond) to.
    """

    n_mels: int = 80
    sampling_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    chunk_length: int = 30

    def __post_init__(self) -> None:
        for name in ("n_mels", "sampling_rate", "n_fft", "hop_length", "chunk_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def n_samples(self) -> int:
        """Samples in one padded chunk (480000 = 30 s at 16 kHz)."""
        return self.chunk_length * self.sampling_rate

    @property
    def n_frames(self) -> int:
        """Mel frames of one chunk (3000)."""
        return self.n_samples // self.hop_length


@dataclass(frozen=True)
class WhisperConfig:
    """Whisper: a log-mel + two-conv audio encoder and a text decoder with cross-attention.

    Attributes:
        architecture: HF architecture (informational).
        model_type: HF model type (informational).
        mel: Log-mel front end.
        n_audio_ctx: Encoder positions (``max_source_positions``; the mel input has twice as many frames).
        encoder: Encoder blocks (pre-LN, final norm).
        decoder_embed: Decoder token and learned position embeddings.
        decoder: Decoder blocks (pre-LN, causal, cross-attention, final norm).
        unembed: The LM head (``proj_out``, tied to the decoder embedding), or None (``WhisperModel``).
        decoder_start_token_id: ``<|startoftranscript|>``.
        eos_token_ids: ``<|endoftext|>``.
        pad_token_id: Padding token.
        median_filter_width: Width of the median filter over time for word timestamps (HF's config).
    """

    architecture: str
    model_type: str
    mel: LogMelConfig
    n_audio_ctx: int
    encoder: StackConfig
    decoder_embed: EmbeddingConfig
    decoder: StackConfig
    unembed: UnembedConfig | None = None
    decoder_start_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    median_filter_width: int = 7
    #: The device the model lives on (kept up to date by ``model.to``; TransformerLens's ``cfg.device``).
    device: str | None = field(default=None, compare=False)

    family = "whisper"

    def __post_init__(self) -> None:
        if self.encoder.norm_position != "pre" or self.decoder.norm_position != "pre":
            raise ValueError("Whisper's encoder and decoder are pre-LN stacks")
        if not (self.decoder.cross_attention and self.decoder.attn.causal):
            raise ValueError("Whisper's decoder needs causal self-attention and cross-attention")
        if self.encoder.d_model != self.decoder.d_model:
            raise ValueError(f"encoder and decoder widths differ ({self.encoder.d_model} vs {self.decoder.d_model})")
        if self.n_audio_ctx < 1:
            raise ValueError(f"n_audio_ctx must be >= 1, got {self.n_audio_ctx}")

    @property
    def d_model(self) -> int:
        return self.encoder.d_model

    @property
    def d_vocab(self) -> int:
        return self.decoder_embed.d_vocab

    @property
    def n_layers(self) -> int:
        """Encoder depth (see ``n_decoder_layers``)."""
        return self.encoder.n_layers

    @property
    def n_decoder_layers(self) -> int:
        return self.decoder.n_layers

    @property
    def n_heads(self) -> int:
        return self.encoder.attn.n_heads

    @property
    def d_head(self) -> int:
        return self.encoder.attn.d_head
