"""Whisper token timestamps from the alignment heads (median filter + DTW) against HF's
``generate(..., return_token_timestamps=True)``, with and without the audio's frame counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor

from encoderlens import HookedWhisper
from encoderlens.models.whisper_alignment import dtw, median_filter
from tests.parity.test_whisper_parity import RATE, _generating, _generation_config, speech_like

HEADS = [[1, 0], [2, 2], [2, 1]]


def test_median_filter_and_dtw_basics():
    x = torch.tensor([[1.0, 9.0, 2.0, 3.0, 8.0, 4.0]])
    assert median_filter(x, 3).tolist() == [[9.0, 2.0, 3.0, 3.0, 4.0, 8.0]]  # reflect-padded edges
    with pytest.raises(ValueError, match="odd"):
        median_filter(x, 4)
    text, time = dtw(-np.eye(3, 5, dtype=np.float64))
    assert text[0] == 0 and time[0] == 0 and text[-1] == 2 and time[-1] == 4
    assert (np.diff(text) >= 0).all() and (np.diff(time) >= 0).all()


@pytest.mark.parametrize("with_frames", [False, True])
def test_token_timestamps_equal_hf(with_frames):
    hf = _generating()
    hf.generation_config = _generation_config(alignment_heads=HEADS)
    model = HookedWhisper.from_pretrained(hf_model=hf, generation_config=hf.generation_config)
    waves = speech_like((RATE * 28, RATE * 9, RATE * 25), seed=7)
    fe = WhisperFeatureExtractor()(waves, sampling_rate=RATE, return_tensors="pt", return_attention_mask=True)
    kw = dict(language="en", max_new_tokens=20)
    extra = {"attention_mask": fe.attention_mask} if with_frames else {}
    with torch.no_grad():
        theirs = hf.generate(input_features=fe.input_features, return_token_timestamps=True, **kw, **extra)
    tokens = model.generate(waves, **kw)
    assert torch.equal(tokens[:, 4:], theirs["sequences"])
    frames = fe.attention_mask.sum(-1) if with_frames else None
    ours = model.token_timestamps(waves, tokens, num_input_ids=4, num_frames=frames)
    assert ours.shape == tokens.shape
    assert torch.allclose(ours[:, 4:], theirs["token_timestamps"], atol=1e-6)
    assert bool((ours[:, 5:] > 0).any())  # not all at zero
    assert bool((ours.diff(dim=1) >= 0).all())  # DTW is monotone
    if with_frames:
        assert float(ours[1].max()) <= 9.0 + 1e-6  # the 9 s audio: times inside its frames
    no_heads = HookedWhisper.from_pretrained(hf_model=hf, generation_config=_generation_config())
    with pytest.raises(ValueError, match="no alignment_heads"):
        no_heads.token_timestamps(waves, tokens, num_input_ids=4)
