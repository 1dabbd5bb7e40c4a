"""Whisper in half precision: features are computed in float32 (as HF's feature extractor does), then cast.

Before the fix the waveform was cast to the model's dtype first: ``torch.stft`` refused bfloat16 / float16
on the CPU (and cuFFT refuses half precision for n_fft=400), so a Whisper loaded with
``dtype=torch.bfloat16`` could not run, and a cast model held its Hann window and mel filters in bf16.
"""

from __future__ import annotations

import pytest
import torch

import encoderlens
from tests.parity.test_whisper_parity import make_whisper, speech_like


@pytest.fixture(scope="module")
def hf():
    return make_whisper()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_whisper_runs_on_float32_features(hf, dtype):
    full = encoderlens.from_pretrained(hf_model=hf)
    half = encoderlens.from_pretrained(hf_model=hf, dtype=dtype)
    assert half.mel.window.dtype == half.mel.filters.dtype == torch.float32  # kept through the cast
    assert torch.equal(half.mel.window, full.mel.window) and torch.equal(half.mel.filters, full.mel.filters)
    audio = speech_like(lengths=(9_000, 12_345))
    with torch.no_grad():
        feats = half.features(audio)
        assert feats.dtype == dtype
        torch.testing.assert_close(feats, full.features(audio).to(dtype), atol=0, rtol=0)
        prompt = half.prompt_ids()
        logits = half(audio, decoder_input=prompt)
        want = full(audio, decoder_input=prompt)
    assert logits.dtype == dtype
    scale = want.abs().max().item()
    assert (logits.float() - want).abs().max().item() < 0.03 * scale  # bf16 / fp16 rounding
    heard = half.generate(audio, max_new_tokens=3)
    assert heard.shape[0] == 2 and heard.dtype == torch.long  # generation reads the half-precision logits
    # a model cast after loading keeps float32 buffers too, and can move them
    cast = full.to(dtype)
    assert cast.mel.window.dtype == torch.float32 and cast.mel.window.device.type == "cpu"
