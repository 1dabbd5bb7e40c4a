"""HookedWhisper: Whisper rebuilt from hooked components, from the waveform to the logits.

Layout (hook names follow the module tree)::

    hook_waveform                 (batch, samples) each input zero-padded to one 30 s chunk
    mel.hook_power / mel.hook_mel (batch, mel_frames, n_freq / n_mels) the log-mel front end
    encoder.stem.hook_conv1/2     (batch, mel_frames / frames, d_model) the two GELU convs
    encoder.hook_embed            conv stem output; encoder.hook_pos_embed the stored sinusoids
    encoder.hook_full_embed       input of encoder block 0
    encoder.blocks.{i}...         pre-LN TransformerBlock hooks; encoder.ln_final.*, encoder.hook_final_norm
    decoder.hook_embed / hook_pos_embed / hook_full_embed, decoder.blocks.{i}... (cross_attn.* too),
    decoder.ln_final.*, decoder.hook_final_norm
    lm_head                       logits = decoder_output @ W_U (tied to the token embedding)

See ``docs/whisper.md`` for the hook table, the decoding rules and the differences from HF.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from encoderlens.cache import StreamSpec, fold_norm_into_unembed
from encoderlens.components.blocks import TransformerBlock
from encoderlens.components.conv_stem import ConvStem
from encoderlens.components.embed import Embed
from encoderlens.components.heads import LMHead
from encoderlens.components.log_mel import LogMelSpectrogram
from encoderlens.components.norm import make_norm
from encoderlens.components.stack import Stack, run_blocks
from encoderlens.components.stack_weights import StackWeights, StackWeightsMixin
from encoderlens.config import StackConfig, WhisperConfig
from encoderlens.hooks import HookPoint
from encoderlens.io.audio import AudioInput, AudioOptions, to_waveforms
from encoderlens.io.checkpoint import Checkpoint, load_tokenizer
from encoderlens.io.text import as_token_tensor, check_mask, check_tokens
from encoderlens.models.base import HookedModel
from encoderlens.models.contract import (
    ExampleInput,
    Prepared,
    Readout,
    frame_position_labels,
    text_position_labels,
)
from encoderlens.models.whisper_alignment import token_times
from encoderlens.models.whisper_generation import WhisperDecoding, whisper_generate
from encoderlens.models.whisper_transcript import Transcript, split_segments

ReturnType = Literal["auto", "logits", "encoder_output", "decoder_output"]


class WhisperEncoder(StackWeightsMixin, nn.Module):
    """Mel frames -> conv stem -> plus the stored sinusoidal positions -> pre-LN blocks -> final norm."""

    def __init__(self, cfg: StackConfig, n_mels: int, n_ctx: int) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.stem = ConvStem(n_mels, d)
        self.W_pos = nn.Parameter(torch.empty(n_ctx, d))
        self.hook_embed = HookPoint()
        self.hook_pos_embed = HookPoint()
        self.hook_full_embed = HookPoint()
        self.blocks = nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        self.ln_final = make_norm(d, cfg.norm)
        self.hook_final_norm = HookPoint()

    def forward(self, mel: Float[Tensor, "batch mel_frames n_mels"]) -> Float[Tensor, "batch frames d_model"]:
        n_ctx = self.W_pos.shape[0]
        if mel.shape[1] != 2 * n_ctx:
            raise ValueError(
                f"this Whisper encoder reads {2 * n_ctx} mel frames ({n_ctx} positions after the stride-2 conv); "
                f"got {mel.shape[1]}. Waveforms are padded to 30 s for you; pad input_features yourself"
            )
        x = self.hook_embed(self.stem(mel))
        x = x + self.hook_pos_embed(self.W_pos[None].expand(x.shape[0], -1, -1))
        x = self.hook_full_embed(x)
        return run_blocks(
            self.blocks, x, additive_mask=None, final_norm=self.ln_final, final_norm_hook=self.hook_final_norm
        )


class HookedWhisper(HookedModel):
    """Whisper with a hook point on every activation of the front end, the encoder and the decoder.

    Example:
        >>> model = HookedWhisper.from_pretrained("openai/whisper-tiny")
        >>> prompt = model.prompt_ids(language="en")                 # <|startoftranscript|><|en|>...
        >>> logits, cache = model.run_with_cache("speech.flac", prompt)
        >>> cache.decoder["pattern", 0, "cross_attn"].shape          # (batch, head, decoder_pos, audio_pos)
        >>> model.generate("speech.flac", language="en", max_new_tokens=40)

    Differs from HF:
        - Waveforms go in directly (the log-mel front end is part of the model, with hooks and gradients);
          audio longer than one 30 s chunk is refused rather than silently truncated.
        - ``generate`` is greedy and short-form (one 30 s window): it detects the language when none is given
          and predicts timestamps with ``timestamps=True`` (equal to HF's single underlying generate call);
          long-form (sequential windows with seeking) is not implemented.
    """

    cfg: WhisperConfig
    family = "whisper"

    def __init__(self, cfg: WhisperConfig, tokenizer: Any = None, generation_config: Any = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.decoding = WhisperDecoding.from_generation_config(generation_config, cfg)
        d = cfg.d_model
        self.hook_waveform = HookPoint()
        self.mel = LogMelSpectrogram(cfg.mel)
        self.encoder = WhisperEncoder(cfg.encoder, cfg.mel.n_mels, cfg.n_audio_ctx)
        self.embed = Embed(d, cfg.decoder_embed)
        self.decoder = Stack(cfg.decoder, cfg.decoder_embed, self.embed)
        self.lm_head = LMHead(d, cfg.d_vocab, cfg.unembed, self.embed) if cfg.unembed is not None else None
        self.streams: tuple[str, ...] = ("encoder", "decoder")
        self.setup()

    @classmethod
    def extras_from_checkpoint(cls, ckpt: Checkpoint) -> dict[str, Any]:
        gen = None
        if ckpt.path is not None and (ckpt.path / "generation_config.json").exists():
            from transformers import GenerationConfig

            gen = GenerationConfig.from_pretrained(str(ckpt.path))
        return {"tokenizer": load_tokenizer(ckpt.path, ckpt.config), "generation_config": gen}

    def materialize_buffers(self) -> None:
        self.mel.materialize()

    # ------------------------------------------------------------------ weights
    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        """The decoder's token embedding (the head's ``W_U`` is its transpose)."""
        return self.embed.W_E

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self._head().W_U

    @property
    def b_U(self) -> Float[Tensor, " d_vocab"]:
        return self._head().W_U.new_zeros(self.cfg.d_vocab)

    @property
    def cross(self) -> StackWeights:
        """Stacked decoder cross-attention weights (``model.cross.W_Q[layer, head]``)."""
        return self.decoder.cross

    def _head(self) -> LMHead:
        if self.lm_head is None:
            raise AttributeError(
                f"this {self.cfg.architecture} checkpoint has no LM head; load WhisperForConditionalGeneration"
            )
        return self.lm_head

    # ------------------------------------------------------------------ inputs
    def features(
        self,
        audio: AudioInput | None = None,
        sampling_rate: int | None = None,
        resample: bool = False,
        input_features: Any = None,
    ) -> Float[Tensor, "batch mel_frames n_mels"]:
        """Log-mel features (time first) of audio, or of HF-layout ``input_features`` ``(batch, n_mels, frames)``.

        Audio: a path, a 1-D waveform, a list of them, or a ``(batch, samples)`` tensor at 16 kHz
        (another rate needs ``resample=True``). Each item is zero-padded to one 30 s chunk, as HF's
        ``WhisperFeatureExtractor`` does; longer audio raises.
        """
        if (audio is None) == (input_features is None):
            raise ValueError("pass audio (waveforms or paths) or input_features (HF log-mel features), exactly one")
        device = self.embed.W_E.device
        if input_features is not None:
            feats = torch.as_tensor(input_features, dtype=self.embed.W_E.dtype, device=device)
            if feats.ndim == 2:
                feats = feats[None]
            if feats.ndim != 3 or feats.shape[1] != self.cfg.mel.n_mels:
                raise ValueError(
                    f"input_features must be (batch, n_mels={self.cfg.mel.n_mels}, frames) as HF's feature extractor "
                    f"returns them; got shape {tuple(feats.shape)}"
                )
            return self.mel.hook_mel(feats.transpose(1, 2))
        assert audio is not None
        mel_cfg = self.cfg.mel
        waves, _ = to_waveforms(
            audio, mel_cfg.sampling_rate, AudioOptions(sampling_rate=sampling_rate, resample=resample)
        )
        n = mel_cfg.n_samples
        for i, w in enumerate(waves):
            if w.shape[0] > n:
                raise ValueError(
                    f"audio item {i} is {w.shape[0] / mel_cfg.sampling_rate:.2f} s long; Whisper reads one "
                    f"{mel_cfg.chunk_length} s window at a time. Split it into chunks of at most {n} samples and "
                    "run each (long-form transcription is not implemented yet)"
                )
        batch = torch.stack([nn.functional.pad(w.to(device), (0, n - w.shape[0])) for w in waves])
        # in float32 at least, as HF's feature extractor computes them (FFTs refuse half precision on the CPU,
        # and on GPUs for Whisper's n_fft=400), then cast to the model's dtype
        dtype = self.embed.W_E.dtype
        batch = batch.to(torch.promote_types(dtype, torch.float32))
        if self.hook_waveform.bwd_hooks and not batch.requires_grad and torch.is_grad_enabled():
            batch = batch.detach().requires_grad_(True)
        return self.mel(self.hook_waveform(batch)).to(dtype)

    def _decoder_tokens(self, decoder_input: Any, mask: Any, batch_size: int) -> tuple[Tensor, Tensor]:
        if decoder_input is None:
            raise ValueError(
                "this forward needs decoder tokens; use model.prompt_ids(language=..., task=...) for Whisper's "
                "prompt, model.generate(audio) to decode, or return_type='encoder_output' for the encoder alone"
            )
        if isinstance(decoder_input, Mapping):  # {"input_ids", "attention_mask"}: a tokenizer's / harvest's batch
            if "input_ids" not in decoder_input:
                raise ValueError(f"a dict decoder_input needs 'input_ids'; got keys {sorted(decoder_input)}")
            if mask is None:
                mask = decoder_input.get("attention_mask")
            decoder_input = decoder_input["input_ids"]
        tokens = as_token_tensor(decoder_input).to(self.embed.W_E.device)
        if tokens.shape[0] == 1 and batch_size > 1:
            tokens = tokens.expand(batch_size, -1)
        if tokens.shape[0] != batch_size:
            raise ValueError(f"audio batch has {batch_size} items but decoder_input has {tokens.shape[0]} rows")
        m = torch.ones_like(tokens) if mask is None else check_mask(mask, tokens.shape, "decoder_attention_mask")
        check_tokens(tokens, self.cfg.d_vocab, self.decoder.max_positions)
        return tokens, m.to(tokens.device)

    def prompt_ids(self, language: str | None = None, task: str | None = None) -> Int[Tensor, "1 pos"]:
        """Whisper's decoder prompt, as HF's ``generate`` builds it: ``<|startoftranscript|>``, the language
        and task tokens (multilingual checkpoints) and ``<|notimestamps|>``."""
        return torch.tensor([self.decoding.prompt(language, task)], device=self.embed.W_E.device)

    @torch.no_grad()
    def detect_language(
        self,
        audio: AudioInput | None = None,
        encoder_output: Float[Tensor, "batch frames d_model"] | None = None,
        **audio_kw: Any,
    ) -> Int[Tensor, " batch"]:
        """The language token of each row, as HF's ``detect_language``: the argmax of the logits after
        ``<|startoftranscript|>`` over the checkpoint's language tokens.

        Args:
            audio: Audio (see :meth:`features`), or None with ``encoder_output``.
            encoder_output: A precomputed :meth:`encode` output.
            **audio_kw: ``sampling_rate``, ``resample``, ``input_features``.
        """
        if not self.decoding.is_multilingual:
            raise ValueError("this checkpoint is English-only (no lang_to_id in its generation config): no detection")
        if self.lm_head is None:
            raise ValueError("detect_language needs an LM head; this WhisperModel checkpoint has none")
        has_audio = audio is not None or audio_kw.get("input_features") is not None
        if has_audio == (encoder_output is not None):
            raise ValueError("pass exactly one of audio (or input_features=) and encoder_output")
        enc = self.encode(audio, **audio_kw) if encoder_output is None else encoder_output
        start = torch.full((enc.shape[0], 1), self.decoding.start_token_id, device=enc.device)
        enc_mask = torch.ones(enc.shape[:2], dtype=torch.long, device=enc.device)
        logits = self.lm_head(self.decoder(start, torch.ones_like(start), enc, enc_mask))[:, -1].float()
        keep = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        keep[list(self.decoding.lang_to_id.values())] = True
        return logits.masked_fill(~keep, float("-inf")).argmax(dim=-1)

    # ------------------------------------------------------------------ forward
    def encode(self, audio: AudioInput | None = None, **audio_kw: Any) -> Float[Tensor, "batch frames d_model"]:
        """The encoder output (what cross-attention reads)."""
        return self.encoder(self.features(audio, **audio_kw))

    def forward(
        self,
        audio: AudioInput | None = None,
        decoder_input: Any = None,
        return_type: ReturnType | None = "auto",
        decoder_attention_mask: Any = None,
        sampling_rate: int | None = None,
        resample: bool = False,
        input_features: Any = None,
    ) -> Any:
        """Run the front end and encoder on ``audio`` and the decoder on ``decoder_input`` (teacher forcing).

        Args:
            audio: Path(s) or waveform(s) at 16 kHz (see :meth:`features`).
            decoder_input: Decoder token ids ``(pos,)`` / ``(batch, pos)``, starting with the prompt.
            return_type: ``"logits"``, ``"encoder_output"``, ``"decoder_output"``, None, or ``"auto"``
                (logits with an LM head, else the decoder output).
            decoder_attention_mask: 1 = real decoder token.
            sampling_rate: Rate of array inputs (default: the model's 16 kHz).
            resample: Resample array inputs at another rate.
            input_features: HF log-mel features ``(batch, n_mels, frames)`` instead of audio.
        """
        if return_type == "auto":
            return_type = "logits" if self.lm_head is not None else "decoder_output"
        if return_type not in ("logits", "encoder_output", "decoder_output", None):
            raise ValueError(
                f"return_type must be 'auto', 'logits', 'encoder_output', 'decoder_output' or None, got {return_type!r}"
            )
        if return_type == "logits" and self.lm_head is None:
            raise ValueError("return_type='logits' needs an LM head; this checkpoint has none (use 'decoder_output')")
        enc = self.encoder(self.features(audio, sampling_rate, resample, input_features))
        if return_type == "encoder_output":
            return enc
        tokens, mask = self._decoder_tokens(decoder_input, decoder_attention_mask, enc.shape[0])
        enc_mask = torch.ones(enc.shape[:2], dtype=torch.long, device=enc.device)
        dec = self.decoder(tokens, mask, enc, enc_mask)
        if return_type is None:
            return None
        if return_type == "decoder_output":
            return dec
        assert self.lm_head is not None
        return self.lm_head(dec)

    @torch.no_grad()
    def generate(
        self,
        audio: AudioInput | None = None,
        language: str | None = None,
        task: str | None = None,
        max_new_tokens: int = 40,
        decoder_input: Any = None,
        sampling_rate: int | None = None,
        resample: bool = False,
        input_features: Any = None,
        return_type: Literal["tokens", "str"] = "tokens",
        timestamps: bool = False,
    ) -> Any:
        """Greedy decoding with HF Whisper's rules, the KV cache, and hooks firing on every step.

        The prompt is :meth:`prompt_ids` (or ``decoder_input``); the checkpoint's ``suppress_tokens`` are
        masked at every step and ``begin_suppress_tokens`` at the first generated position.

        Returns:
            ``(batch, prompt + new)`` token ids (finished rows padded with ``pad_token_id``), as HF returns
            them; or the decoded texts (special tokens skipped) with ``return_type="str"``.
        """
        if self.lm_head is None:
            raise ValueError("generate needs an LM head; this WhisperModel checkpoint has none")
        enc = self.encoder(self.features(audio, sampling_rate, resample, input_features))
        if decoder_input is None and self.decoding.needs_detection(language, task):
            detected = self.detect_language(encoder_output=enc).tolist()
            rows = [self.decoding.prompt(language, task, lang, timestamps) for lang in detected]
            prefix = torch.tensor(rows, device=enc.device)
        elif decoder_input is None:
            prompt = self.decoding.prompt(language, task, timestamps=timestamps)
            prefix = torch.tensor([prompt], device=enc.device).expand(enc.shape[0], -1)
        else:
            if language is not None or task is not None:
                raise ValueError("pass either decoder_input (a full prompt) or language/task, not both")
            prefix, _ = self._decoder_tokens(decoder_input, None, enc.shape[0])
        tokens = whisper_generate(self.decoder, self.lm_head, enc, prefix, max_new_tokens, self.decoding, timestamps)
        if return_type == "str":
            if self.tokenizer is None:
                raise ValueError("return_type='str' needs a tokenizer; this model was loaded without one")
            return [self.tokenizer.decode(row.tolist(), skip_special_tokens=True) for row in tokens]
        if return_type != "tokens":
            raise ValueError(f"return_type must be 'tokens' or 'str', got {return_type!r}")
        return tokens

    @torch.no_grad()
    def token_timestamps(
        self,
        audio: AudioInput | None,
        tokens: Int[Tensor, "batch pos"],
        num_input_ids: int,
        num_frames: Any = None,
        **audio_kw: Any,
    ) -> Float[Tensor, "batch pos"]:
        """Per-token times in seconds from the alignment heads (median filter + DTW), as HF's
        ``generate(..., return_token_timestamps=True)``.

        Args:
            audio: The audio ``tokens`` were generated from (see :meth:`features`).
            tokens: :meth:`generate`'s output (prompt included).
            num_input_ids: The prompt length (those tokens get time 0).
            num_frames: Mel frames of real audio per row (HF: the feature extractor's attention mask
                summed); None: the whole 30 s window.
            **audio_kw: ``sampling_rate``, ``resample``, ``input_features``.
        """
        heads = self.decoding.alignment_heads
        if not heads:
            raise ValueError(
                "this checkpoint's generation config has no alignment_heads; token timestamps need them "
                "(set generation_config.alignment_heads = [[layer, head], ...])"
            )
        n_layers = len(self.decoder.blocks)
        bad = [(la, h) for la, h in heads if not (0 <= la < n_layers and 0 <= h < self.cfg.decoder.attn.n_heads)]
        if bad:
            raise ValueError(f"alignment_heads {bad} are outside the decoder's {n_layers} layers x heads")
        store: dict[int, Tensor] = {}

        def keep(layer: int) -> Any:
            def fn(t: Tensor, hook: Any) -> None:
                store[layer] = t

            return fn

        names = [(f"decoder.blocks.{la}.cross_attn.hook_pattern", keep(la)) for la in sorted({la for la, _ in heads})]
        with self.hooks(fwd_hooks=names):
            self(audio, decoder_input=tokens[:, :-1], return_type=None, **audio_kw)
        weights = torch.stack([store[la][:, h] for la, h in heads], dim=1).float()
        frames = None if num_frames is None else [int(f) for f in torch.as_tensor(num_frames).reshape(-1)]
        return token_times(weights, num_input_ids, self.cfg.median_filter_width, frames)

    def transcribe(
        self,
        audio: AudioInput | None = None,
        language: str | None = None,
        task: str | None = None,
        timestamps: bool = False,
        max_new_tokens: int = 40,
        **audio_kw: Any,
    ) -> list[Transcript]:
        """Greedy :meth:`generate`, decoded into text plus timed segments (one :class:`Transcript` per audio).

        Args:
            audio: Audio (see :meth:`features`), at most 30 s each.
            language: Language code / token / name; None detects it (multilingual checkpoints).
            task: ``"transcribe"`` or ``"translate"``.
            timestamps: Predict timestamp tokens and split the text into segments at them.
            max_new_tokens: Decoding budget.
            **audio_kw: ``sampling_rate``, ``resample``, ``input_features``.
        """
        if self.tokenizer is None:
            raise ValueError("transcribe needs a tokenizer; this model was loaded without one (use generate)")
        tok = self.tokenizer
        tokens = self.generate(
            audio, language=language, task=task, max_new_tokens=max_new_tokens, timestamps=timestamps, **audio_kw
        )
        rules = self.decoding
        detected = -1 if rules.needs_detection(language, task) else None  # a placeholder: only the length counts
        begin = len(rules.prompt(language, task, detected, timestamps))
        ts_begin = rules.no_timestamps_token_id + 1 if timestamps and rules.no_timestamps_token_id is not None else None
        id_to_lang = {v: k for k, v in rules.lang_to_id.items()}
        out = []
        for row in tokens.tolist():
            new = row[begin:]
            if rules.eos_token_id is not None and rules.eos_token_id in new:
                new = new[: new.index(rules.eos_token_id)]
            segs = split_segments(
                new, ts_begin, rules.eos_token_id, lambda ids: tok.decode(ids, skip_special_tokens=True)
            )
            text = "".join(s.text for s in segs)
            lang = id_to_lang.get(row[1]) if rules.is_multilingual else None
            out.append(Transcript(text, segs, tuple(new), lang))
        return out

    # ------------------------------------------------------------------ the model contract
    def _prepare_input(
        self,
        input: Any,
        decoder_input: Any = None,
        decoder_attention_mask: Any = None,
        sampling_rate: int | None = None,
        resample: bool = False,
        **options: Any,
    ) -> Prepared:
        """Audio (paths, waveforms) and ``decoder_input`` token ids (e.g. :meth:`prompt_ids` + text ids)."""
        if options:
            raise TypeError(
                f"unexpected options for Whisper: {sorted(options)}; accepted: decoder_input, "
                "decoder_attention_mask, sampling_rate, resample"
            )
        mel = self.features(input, sampling_rate, resample).detach()
        batch = mel.shape[0]
        tokens, dec_mask = self._decoder_tokens(decoder_input, decoder_attention_mask, batch)
        n_ctx = self.cfg.n_audio_ctx
        # each encoder position covers 2 mel frames (stride-2 conv): 20 ms at Whisper's 10 ms hop
        step = 2 * self.cfg.mel.hop_length / self.cfg.mel.sampling_rate
        starts = torch.arange(n_ctx, dtype=torch.float64) * step
        times = torch.stack([starts, starts + step], dim=1)
        enc_mask = torch.ones(batch, n_ctx, dtype=torch.long, device=tokens.device)
        dec_mask = dec_mask.long()
        return Prepared(
            family=self.family,
            args=(),
            kwargs={"input_features": mel.transpose(1, 2), "decoder_input": tokens, "decoder_attention_mask": dec_mask},
            masks={"encoder": enc_mask, "decoder": dec_mask},
            labels={
                "encoder": frame_position_labels(times, enc_mask),
                "decoder": text_position_labels(self.tokenizer, tokens, dec_mask),
            },
            token_ids={"decoder": tokens},
            times={"encoder": times},
            batch_size=batch,
            alignment_hint="use audio of the same length and decoder prompts of the same length",
        )

    @property
    def default_return_type(self) -> str:
        """``"logits"`` with an LM head, else ``"decoder_output"``."""
        return "logits" if self.lm_head is not None else "decoder_output"

    def readout(self, stream: str | None = None) -> Readout | None:
        """The tied LM head on the decoder stream; the encoder stream has none."""
        stream = self.resolve_stream(stream)
        if stream != "decoder" or self.lm_head is None:
            return None
        return Readout("lm_head", "lm", self.lm_head, linear=True, return_type="logits")

    def cross_attention_source(self, stream: str | None) -> str | None:
        """The decoder's cross-attention reads the encoder stream."""
        if self.resolve_stream(stream) != "decoder":
            return super().cross_attention_source(stream)
        return "encoder"

    def example_input(self) -> ExampleInput:
        wave = 0.1 * torch.sin(torch.arange(self.cfg.mel.sampling_rate // 2) * 0.05)
        prompt = self.decoding.prompt("en" if self.decoding.is_multilingual else None, None)
        return ExampleInput(wave, {"decoder_input": torch.tensor([prompt])}, "0.5 s of a sine tone -> the prompt")

    # ------------------------------------------------------------------ cache support
    def stream_spec(self, stream: str | None = None) -> StreamSpec:
        """How each residual stream (``"encoder"`` or ``"decoder"``) is built, for :class:`ActivationCache`."""
        if stream not in self.streams:
            raise ValueError(f"Whisper's residual streams are {self.streams}; got stream={stream!r}")
        st: WhisperEncoder | Stack = self.encoder if stream == "encoder" else self.decoder
        p = f"{stream}."
        unembed: Callable[[], tuple[Tensor, Tensor]] | None = None
        note = ""
        if stream == "encoder":
            note = "the encoder stream is not unembedded (logits are read from cache.decoder)"
        elif self.lm_head is None:
            note = "this WhisperModel checkpoint has no LM head"
        else:
            head = self.lm_head
            unembed = lambda: fold_norm_into_unembed(self.decoder.ln_final, head.W_U, self.b_U)  # noqa: E731
        return StreamSpec(
            prefix=p,
            n_layers=st.cfg.n_layers,
            n_heads=st.cfg.n_heads,
            norm_position="pre",
            embed_hooks=(p + "hook_embed", p + "hook_pos_embed"),
            embed_normalized=False,
            final_norm=p + "ln_final",
            has_cross_attention=st.cfg.cross_attention,
            blocks=st.blocks,
            unembed_fn=unembed,
            unembed_note=note,
        )
