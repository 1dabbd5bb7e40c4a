"""Whisper's log-mel spectrogram in torch, equal to HF's ``WhisperFeatureExtractor`` and differentiable.

For each waveform (already padded or trimmed to one chunk of ``n_samples``)::

    power = |STFT(wave, n_fft, hop, periodic Hann, centred with reflect padding)|^2, last frame dropped
    mel   = power @ filters                          # slaney-scale triangles, slaney (area) normalisation
    log   = log10(max(mel, 1e-10))
    log   = max(log, max_over_the_example(log) - 8)  # an 80 dB floor below the loudest bin
    out   = (log + 4) / 4

Hooks: ``hook_power`` ``(batch, frames, n_fft // 2 + 1)`` and ``hook_mel`` ``(batch, frames, n_mels)`` (the
encoder's input, HF's ``input_features`` transposed to put time first).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from encoderlens.config import LogMelConfig
from encoderlens.hooks import HookPoint

#: Slaney mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above (27 mels per factor 6.4).
_MIN_LOG_HZ, _MIN_LOG_MEL, _LOG_STEP = 1000.0, 15.0, 27.0 / math.log(6.4)


def _hz_to_mel(f: Tensor) -> Tensor:
    return torch.where(
        f >= _MIN_LOG_HZ, _MIN_LOG_MEL + torch.log(f.clamp(min=1e-10) / _MIN_LOG_HZ) * _LOG_STEP, 3.0 * f / 200.0
    )


def _mel_to_hz(m: Tensor) -> Tensor:
    return torch.where(m >= _MIN_LOG_MEL, _MIN_LOG_HZ * torch.exp((m - _MIN_LOG_MEL) / _LOG_STEP), 200.0 * m / 3.0)


def mel_filter_bank(n_freqs: int, n_mels: int, sampling_rate: int, f_max: float = 8000.0) -> Float[Tensor, "freq mel"]:
    """Triangular slaney-scale filters with slaney normalisation, in float64 (HF's ``mel_filter_bank(
    norm="slaney", mel_scale="slaney", min_frequency=0, max_frequency=8000)``)."""
    f64, cpu = torch.float64, torch.device("cpu")  # explicit: models are built under torch.device("meta")
    f_lo, f_hi = _hz_to_mel(torch.tensor([0.0, f_max], dtype=f64, device=cpu)).tolist()
    edges = _mel_to_hz(torch.linspace(f_lo, f_hi, n_mels + 2, dtype=f64, device=cpu))
    fft_freqs = torch.linspace(0, sampling_rate // 2, n_freqs, dtype=f64, device=cpu)
    widths = edges.diff()
    slopes = edges[None, :] - fft_freqs[:, None]
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    filters = torch.clamp(torch.minimum(down, up), min=0.0)
    return filters * (2.0 / (edges[2 : n_mels + 2] - edges[:n_mels]))[None]


class LogMelSpectrogram(nn.Module):
    """Waveforms ``(batch, n_samples)`` -> normalised log-mel features ``(batch, n_frames, n_mels)``."""

    window: Tensor
    filters: Tensor

    def __init__(self, cfg: LogMelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.hook_power = HookPoint()
        self.hook_mel = HookPoint()
        self.materialize()

    def materialize(self) -> None:
        """(Re)build the window and filter buffers on the CPU (not weights: they follow from the config)."""
        c = self.cfg
        self.register_buffer("window", torch.hann_window(c.n_fft, device="cpu"), persistent=False)
        filters = mel_filter_bank(c.n_fft // 2 + 1, c.n_mels, c.sampling_rate).float()
        self.register_buffer("filters", filters, persistent=False)

    def _apply(self, fn: Any, recurse: bool = True) -> LogMelSpectrogram:
        """Moves and casts as any module, but the window and filters stay float32 (or wider) under a cast to
        half precision: features are computed in float32, as HF's feature extractor does, then cast."""
        super()._apply(fn, recurse)
        if self.window.dtype in (torch.float16, torch.bfloat16):
            device = self.window.device
            self.materialize()
            self.window, self.filters = self.window.to(device), self.filters.to(device)
        return self

    def forward(self, wave: Float[Tensor, "batch samples"]) -> Float[Tensor, "batch frames n_mels"]:
        stft = torch.stft(
            wave, self.cfg.n_fft, self.cfg.hop_length, window=self.window.to(wave.dtype), return_complex=True
        )
        power = self.hook_power((stft[..., :-1].abs() ** 2).transpose(1, 2))
        log = torch.clamp(power @ self.filters.to(power.dtype), min=1e-10).log10()
        floor = log.amax(dim=(1, 2), keepdim=True) - 8.0
        log = torch.maximum(log, floor)
        return self.hook_mel((log + 4.0) / 4.0)
