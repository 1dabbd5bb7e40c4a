"""TransformerLens compatibility of HookedAudioEncoder: to_frames / encoder_output / frame inputs /
one_zero_attention_mask at frame level / processor, and (batch, samples) arrays for every batch size.

Numbers are compared with the HF model of the same tiny checkpoint (fp32, atol 1e-4).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2Model

from encoderlens import HookedAudioEncoder
from tests.conftest import raises_input_error
from tests.parity.test_audio_parity import randomize_all, save_checkpoint, tiny_kwargs, waveforms

ATOL = 1e-4


def _load(hf, tmp_path, mask: bool):
    randomize_all(hf)
    path, fe = save_checkpoint(hf.eval(), tmp_path, return_attention_mask=mask)
    return HookedAudioEncoder.from_pretrained(path), hf, fe


@pytest.fixture(scope="module")
def hubert_base(tmp_path_factory):
    """Group-norm front end, post-LN: HF's feature extractor gives no attention mask."""
    return _load(HubertModel(HubertConfig(**tiny_kwargs())), tmp_path_factory.mktemp("hb"), mask=False)


@pytest.fixture(scope="module")
def w2v_large(tmp_path_factory):
    """Layer-norm front end, pre-LN: padding is masked."""
    cfg = Wav2Vec2Config(**tiny_kwargs(feat_extract_norm="layer", do_stable_layer_norm=True))
    return _load(Wav2Vec2Model(cfg), tmp_path_factory.mktemp("wl"), mask=True)


def test_frames_api_on_a_single_waveform(hubert_base):
    model, hf, fe = hubert_base
    wav = waveforms()[0]
    frames, mask = model.to_frames([wav], sampling_rate=16000)
    assert mask is None  # as HF's feature extractor for this checkpoint: no attention mask
    with torch.no_grad():
        ref = hf(fe(wav, sampling_rate=16000, return_tensors="pt").input_values).last_hidden_state
    for out in (model(frames), model((frames, None)), model.encoder_output(frames), model(wav[None])):
        assert out.shape == ref.shape and (out - ref).abs().max() < ATOL
    _, cache = model.run_with_cache(torch.from_numpy(wav)[None], return_type="hidden")
    assert torch.allclose(cache["hook_projected"], frames, atol=1e-6)
    _, cache = model.run_with_cache(frames, one_zero_attention_mask=mask, remove_batch_dim=True)
    assert cache["pattern", 0].shape == (3, frames.shape[1], frames.shape[1])
    assert type(model.processor) is type(fe) and model.processor.sampling_rate == 16000


def test_frames_with_a_frame_mask_match_hf_on_a_padded_batch(w2v_large):
    model, hf, fe = w2v_large
    waves = waveforms()
    frames, mask = model.to_frames(waves)
    assert mask is not None and mask.dtype == torch.long and mask.shape == frames.shape[:2]
    feats = fe(waves, sampling_rate=16000, padding=True, return_attention_mask=True, return_tensors="pt")
    with torch.no_grad():
        ref = hf(feats.input_values, attention_mask=feats.attention_mask).last_hidden_state
    real = mask.bool()
    for out in (model((frames, mask)), model(frames, one_zero_attention_mask=mask), model.encoder_output(frames, mask)):
        assert (out - ref)[real].abs().max() < ATOL
    assert (model(waves) - ref)[real].abs().max() < ATOL
    # the keyword overrides a tuple's mask; a mask of ones attends to padding and changes the padded items
    ones = torch.ones_like(mask)
    assert torch.equal(model((frames, mask), one_zero_attention_mask=ones), model(frames))
    assert not torch.allclose(model(frames)[1][real[1]], ref[1][real[1]], atol=ATOL)


def test_frame_input_errors(w2v_large):
    model, _, _ = w2v_large
    wav = waveforms()[0]
    frames, mask = model.to_frames(wav)
    with raises_input_error(TypeError, "one_zero_attention_mask=", param="return_type"):
        model(frames, mask)  # TL's positional mask lands on return_type here
    with pytest.raises(ValueError, match="frame-level mask"):
        model(wav, one_zero_attention_mask=mask)
    with pytest.raises(ValueError, match="d_model"):
        model(frames[..., :-1])
    with pytest.raises(ValueError, match=r"\(batch, frames\)"):
        model(frames, one_zero_attention_mask=mask[:, :-1])
    with pytest.raises(ValueError, match="need audio input"):
        model(frames, return_type="all")


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_a_2d_array_is_a_batch_for_every_size(hubert_base, batch):
    model, _, _ = hubert_base
    wav = waveforms()[0]
    rows = np.stack([wav * (k + 1) for k in range(batch)])
    out = model(torch.from_numpy(rows))
    assert out.shape[0] == batch
    for k in range(batch):
        assert (out[k] - model(rows[k])[0]).abs().max() < ATOL


def test_multichannel_audio_needs_channel_axis(hubert_base):
    model, _, _ = hubert_base
    wav = waveforms()[0]
    stereo = np.stack([wav, 0.5 * wav])
    mono = model(stereo, channel_axis=0)
    assert mono.shape[0] == 1 and (mono - model(stereo.mean(0))).abs().max() < ATOL
    with pytest.raises(ValueError, match="channel_axis=1"):
        model(stereo.T)  # (samples, channels)
