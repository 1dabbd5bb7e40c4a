"""HookedAudioEncoder: wav2vec2 and HuBERT speech encoders rebuilt from hooked components.

Everything from the raw waveform to the logits is ours (no Hugging Face module is kept), so every
activation has a hook point and gradients flow from any activation back to the input samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, cast

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from encoderlens.cache import StreamSpec, fold_norm_into_unembed
from encoderlens.components.audio_frontend import AudioFrontend, frame_mask_from_lengths
from encoderlens.components.audio_heads import CTCHead, QuantizerHead, QuantizerOutput
from encoderlens.components.blocks import TransformerBlock
from encoderlens.components.norm import make_norm
from encoderlens.components.position import RelativePositionBias
from encoderlens.config import AudioEncoderConfig
from encoderlens.hooks import HookPoint
from encoderlens.io.audio import AudioBatch, AudioInput, AudioOptions, AudioPreprocessing, prepare_audio
from encoderlens.io.checkpoint import Checkpoint, load_tokenizer, refuse_remote_code
from encoderlens.models.audio_frames import AudioFrames, frames_input
from encoderlens.models.base import StackWeightsMixin
from encoderlens.models.contract import ExampleInput, InputSpec, Prepared, Readout, frame_position_labels

AudioReturnType = Literal["auto", "logits", "hidden", "all", "pretraining"]
_RETURN_TYPES = ("auto", "logits", "hidden", "all", "pretraining", None)


@dataclass
class AudioEncoderOutput:
    """Everything the audio encoder computes (``return_type="all"``).

    Attributes:
        hidden: Final residual stream (HF ``last_hidden_state``: after the final norm in pre-LN models).
        logits: CTC logits, or None without a CTC head.
        frame_mask: True at real frames, False at frames made only from padding (computed from the sample
            lengths exactly as HF does), whether or not the model itself was given a mask.
        features: Conv features (``hook_features``).
        pretraining: Quantizer outputs (wav2vec2 pre-training checkpoints), else None.
        batch: The prepared input (normalised, padded waveforms and their sample mask).
    """

    hidden: Float[Tensor, "batch frames d_model"]
    logits: Float[Tensor, "batch frames d_vocab"] | None
    frame_mask: Bool[Tensor, "batch frames"]
    features: Float[Tensor, "batch frames channels"]
    pretraining: QuantizerOutput | None
    batch: AudioBatch


@dataclass
class Transcription:
    """A greedy CTC transcription with the time span of every emitted token.

    Attributes:
        text: The decoded text (tokenizer's ``decode``; the word delimiter becomes a space).
        token_ids: Emitted ids, after merging repeats and dropping blanks.
        tokens: The same as token strings.
        start_times: Start of each token's first frame in seconds (``frame * hop / rate``, HF's offsets).
        end_times: End of its last frame in seconds (``(frame + 1) * hop / rate``).
    """

    text: str
    token_ids: list[int]
    tokens: list[str]
    start_times: list[float]
    end_times: list[float]


class HookedAudioEncoder(StackWeightsMixin, AudioFrames):
    """A wav2vec2 / HuBERT / WavLM encoder with a hook point on every activation, from raw samples to logits.

    Hook points (``j`` = conv layer, ``i`` = block); every activation is ``(batch, frames, features)``:

    - ``hook_waveform`` ``(batch, samples)``: normalised, padded input samples.
    - ``frontend.conv.{j}.hook_conv`` (conv output), ``frontend.conv.{j}.norm.hook_scale | hook_normalized``
      (where that layer has a norm), ``frontend.conv.{j}.hook_out`` (after the activation).
    - ``hook_features``: conv stack output; ``frontend.projection.ln.*`` and ``hook_features_normed``
      (HF wav2vec2's ``extract_features``) when the projection has a LayerNorm.
    - ``hook_projected``: projected features (after SpecAugment masking and zeroing padded frames).
    - ``frontend.pos_conv.hook_conv`` (pre-activation), ``hook_pos_conv`` (the positional embedding).
    - ``embed_ln.*`` (post-LN layout), ``hook_full_embed`` (input of block 0).
    - ``blocks.{i}.hook_resid_pre | hook_attn_out | hook_resid_mid | hook_mlp_out | hook_resid_post``,
      ``blocks.{i}.attn.hook_q | k | v | attn_scores | pattern | z | result``, ``blocks.{i}.mlp.hook_pre | post``,
      ``blocks.{i}.ln1 | ln2 .hook_scale | hook_normalized``.
    - ``ln_final.*`` (pre-LN layout); ``quantizer.*`` (wav2vec2 pre-training checkpoints).
    - WavLM: ``hook_position_bias`` ``(1, head_index, query_frame, key_frame)`` (the shared, ungated relative
      bias), ``blocks.{i}.attn.hook_position_gate`` ``(batch, frames, head_index)`` and
      ``blocks.{i}.attn.hook_gated_position_bias`` ``(batch, head_index, query_frame, key_frame)``.

    Example:
        >>> model = HookedAudioEncoder.from_pretrained("facebook/wav2vec2-base-960h")
        >>> logits, cache = model.run_with_cache("speech.flac")
        >>> cache["pattern", 0].shape  # (batch, head_index, query_frame, key_frame)
        >>> model.transcribe("speech.flac")
    """

    family: ClassVar[str] = "audio_encoder"

    cfg: AudioEncoderConfig

    def __init__(
        self,
        cfg: AudioEncoderConfig,
        tokenizer: Any = None,
        feature_extractor: Any = None,
        preprocessing: AudioPreprocessing | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        # HF's advice when no feature extractor says otherwise: masks only for layer-norm front ends
        self.preprocessing = preprocessing or AudioPreprocessing.from_feature_extractor(
            feature_extractor, default_return_attention_mask=cfg.frontend.conv_norm == "layer"
        )
        d = cfg.d_model
        self.hook_waveform = HookPoint()
        self.frontend = AudioFrontend(cfg.frontend)
        self.hook_features = HookPoint()
        self.hook_features_normed = HookPoint() if cfg.frontend.proj_norm is not None else None
        self.hook_projected = HookPoint()
        self.hook_pos_conv = HookPoint()
        self.embed_ln = make_norm(d, cfg.embed_norm) if cfg.embed_norm is not None else None
        self.hook_full_embed = HookPoint()
        # WavLM: one relative position bias for the whole stack, gated per block (kind="gated_relative")
        rel = cfg.stack.relative_position
        self.position_bias = RelativePositionBias(cfg.n_heads, rel) if rel is not None else None
        self.hook_position_bias = HookPoint() if rel is not None else None
        self.blocks = nn.ModuleList([TransformerBlock(cfg.stack) for _ in range(cfg.n_layers)])
        self.ln_final = make_norm(d, cfg.stack.norm) if cfg.stack.final_norm else None
        self.ctc_head = CTCHead(d, cfg.ctc_head) if cfg.ctc_head is not None else None
        self.quantizer = QuantizerHead(d, cfg.quantizer) if cfg.quantizer is not None else None
        self.setup()

    @classmethod
    def extras_from_checkpoint(cls, ckpt: Checkpoint) -> dict[str, Any]:
        fe = None
        if ckpt.path is not None and (ckpt.path / "preprocessor_config.json").exists():
            from transformers import AutoFeatureExtractor

            refuse_remote_code(ckpt.path, "preprocessor_config.json")
            fe = AutoFeatureExtractor.from_pretrained(str(ckpt.path), trust_remote_code=False)
        return {"tokenizer": load_tokenizer(ckpt.path, ckpt.config), "feature_extractor": fe}

    # ------------------------------------------------------------------ weights
    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        if self.ctc_head is None:
            raise AttributeError("this checkpoint has no CTC head, hence no unembedding W_U")
        return self.ctc_head.W_U

    @property
    def b_U(self) -> Float[Tensor, " d_vocab"]:
        if self.ctc_head is None:
            raise AttributeError("this checkpoint has no CTC head, hence no unembedding b_U")
        return self.ctc_head.b_U

    # ------------------------------------------------------------------ frames and time
    @property
    def sampling_rate(self) -> int:
        """The rate (Hz) inputs are converted to."""
        return self.preprocessing.sampling_rate

    @property
    def hop_length(self) -> int:
        """Samples between consecutive frames (320 = 20 ms at 16 kHz for the standard conv stack)."""
        return self.cfg.frontend.hop_length

    @property
    def receptive_field(self) -> int:
        """Samples one frame of the conv stack sees (400 = 25 ms for the standard stack)."""
        return self.cfg.frontend.receptive_field

    def num_frames(self, num_samples: int | Tensor) -> int | Tensor:
        """Frames the conv stack makes from ``num_samples`` samples (HF ``_get_feat_extract_output_lengths``)."""
        return self.frontend.output_lengths(num_samples)

    def frame_mask(self, sample_lengths: Any, n_frames: int | None = None) -> Bool[Tensor, "batch frames"]:
        """Frame-level padding mask (True = real frame) from per-item sample lengths, exactly as HF.

        Args:
            sample_lengths: Real samples per item (ints or a 1-D tensor), or a ``(batch, samples)`` 0/1 mask.
            n_frames: Frames of the padded batch (default: from the longest item).
        """
        lengths = torch.as_tensor(sample_lengths)
        if lengths.ndim == 2:
            lengths = lengths.long().sum(-1)
        lengths = lengths.reshape(-1).long()
        if n_frames is None:
            n_frames = int(self.num_frames(int(lengths.max())))
        return frame_mask_from_lengths(lengths, n_frames, self.cfg.frontend.conv_kernel, self.cfg.frontend.conv_stride)

    def frame_times(
        self, n_frames: int, span: Literal["receptive_field", "hop"] = "receptive_field"
    ) -> Float[Tensor, "frames 2"]:
        """Start and end time in seconds of each frame.

        Args:
            n_frames: Number of frames.
            span: ``"receptive_field"``: the samples the conv stack reads for frame ``t``,
                ``[t * hop, t * hop + receptive_field)`` (frames overlap: 25 ms windows every 20 ms for the
                standard stack). ``"hop"``: the tiling ``[t * hop, (t + 1) * hop)`` that HF's CTC offsets use.
                The transformer mixes frames further (positional conv, attention); these spans describe the
                conv front end only.

        Example:
            >>> model.frame_times(3)  # 16 kHz standard stack
            tensor([[0.0000, 0.0250], [0.0200, 0.0450], [0.0400, 0.0650]])
        """
        if not isinstance(n_frames, int) or isinstance(n_frames, bool) or n_frames < 0:
            raise ValueError(f"n_frames must be a non-negative int, got {n_frames!r}")
        if span not in ("receptive_field", "hop"):
            raise ValueError(f"span must be 'receptive_field' or 'hop', got {span!r}")
        start = torch.arange(n_frames, dtype=torch.float64) * self.hop_length
        width = self.receptive_field if span == "receptive_field" else self.hop_length
        return (torch.stack([start, start + width], dim=-1) / self.sampling_rate).float()

    def time_to_frame(self, seconds: float) -> int:
        """Index of the frame whose hop ``[t * hop, (t + 1) * hop)`` contains ``seconds``."""
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0 or math.isnan(seconds):
            raise ValueError(f"seconds must be a non-negative number, got {seconds!r}")
        return int(seconds * self.sampling_rate // self.hop_length)

    # ------------------------------------------------------------------ inputs
    def prepare(
        self,
        input: AudioInput,
        sampling_rate: int | None = None,
        resample: bool = False,
        channel_axis: int | None = None,
        attention_mask: Any = None,
        normalize: bool | None = None,
        use_attention_mask: bool | None = None,
        options: AudioOptions | None = None,
    ) -> AudioBatch:
        """Validate and convert audio to a padded batch on the model's device (see :func:`prepare_audio`).

        The keyword arguments build an :class:`~encoderlens.io.audio.AudioOptions` (see :meth:`forward`);
        or pass ``options=`` directly.
        """
        opts = AudioOptions.resolve(
            options,
            sampling_rate=sampling_rate,
            resample=resample,
            channel_axis=channel_axis,
            normalize=normalize,
            use_attention_mask=use_attention_mask,
        )
        return self._prepare(input, opts, attention_mask)

    def _prepare(self, input: AudioInput, options: AudioOptions, attention_mask: Any) -> AudioBatch:
        batch = prepare_audio(input, self.preprocessing, self.receptive_field, options, attention_mask)
        p = self.frontend.projection.W
        return AudioBatch(
            batch.input_values.to(device=p.device, dtype=p.dtype),
            batch.sample_mask.to(p.device),
            batch.lengths.to(p.device),
            batch.sampling_rate,
            batch.use_attention_mask,
            batch.batched,
        )

    # ------------------------------------------------------------------ forward
    def encode(
        self,
        batch: AudioBatch,
        mask_time_indices: Any = None,
        stop_at_layer: int | None = None,
    ) -> tuple[Float[Tensor, "batch frames d_model"], Bool[Tensor, "batch frames"], Tensor, Tensor | None]:
        """Front end and blocks.

        Returns:
            ``(resid, frame_mask, features, features_normed)``; ``resid`` is the final state (after the final
            norm) or, with ``stop_at_layer``, the input of that block.
        """
        wave = batch.input_values
        if self.hook_waveform.bwd_hooks and not wave.requires_grad and torch.is_grad_enabled():
            # a backward hook on the samples (saliency) needs them in the graph even when no parameter is upstream
            wave = wave.detach().requires_grad_(True)
        wave = self.hook_waveform(wave)
        features = self.hook_features(self.frontend.conv_features(wave))
        n_frames = features.shape[1]
        frame_mask = frame_mask_from_lengths(
            batch.lengths, n_frames, self.cfg.frontend.conv_kernel, self.cfg.frontend.conv_stride
        )
        normed = self.frontend.projection.normalize(features)
        if self.hook_features_normed is not None:
            normed = self.hook_features_normed(normed)
        x = self.frontend.projection(normed)
        attn_mask = frame_mask if batch.use_attention_mask else None
        x = self._run_frames(x, attn_mask, mask_time_indices, stop_at_layer)
        return x, frame_mask, features, normed if self.hook_features_normed is not None else None

    def forward(
        self,
        input: AudioInput | AudioBatch,
        return_type: AudioReturnType | None = "auto",
        sampling_rate: int | None = None,
        resample: bool = False,
        channel_axis: int | None = None,
        attention_mask: Any = None,
        normalize: bool | None = None,
        use_attention_mask: bool | None = None,
        mask_time_indices: Any = None,
        stop_at_layer: int | None = None,
        options: AudioOptions | None = None,
        one_zero_attention_mask: Any = None,
    ) -> Any:
        """Run the encoder on audio, or on precomputed frames.

        Args:
            input: A waveform (1-D tensor / array / list of floats), a ``(batch, samples)`` array (for every
                batch size; a multi-channel recording needs ``channel_axis=``), a list of waveforms of any
                lengths, an audio file path, a list of paths, a prepared :class:`AudioBatch`; or, as in
                TransformerLens, precomputed frames from :meth:`to_frames`: a ``(batch, frames, d_model)``
                tensor or a ``(frames, frame_mask)`` tuple.
            return_type: ``"logits"`` (CTC logits), ``"hidden"`` (final residual stream, HF
                ``last_hidden_state``), ``"all"`` (:class:`AudioEncoderOutput`), ``"pretraining"``
                (:class:`QuantizerOutput`, wav2vec2 pre-training checkpoints), ``"auto"`` (logits with a CTC
                head, else hidden), or None (run for hooks only).
            sampling_rate: Rate of array inputs in Hz (default: the model's).
            resample: Resample arrays at another ``sampling_rate`` instead of raising.
            channel_axis: Treat a 2-D array as one multi-channel recording; average this axis.
            attention_mask: With a ``(batch, samples)`` tensor: its sample padding mask (1 = real); the model
                then uses it, as an HF model uses any ``attention_mask`` it is given.
            normalize: Override the feature extractor's ``do_normalize`` (False for already normalised input).
            use_attention_mask: Override the feature extractor's ``return_attention_mask``: whether padding is
                masked in the model (and excluded from the normalisation statistics). Default: as HF does for
                this checkpoint, which for group-norm checkpoints means no mask: padded items then differ
                slightly from the same audio run alone, in HF and here alike.
            mask_time_indices: ``(batch, frames)`` booleans: frames to replace by ``masked_spec_embed``.
            stop_at_layer: Return the residual stream entering this block (``"hidden"`` or None only).
            options: All of ``sampling_rate``, ``resample``, ``channel_axis``, ``normalize`` and
                ``use_attention_mask`` as one :class:`~encoderlens.io.audio.AudioOptions` (instead of those
                keywords, which build it).
            one_zero_attention_mask: With frames: ``(batch, frames)``, 1 = real frame (TransformerLens's
                keyword; it overrides a tuple's mask).
        """
        if return_type is not None and not isinstance(return_type, str):
            raise TypeError(
                f"return_type must be a string or None, got {type(return_type).__name__}; pass a frame mask as "
                "one_zero_attention_mask= (TransformerLens's second positional argument)"
            )
        if return_type not in _RETURN_TYPES:
            raise ValueError(f"return_type must be one of {_RETURN_TYPES}, got {return_type!r}")
        if return_type == "auto":
            return_type = cast(AudioReturnType, "hidden" if stop_at_layer is not None else self.default_return_type)
        if return_type == "logits" and self.ctc_head is None:
            raise ValueError(
                f"return_type='logits' needs a CTC head, and this {self.cfg.architecture} checkpoint has none; "
                "use return_type='hidden' (or load a *ForCTC checkpoint)"
            )
        if return_type == "pretraining" and self.quantizer is None:
            raise ValueError(
                "return_type='pretraining' needs the wav2vec2 quantizer (a Wav2Vec2ForPreTraining checkpoint)"
            )
        if stop_at_layer is not None and return_type not in ("hidden", None):
            raise ValueError("stop_at_layer returns the residual stream: use return_type='hidden'")
        opts = AudioOptions.resolve(
            options,
            sampling_rate=sampling_rate,
            resample=resample,
            channel_axis=channel_axis,
            normalize=normalize,
            use_attention_mask=use_attention_mask,
        )
        frames = frames_input(input)
        if frames is not None:
            if opts != AudioOptions() or attention_mask is not None or return_type in ("all", "pretraining"):
                raise ValueError(
                    "precomputed frames skip the front end: audio options, a sample attention_mask and "
                    "return_type='all' / 'pretraining' need audio input; pass one_zero_attention_mask= for frames"
                )
            x, mask = self._frames_and_mask(
                frames[0], frames[1] if one_zero_attention_mask is None else one_zero_attention_mask
            )
            hidden = self._run_frames(x, mask, mask_time_indices, stop_at_layer)
            if return_type == "logits":
                assert self.ctc_head is not None
                return self.ctc_head(hidden)
            return None if return_type is None else hidden
        if one_zero_attention_mask is not None:
            raise ValueError(
                "one_zero_attention_mask is a frame-level mask for frame inputs (model.to_frames); with audio pass "
                "the sample-level attention_mask= (or nothing: padding is tracked for lists of waveforms)"
            )
        if isinstance(input, AudioBatch):
            if opts != AudioOptions() or attention_mask is not None:
                raise ValueError(
                    "input is an AudioBatch, already prepared: audio options and attention_mask apply when it is "
                    "made; pass them to model.prepare(...) instead"
                )
            batch = input
        else:
            batch = self._prepare(input, opts, attention_mask)
        hidden, frame_mask, features, normed = self.encode(batch, mask_time_indices, stop_at_layer)
        if return_type is None:
            return None
        if return_type == "hidden":
            return hidden
        if return_type == "logits":
            assert self.ctc_head is not None
            return self.ctc_head(hidden)
        pre = self._pretraining(features, normed, hidden) if self.quantizer is not None else None
        if return_type == "pretraining":
            return pre
        return AudioEncoderOutput(
            hidden=hidden,
            logits=self.ctc_head(hidden) if self.ctc_head is not None else None,
            frame_mask=frame_mask,
            features=features,
            pretraining=pre,
            batch=batch,
        )

    def _pretraining(self, features: Tensor, normed: Tensor | None, hidden: Tensor) -> QuantizerOutput:
        assert self.quantizer is not None
        return self.quantizer(normed if normed is not None else features, hidden)

    # ------------------------------------------------------------------ CTC decoding
    def transcribe(
        self,
        input: AudioInput | AudioBatch,
        return_timestamps: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Greedy CTC decoding: argmax per frame, merge repeats, drop blanks, decode with the tokenizer.

        Only real frames are decoded (frames made from padding are dropped first). ``kwargs`` go to
        :meth:`forward` (``sampling_rate``, ``resample``...).

        Returns:
            A string for a single input (one file or one 1-D waveform), else a list of strings; with
            ``return_timestamps=True`` :class:`Transcription` objects instead.

        Example:
            >>> model.transcribe("speech.flac")
            'HELLO WORLD'
        """
        if self.ctc_head is None:
            raise ValueError(f"transcribe needs a CTC head, and this {self.cfg.architecture} checkpoint has none")
        if self.tokenizer is None:
            raise ValueError(
                "transcribe needs the CTC tokenizer (vocab.json) from the checkpoint folder; pass tokenizer=... "
                "to from_pretrained or set model.tokenizer"
            )
        out = self.forward(input, return_type="all", **kwargs)
        assert out.logits is not None
        ids = out.logits.argmax(-1)
        blank = self.cfg.ctc_head.blank_id if self.cfg.ctc_head is not None else 0
        results: list[Any] = []
        for row, valid in zip(ids, out.frame_mask):
            results.append(self._decode_row(row[valid].tolist(), blank))
        if not return_timestamps:
            results = [r.text for r in results]
        return results if out.batch.batched else results[0]

    def _decode_row(self, frame_ids: list[int], blank: int) -> Transcription:
        ids: list[int] = []
        starts: list[float] = []
        ends: list[float] = []
        sec = self.hop_length / self.sampling_rate
        prev = None
        for t, i in enumerate(frame_ids):
            if i != prev and i != blank:
                ids.append(i)
                starts.append(t * sec)
                ends.append((t + 1) * sec)
            elif i == prev and i != blank:
                ends[-1] = (t + 1) * sec
            prev = i
        tok = self.tokenizer
        try:
            text = tok.decode(ids, group_tokens=False)
        except TypeError:  # tokenizers without CTC grouping options
            text = tok.decode(ids)
        return Transcription(text, ids, tok.convert_ids_to_tokens(ids), starts, ends)

    # ------------------------------------------------------------------ cache support
    def stream_spec(self, stream: str | None = None) -> StreamSpec:
        if stream not in (None, "encoder"):
            raise ValueError(f"a HookedAudioEncoder has one residual stream; got stream={stream!r}, pass None")
        return StreamSpec(
            prefix="",
            n_layers=self.cfg.n_layers,
            n_heads=self.cfg.n_heads,
            norm_position=self.cfg.stack.norm_position,
            embed_hooks=("hook_projected", "hook_pos_conv"),
            embed_normalized=self.embed_ln is not None,
            final_norm="ln_final" if self.ln_final is not None else None,
            has_cross_attention=False,
            blocks=self.blocks,
            unembed_fn=self._folded_unembed if self.ctc_head is not None else None,
            unembed_note="" if self.ctc_head is not None else "this checkpoint has no CTC head",
        )

    def _folded_unembed(self) -> tuple[Tensor, Tensor]:
        """The CTC head with the final norm's affine folded in (see :func:`fold_norm_into_unembed`)."""
        assert self.ctc_head is not None
        return fold_norm_into_unembed(self.ln_final, self.ctc_head.W_U, self.ctc_head.b_U)

    # ------------------------------------------------------------------ model contract
    def _prepare_input(self, input: AudioInput | AudioBatch, **audio_options: Any) -> Prepared:
        """Waveforms, files, lists of unequal lengths or an :class:`AudioBatch`; options as :meth:`prepare`.

        Positions are frames: real frames come from :meth:`frame_mask`, labels are their start times.
        """
        if isinstance(input, AudioBatch):
            if audio_options:
                raise ValueError(
                    f"an AudioBatch is already prepared; do not also pass audio options {sorted(audio_options)}"
                )
            batch = input
        else:
            batch = self.prepare(input, **audio_options)
        n_frames = int(self.num_frames(int(batch.input_values.shape[1])))
        mask = self.frame_mask(batch.lengths, n_frames).long()
        # the hop tiling of frame_times(n_frames, span="hop"), kept in float64 so the hop stays exact
        start = torch.arange(n_frames, dtype=torch.float64) * self.hop_length
        times = torch.stack([start, start + self.hop_length], dim=-1) / self.sampling_rate
        return Prepared(
            family=self.family,
            args=(batch,),
            kwargs={},
            masks={None: mask},
            labels={None: frame_position_labels(times, mask)},
            times={None: times},
            batch_size=int(batch.input_values.shape[0]),
            alignment_hint="Give both recordings the same length (trim or pad the corrupted audio).",
        )

    def input_spec(self, stream: str | None = None) -> InputSpec:
        """The normalised, padded waveform (``hook_waveform``, ``(batch, samples)``)."""
        self.stream_spec(stream)  # validates the stream name
        return InputSpec("hook_waveform", "sample", float(self.sampling_rate))

    @property
    def default_return_type(self) -> str:
        """``"logits"`` (CTC) when the checkpoint has a CTC head, else ``"hidden"`` (final residual)."""
        return "logits" if self.ctc_head is not None else "hidden"

    def readout(self, stream: str | None = None) -> Readout | None:
        """The CTC head (linear), read after the final norm where there is one."""
        self.stream_spec(stream)  # validates the stream name
        if self.ctc_head is None:
            return None
        blank = self.cfg.ctc_head.blank_id if self.cfg.ctc_head is not None else None
        return Readout("ctc_head", "ctc", self.ctc_head, linear=True, return_type="logits", blank_id=blank)

    def example_input(self) -> ExampleInput:
        rate = int(self.sampling_rate)
        g = torch.Generator().manual_seed(0)
        return ExampleInput(torch.randn(1, rate, generator=g) * 0.1, {}, f"1 s of noise at {rate} Hz")
