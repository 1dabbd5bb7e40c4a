"""Audio inputs: files, arrays, tensors and lists of them -> padded mono batch at the model's rate + mask.

Accepted inputs (one item or a list of items, which may have different lengths):

- a 1-D float waveform: ``torch.Tensor``, ``numpy.ndarray`` or a list of floats;
- a 2-D float array ``(batch, samples)`` of equal-length waveforms, for every batch size (HF's and
  TransformerLens's convention); a multi-channel recording is one 2-D array with ``channel_axis=``;
- a path (``str`` / ``os.PathLike``) to an audio file soundfile can read (wav, flac, ogg...): it is
  decoded to float, downmixed to mono (mean over channels) and resampled to the model's rate.

Sampling rates: arrays are taken to be at the model's rate unless ``sampling_rate=`` says otherwise; a
different rate is an error unless ``resample=True`` (files are always resampled, their rate is in
their header). Resampling is :func:`resample`, a Kaiser-windowed sinc interpolation done in torch
(differentiable, runs on any device).

Normalisation and padding follow HF's ``Wav2Vec2FeatureExtractor`` exactly, see :func:`prepare_audio`.

Errors: wrong rate without ``resample=True``, ``(samples, channels)`` arrays without ``channel_axis``, empty or too-short
audio, NaN/inf samples, integer PCM, missing files and unreadable formats each raise a ``ValueError``
or ``TypeError`` saying what was expected, what arrived and how to fix it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

AudioInput = Union[str, os.PathLike, Tensor, np.ndarray, Sequence[float], Sequence[Any]]

#: Resampling defaults: a Kaiser-windowed sinc with 32 zero crossings on each side, cut-off at 95 % of the
#: lower Nyquist frequency, Kaiser beta 12 (about -120 dB stop band). A 440 Hz sine resampled
#: 44.1 kHz -> 16 kHz matches the exact 16 kHz sine to ~3e-7.
RESAMPLE_ZERO_CROSSINGS = 32
RESAMPLE_ROLLOFF = 0.95
RESAMPLE_BETA = 12.0
_MAX_KERNEL_ELEMENTS = 20_000_000


class AudioFileNotFoundError(FileNotFoundError, ValueError):
    """An audio path that does not exist (both ``FileNotFoundError`` and ``ValueError``)."""


@dataclass(frozen=True)
class AudioPreprocessing:
    """How raw audio becomes model input; mirrors the checkpoint's ``Wav2Vec2FeatureExtractor``.

    Attributes:
        sampling_rate: The rate the model was trained at (Hz).
        do_normalize: Zero-mean, unit-variance normalisation of each waveform (``eps = 1e-7``).
        return_attention_mask: Whether HF's feature extractor returns (and the model receives) a padding
            mask. HF sets it False for group-norm checkpoints (wav2vec2-base, hubert-base), which were
            trained without one; padded batches are then fed with zeros as padding and no mask.
        padding_value: Value written into padding.
    """

    sampling_rate: int = 16000
    do_normalize: bool = True
    return_attention_mask: bool = False
    padding_value: float = 0.0

    @classmethod
    def from_feature_extractor(cls, fe: Any, default_return_attention_mask: bool) -> AudioPreprocessing:
        """Read the settings of an HF feature extractor (or defaults when ``fe`` is None)."""
        if fe is None:
            return cls(return_attention_mask=default_return_attention_mask)
        return cls(
            sampling_rate=int(getattr(fe, "sampling_rate", 16000)),
            do_normalize=bool(getattr(fe, "do_normalize", True)),
            return_attention_mask=bool(getattr(fe, "return_attention_mask", default_return_attention_mask)),
            padding_value=float(getattr(fe, "padding_value", 0.0)),
        )


@dataclass(frozen=True)
class AudioOptions:
    """How to read one call's audio input (the caller's choices; the checkpoint's are :class:`AudioPreprocessing`).

    Attributes:
        sampling_rate: Rate of array inputs in Hz (None: the model's). Files carry their own rate.
        resample: Resample arrays whose ``sampling_rate`` differs from the model's (else raise).
        channel_axis: Treat a 2-D array as one multi-channel recording and average this axis (0/1, -1/-2).
        normalize: Override the checkpoint's ``do_normalize`` (False for already normalised input).
        use_attention_mask: Override the checkpoint's ``return_attention_mask``: whether padding is masked
            in the model (and excluded from the normalisation statistics).

    Example:
        >>> opts = AudioOptions(sampling_rate=44100, resample=True)
        >>> model(wave, options=opts)   # the same as model(wave, sampling_rate=44100, resample=True)
    """

    sampling_rate: int | None = None
    resample: bool = False
    channel_axis: int | None = None
    normalize: bool | None = None
    use_attention_mask: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "sampling_rate", _check_rate(self.sampling_rate))
        if not isinstance(self.resample, bool):
            raise TypeError(f"resample must be True or False, got {self.resample!r}")
        if self.channel_axis is not None and (
            isinstance(self.channel_axis, bool) or self.channel_axis not in (0, 1, -1, -2)
        ):
            raise ValueError(f"channel_axis must be 0 or 1 (or -1/-2) for a 2-D array, got {self.channel_axis!r}")
        for name in ("normalize", "use_attention_mask"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, bool):
                raise TypeError(f"{name} must be True, False or None, got {v!r}")

    @classmethod
    def resolve(cls, options: AudioOptions | None = None, **given: Any) -> AudioOptions:
        """``options`` if given, else the options the keyword arguments name; not both.

        Example:
            >>> AudioOptions.resolve(None, sampling_rate=8000, resample=True)
            AudioOptions(sampling_rate=8000, resample=True, channel_axis=None, normalize=None, use_attention_mask=None)
        """
        default = cls()
        changed = sorted(k for k, v in given.items() if v != getattr(default, k))
        if options is None:
            return cls(**given)
        if not isinstance(options, AudioOptions):
            raise TypeError(f"options must be an AudioOptions, got {type(options).__name__}")
        if changed:
            raise ValueError(f"pass either options=AudioOptions(...) or {changed}, not both")
        return options


@dataclass
class AudioBatch:
    """A padded batch ready for the conv front end.

    Attributes:
        input_values: Normalised, padded waveforms (what HF calls ``input_values``).
        sample_mask: 1 for real samples, 0 for padding.
        lengths: Real samples per item.
        sampling_rate: Rate of ``input_values`` (the model's rate).
        use_attention_mask: Whether the model is to receive the padding mask (HF's ``attention_mask``).
        batched: False when the input was a single item (one 1-D waveform or one file).
    """

    input_values: Float[Tensor, "batch samples"]
    sample_mask: Int[Tensor, "batch samples"]
    lengths: Int[Tensor, " batch"]
    sampling_rate: int
    use_attention_mask: bool
    batched: bool = True


# ---------------------------------------------------------------------------------------------- resampling
def _sinc_kernel(
    orig: int, new: int, zero_crossings: int, rolloff: float, beta: float, dtype: torch.dtype, device: Any
) -> tuple[Tensor, int]:
    base = min(orig, new) * rolloff
    width = math.ceil(zero_crossings * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64, device=device)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=torch.float64, device=device)[:, None, None] / new + idx
    t = (t * base).clamp(-zero_crossings, zero_crossings)
    window = torch.i0(beta * torch.sqrt((1 - (t / zero_crossings) ** 2).clamp(min=0.0)))
    window = window / torch.i0(torch.tensor(beta, dtype=torch.float64))
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)
    return (sinc * window * (base / orig)).to(dtype), width


def resample(
    waveform: Float[Tensor, "... samples"],
    orig_rate: int,
    new_rate: int,
    zero_crossings: int = RESAMPLE_ZERO_CROSSINGS,
    rolloff: float = RESAMPLE_ROLLOFF,
    beta: float = RESAMPLE_BETA,
) -> Float[Tensor, "... new_samples"]:
    """Resample by band-limited (Kaiser-windowed sinc) interpolation, polyphase, in torch.

    Both rates are divided by their gcd; each of the ``new`` output phases gets its own filter and a
    strided ``conv1d`` applies them all. The low-pass cut-off is ``rolloff * min(orig, new) / 2``; the
    signal is zero-padded at both ends (so the first and last ``zero_crossings`` output samples see the
    edge). Output length: ``ceil(len * new / orig)``. Differentiable; works on any device.

    Args:
        waveform: ``(..., samples)`` float tensor.
        orig_rate: Its sampling rate (Hz).
        new_rate: Target rate (Hz).
        zero_crossings: Filter half-width in zero crossings of the sinc (longer = sharper transition).
        rolloff: Cut-off as a fraction of the lower Nyquist frequency.
        beta: Kaiser window shape (higher = lower stop band, wider transition).

    Example:
        >>> y = resample(torch.randn(44100), 44100, 16000)
        >>> y.shape
        torch.Size([16000])
    """
    for name, r in (("orig_rate", orig_rate), ("new_rate", new_rate)):
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r <= 0:
            raise ValueError(f"{name} must be a positive integer number of Hz, got {r!r}")
    if not isinstance(waveform, Tensor) or not waveform.dtype.is_floating_point:
        raise TypeError("resample expects a float torch.Tensor of shape (..., samples)")
    orig_rate, new_rate = int(orig_rate), int(new_rate)
    if orig_rate == new_rate:
        return waveform
    g = math.gcd(orig_rate, new_rate)
    orig, new = orig_rate // g, new_rate // g
    if new * (orig + 2 * math.ceil(zero_crossings * orig / (min(orig, new) * rolloff))) > _MAX_KERNEL_ELEMENTS:
        raise ValueError(
            f"resampling {orig_rate} Hz -> {new_rate} Hz needs a {new} x {orig} polyphase filter bank, too large; "
            "resample to a rate with a larger common divisor first (e.g. 48000 or 44100 Hz)"
        )
    kernel, width = _sinc_kernel(orig, new, zero_crossings, rolloff, beta, waveform.dtype, waveform.device)
    shape = waveform.shape
    x = waveform.reshape(-1, shape[-1])
    length = x.shape[-1]
    x = F.pad(x, (width, width + orig))
    y = F.conv1d(x[:, None], kernel, stride=orig)  # (n, new phases, steps)
    y = y.transpose(1, 2).reshape(x.shape[0], -1)
    target = math.ceil(new * length / orig)
    return y[:, :target].reshape(*shape[:-1], target)


# ---------------------------------------------------------------------------------------------- files
def load_audio(path: str | os.PathLike[str], sampling_rate: int | None = None) -> tuple[Float[Tensor, " samples"], int]:
    """Read an audio file as a mono float32 waveform.

    Integer PCM is scaled to ``[-1, 1)`` by soundfile; channels are averaged. With ``sampling_rate``,
    the audio is resampled to that rate with :func:`resample`.

    Returns:
        ``(waveform, rate)``: the rate is ``sampling_rate`` when given, else the file's.

    Example:
        >>> wave, sr = load_audio("speech.flac", sampling_rate=16000)
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"expected a file path (str or os.PathLike), got {type(path).__name__}")
    p = Path(path).expanduser()
    if not p.exists():
        raise AudioFileNotFoundError(f"audio file not found: {str(p)!r}; check the path")
    if p.is_dir():
        raise ValueError(f"{str(p)!r} is a folder; pass an audio file (wav, flac, ogg...)")
    try:
        import soundfile as sf
    except ImportError:
        raise ImportError(
            "reading audio files needs the 'soundfile' package: pip install 'encoderlens[audio]' "
            "(or pass the waveform as an array)"
        ) from None
    try:
        data, rate = sf.read(str(p), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises its own LibsndfileError / RuntimeError types
        formats = ", ".join(sorted(sf.available_formats()))
        raise ValueError(
            f"could not read {str(p)!r} as audio ({type(e).__name__}: {e}). Supported formats: {formats}; "
            "convert the file (e.g. to wav or flac) or decode it yourself and pass the array"
        ) from None
    if data.shape[0] == 0:
        raise ValueError(f"audio file {str(p)!r} holds no samples")
    wave = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1), dtype=np.float32))
    if sampling_rate is not None and sampling_rate != rate:
        wave = resample(wave.double(), rate, sampling_rate).float()
        rate = sampling_rate
    return wave, int(rate)


# ---------------------------------------------------------------------------------------------- arrays
def _check_rate(sampling_rate: Any) -> int | None:
    if sampling_rate is None:
        return None
    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, np.integer)) or sampling_rate <= 0:
        raise ValueError(f"sampling_rate must be a positive integer number of Hz, got {sampling_rate!r}")
    return int(sampling_rate)


def _as_tensor(x: Any, what: str) -> Tensor:
    if isinstance(x, Tensor):
        t = x
    elif isinstance(x, np.ndarray):
        if x.dtype == object:
            raise TypeError(f"{what}: got a numpy array of dtype object; pass a float array")
        t = torch.from_numpy(np.ascontiguousarray(x))
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as e:
            raise TypeError(f"{what}: could not make a waveform array from {type(x).__name__} ({e})") from None
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{what}: expected float samples, got dtype {t.dtype}")
    if not t.dtype.is_floating_point:
        info = np.iinfo(np.dtype(str(t.dtype).replace("torch.", "")))
        scale = 2.0 ** (info.bits - 1)
        raise TypeError(
            f"{what}: got integer PCM (dtype {t.dtype}); the model expects float samples in [-1, 1]. "
            f"Scale it first, e.g. x.astype(np.float32) / {scale:.0f} for {t.dtype}"
            + (" (unsigned: (x - 128) / 128)" if info.min == 0 else "")
        )
    return t


def _check_values(t: Tensor, what: str) -> None:
    if t.numel() == 0:
        raise ValueError(f"{what}: empty audio (0 samples); pass a non-empty waveform")
    finite = torch.isfinite(t.detach())
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(f"{what}: {bad} sample(s) are NaN or infinite; clean the audio (e.g. np.nan_to_num) first")
    peak = float(t.detach().abs().max())
    if peak >= 2.0 and bool((t.detach() == t.detach().round()).all()):
        raise ValueError(
            f"{what}: every sample is a whole number and the peak is {peak:.0f}: this looks like integer PCM stored "
            "as float. Scale it to [-1, 1] first, e.g. x / 32768 for 16-bit audio"
        )


#: A 2-D array with at most this many columns and more rows is taken for ``(samples, channels)`` audio.
_MAX_CHANNELS = 8


def _mono_items(x: Tensor, what: str, channel_axis: int | None) -> list[Tensor]:
    """Split an array into 1-D waveforms: ``(batch, samples)`` rows, or channels averaged with ``channel_axis``.

    ``(samples, channels)`` layouts (a few columns, many rows) are refused with a hint to ``channel_axis=1``.
    """
    if channel_axis is not None:
        if x.ndim != 2:
            raise ValueError(
                f"{what}: channel_axis={channel_axis} needs a 2-D multi-channel array, got shape {tuple(x.shape)}"
            )
        if channel_axis not in (0, 1, -1, -2):
            raise ValueError(f"channel_axis must be 0 or 1 (or -1/-2) for a 2-D array, got {channel_axis}")
        return [x.mean(dim=channel_axis)]
    if x.ndim == 0:
        raise ValueError(f"{what}: got a scalar; expected a waveform of shape (samples,)")
    if x.ndim == 1:
        return [x]
    if x.ndim == 2:
        b, s = x.shape
        if s <= _MAX_CHANNELS < b:
            raise ValueError(
                f"{what}: got shape {tuple(x.shape)}, which looks like (samples, channels) multi-channel audio. "
                "Pass channel_axis=1 to average the channels to mono, or x.mean(-1) yourself; a batch of "
                "waveforms is (batch, samples) or a list of 1-D arrays"
            )
        # (batch, samples) for every batch size, as in HF and TransformerLens; (channels, samples)
        # recordings need channel_axis=0
        return list(x.unbind(0))
    raise ValueError(
        f"{what}: expected audio of shape (samples,) or (batch, samples), got {tuple(x.shape)}; "
        "pass mono audio or a list of 1-D arrays"
    )


def _is_number_list(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(v, (int, float, np.number)) for v in x)


def to_waveforms(input: AudioInput, target_rate: int, options: AudioOptions | None = None) -> tuple[list[Tensor], bool]:
    """Validate any accepted input and return mono float waveforms at ``target_rate``.

    Args:
        input: See the module docstring.
        target_rate: The model's rate.
        options: ``sampling_rate``, ``resample`` and ``channel_axis`` are used.

    Returns:
        ``(waveforms, batched)``: ``batched`` is False for a single item (one file / 1-D waveform).
    """
    options = options if options is not None else AudioOptions()
    rate = options.sampling_rate
    channel_axis = options.channel_axis
    if isinstance(input, (str, os.PathLike)):
        items: list[Any] = [input]
        batched = False
    elif isinstance(input, (Tensor, np.ndarray)):
        items = [input]
        batched = input.ndim == 2 and channel_axis is None
    elif _is_number_list(input):
        items = [input]
        batched = False
    elif isinstance(input, (list, tuple)):
        if len(input) == 0:
            raise ValueError("got an empty list; pass at least one waveform or file path")
        items = list(input)
        batched = True
    else:
        raise TypeError(
            f"expected a waveform (1-D tensor, numpy array or list of floats), a list of waveforms, or an audio "
            f"file path; got {type(input).__name__}"
        )
    out: list[Tensor] = []
    for item in items:
        what = f"audio item {len(out)}" if batched else "audio"
        if isinstance(item, (str, os.PathLike)):
            wave, file_rate = load_audio(item)
            if rate is not None and rate != file_rate:
                raise ValueError(
                    f"{what}: sampling_rate={rate} was given but {str(item)!r} is {file_rate} Hz; files are read at "
                    "their own rate (and resampled to the model's), so drop sampling_rate for file inputs"
                )
            if file_rate != target_rate:
                wave = resample(wave.double(), file_rate, target_rate).float()
            _check_values(wave, what)
            out.append(wave)
            continue
        if isinstance(item, (list, tuple)) and not _is_number_list(item):
            inner = type(item[0]).__name__ if item else "nothing"
            raise TypeError(
                f"{what}: expected a 1-D waveform or a file path, got a {type(item).__name__} of {inner}; "
                "nest at most one level (a list of waveforms)"
            )
        t = _as_tensor(item, what)
        if isinstance(input, (list, tuple)) and batched and t.ndim != 1 and channel_axis is None:
            raise ValueError(
                f"{what}: each item of a list must be a 1-D mono waveform, got shape {tuple(t.shape)}; "
                "pass channel_axis=... to downmix multi-channel items"
            )
        for w in _mono_items(t, what, channel_axis):
            w_what = f"audio item {len(out)}" if batched else "audio"
            _check_values(w, w_what)
            if rate is not None and rate != target_rate:
                if not options.resample:
                    raise ValueError(
                        f"{w_what}: sampling_rate={rate} Hz but the model expects {target_rate} Hz. Pass "
                        "resample=True to resample (Kaiser-windowed sinc), or resample the audio yourself"
                    )
                w = resample(w.double(), rate, target_rate)
            out.append(w.float())
    return out, batched


def normalize_waveform(x: Float[Tensor, " samples"], eps: float = 1e-7) -> Float[Tensor, " samples"]:
    """Zero mean, unit variance (population variance), as HF's ``zero_mean_unit_var_norm``."""
    mean = x.mean()
    return (x - mean) / torch.sqrt(((x - mean) ** 2).mean() + eps)


def prepare_audio(
    input: AudioInput,
    preprocessing: AudioPreprocessing,
    min_samples: int = 1,
    options: AudioOptions | None = None,
    attention_mask: Any = None,
) -> AudioBatch:
    """Validate, convert, pad and normalise audio exactly as HF's ``Wav2Vec2FeatureExtractor(padding=True)``.

    - Waveforms are padded on the right with ``padding_value`` to the longest one.
    - With ``do_normalize``: when the padding mask is used (``return_attention_mask``), each waveform is
      normalised over its real samples and its padding is reset to ``padding_value``; when it is not
      (group-norm checkpoints), HF normalises each *padded* row, padding included, and so do we.
      A single waveform, or equal lengths, are unaffected by this distinction.
    - Gradients flow from the returned ``input_values`` back to float tensors you passed in.

    Args:
        input: See the module docstring.
        preprocessing: The checkpoint's settings.
        min_samples: Shortest waveform accepted (the conv front end's receptive field).
        options: The caller's :class:`AudioOptions` (rate, resampling, channels, normalisation, mask use).
        attention_mask: With a ``(batch, samples)`` tensor: its padding mask (1 = real sample), as HF takes.
            Given one, the model uses it (unless ``options.use_attention_mask=False``).

    Returns:
        An :class:`AudioBatch`.
    """
    options = options if options is not None else AudioOptions()
    if options.use_attention_mask is None:
        # a mask the caller passed is meant to be used, as HF's model uses any attention_mask it is given
        use_mask = preprocessing.return_attention_mask or attention_mask is not None
    else:
        use_mask = options.use_attention_mask
    do_norm = preprocessing.do_normalize if options.normalize is None else options.normalize
    waves, batched = to_waveforms(input, preprocessing.sampling_rate, options)
    if attention_mask is not None:
        waves = _apply_sample_mask(waves, attention_mask)
    rate = preprocessing.sampling_rate
    for n, w in enumerate(waves):
        if w.shape[0] < min_samples:
            what = f"audio item {n}" if len(waves) > 1 else "audio"
            raise ValueError(
                f"{what} has {w.shape[0]} samples ({1000 * w.shape[0] / rate:.1f} ms at {rate} Hz), shorter than the "
                f"conv front end's receptive field of {min_samples} samples ({1000 * min_samples / rate:.1f} ms); "
                "pass longer audio (or pad it with silence)"
            )
    lengths = torch.tensor([w.shape[0] for w in waves], dtype=torch.long)
    longest = int(lengths.max())
    pad = preprocessing.padding_value
    if do_norm and use_mask:
        waves = [normalize_waveform(w) for w in waves]
    rows = [F.pad(w, (0, longest - w.shape[0]), value=pad) for w in waves]
    values = torch.stack(rows)
    if do_norm and not use_mask:
        # HF normalises the padded rows when it returns no mask (padding enters the statistics)
        values = torch.stack([normalize_waveform(r) for r in values])
    sample_mask = (torch.arange(longest)[None, :] < lengths[:, None]).long()
    return AudioBatch(values, sample_mask, lengths, rate, use_mask, batched)


def _apply_sample_mask(waves: list[Tensor], attention_mask: Any) -> list[Tensor]:
    """Cut the padding a caller-made ``(batch, samples)`` mask marks (1 = real, 0 = padding)."""
    m = attention_mask if isinstance(attention_mask, Tensor) else torch.as_tensor(np.asarray(attention_mask))
    if m.ndim == 1:
        m = m[None]
    if m.ndim != 2 or m.shape[0] != len(waves) or any(m.shape[1] != w.shape[0] for w in waves):
        raise ValueError(
            f"attention_mask must have shape (batch, samples) = ({len(waves)}, {waves[0].shape[0]}), got "
            f"{tuple(m.shape)}; build it with the same padding as the waveforms (1 = real sample, 0 = padding)"
        )
    if m.dtype != torch.bool and not bool(((m == 0) | (m == 1)).all()):
        raise ValueError("attention_mask must hold only 0 and 1 (1 = real sample)")
    m = m.bool()
    out = []
    for n, (w, row) in enumerate(zip(waves, m)):
        k = int(row.sum())
        if k == 0:
            raise ValueError(f"attention_mask row {n} marks no real sample; every item needs audio")
        if not bool(row[:k].all()):
            raise ValueError(
                f"attention_mask row {n} is not right-padded (1s then 0s); only right padding is supported"
            )
        out.append(w[:k])
    return out
