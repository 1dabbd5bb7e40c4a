"""Audio inputs: files (wav/flac, stereo, int16 PCM), resampling accuracy, HF feature-extractor parity, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import Wav2Vec2FeatureExtractor

from encoderlens.io.audio import (
    AudioFileNotFoundError,
    AudioOptions,
    AudioPreprocessing,
    load_audio,
    prepare_audio,
    resample,
    to_waveforms,
)
from tests.conftest import raises_input_error

RATE = 16000


def sine(freq: float, rate: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.sin(2 * np.pi * freq * t)


def test_stereo_int16_wav_is_scaled_and_downmixed(tmp_path):
    g = np.random.default_rng(0)
    pcm = g.integers(-20000, 20000, size=(1600, 2), dtype=np.int16)
    path = tmp_path / "stereo.wav"
    sf.write(path, pcm, RATE, subtype="PCM_16")
    wave, rate = load_audio(path)
    assert rate == RATE and wave.dtype == torch.float32 and wave.shape == (1600,)
    expected = pcm.astype(np.float64).mean(1) / 32768
    assert np.abs(wave.numpy() - expected).max() < 1e-6


def test_flac_is_resampled_to_the_model_rate(tmp_path):
    x = 0.5 * sine(440.0, 44100)
    path = tmp_path / "tone.flac"
    sf.write(path, x, 44100, subtype="PCM_24")
    waves, batched = to_waveforms(str(path), RATE)
    assert not batched and waves[0].shape == (RATE,)
    ref = 0.5 * sine(440.0, RATE)
    assert np.abs(waves[0].numpy() - ref)[100:-100].max() < 1e-4  # 24-bit quantisation + resampling
    # a list of files (and files mixed with arrays) is a padded batch
    batch = prepare_audio([path, ref[:9000].astype(np.float32)], AudioPreprocessing(do_normalize=False))
    assert batch.input_values.shape == (2, RATE) and batch.lengths.tolist() == [RATE, 9000]
    assert batch.sample_mask[1, 9000:].sum() == 0 and batch.input_values[1, 9000:].abs().max() == 0


@pytest.mark.parametrize("orig", [8000, 22050, 44100, 48000])
def test_resampling_accuracy_on_a_sine(orig):
    for freq in (440.0, 3000.0):
        y = resample(torch.tensor(sine(freq, orig)), orig, RATE)
        assert y.shape == (RATE,)
        ref = sine(freq, RATE)
        # away from the edges (zero-padded), the band-limited interpolation is near exact
        assert np.abs(y.numpy() - ref)[200:-200].max() < 1e-5, (orig, freq)
    # a tone above the new Nyquist frequency is removed, not aliased
    if orig > 2 * 9000:
        alias = resample(torch.tensor(sine(9000.0, orig)), orig, RATE)
        assert alias[200:-200].abs().max() < 1e-3
    # agrees with scipy's polyphase resampler (whose default Kaiser(5) filter is the less accurate of the two)
    from scipy.signal import resample_poly

    g = math.gcd(orig, RATE)
    x = sine(440.0, orig)
    ours = resample(torch.tensor(x), orig, RATE).numpy()
    theirs = resample_poly(x, RATE // g, orig // g)
    assert np.abs(ours - theirs)[200:-200].max() < 5e-3


def direct_resample(
    x: np.ndarray, orig: int, new: int, zero_crossings: int = 32, rolloff: float = 0.95, beta: float = 12.0
):
    """The definition, one output sample at a time: y[n] = sum_k x[k] h(k - n * orig / new), with
    h(d) = r sinc(r d) kaiser(r d / zero_crossings) and r = rolloff * min(orig, new) / orig (zero outside)."""
    r = rolloff * min(orig, new) / orig
    k = np.arange(len(x))
    out = np.empty(math.ceil(len(x) * new / orig))
    for n in range(len(out)):
        u = r * (k - n * orig / new)
        inside = np.abs(u) <= zero_crossings
        w = np.i0(beta * np.sqrt(np.clip(1 - (u / zero_crossings) ** 2, 0, None))) / np.i0(beta)
        out[n] = np.sum(np.where(inside, x * r * np.sinc(u) * w, 0.0))
    return out


@pytest.mark.parametrize(("orig", "new"), [(44100, 16000), (8000, 16000), (22050, 16000)])
def test_resample_is_differentiable_and_batched(orig, new):
    """Each row of a batch equals the direct formula on that row alone (edges included)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 441, dtype=torch.float64, generator=g, requires_grad=True)
    y = resample(x, orig, new)
    assert y.shape == (2, 3, math.ceil(441 * new / orig))
    for i in range(2):
        for j in range(3):
            ref = direct_resample(x[i, j].detach().numpy(), orig, new)
            assert np.abs(y[i, j].detach().numpy() - ref).max() < 1e-9, (orig, new, i, j)
            assert torch.equal(y[i, j], resample(x[i, j], orig, new))  # batched == one at a time
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().max() > 0


@pytest.mark.parametrize("return_attention_mask", [False, True])
@pytest.mark.parametrize("do_normalize", [False, True])
def test_padding_and_normalisation_match_hf_feature_extractor(return_attention_mask, do_normalize):
    g = np.random.default_rng(1)
    waves = [(0.2 * g.standard_normal(n) + 0.05).astype(np.float32) for n in (900, 410, 1333)]
    fe = Wav2Vec2FeatureExtractor(do_normalize=do_normalize, return_attention_mask=return_attention_mask)
    theirs = fe(waves, sampling_rate=RATE, padding=True, return_tensors="pt")
    pre = AudioPreprocessing.from_feature_extractor(fe, default_return_attention_mask=False)
    ours = prepare_audio(waves, pre, options=AudioOptions(sampling_rate=RATE))
    assert (ours.input_values - theirs["input_values"]).abs().max() < 1e-5
    assert ours.use_attention_mask == return_attention_mask
    if return_attention_mask:
        assert torch.equal(ours.sample_mask, theirs["attention_mask"].long())
    # one waveform alone: the same whatever the mask policy
    single = prepare_audio(waves[0], pre)
    assert (
        single.input_values[0] - torch.tensor(fe(waves[0], sampling_rate=RATE)["input_values"][0])
    ).abs().max() < 1e-5


def test_tensor_batch_with_sample_mask_and_channel_axis():
    x = torch.randn(3, 800)
    mask = torch.ones(3, 800, dtype=torch.long)
    mask[1, 500:] = 0
    batch = prepare_audio(x, AudioPreprocessing(return_attention_mask=True), attention_mask=mask)
    assert batch.lengths.tolist() == [800, 500, 800] and batch.batched
    stereo = torch.randn(2, 800)
    mono = prepare_audio(stereo, AudioPreprocessing(do_normalize=False), options=AudioOptions(channel_axis=0))
    assert torch.allclose(mono.input_values[0], stereo.mean(0)) and not mono.batched
    frames_first = prepare_audio(stereo.T, AudioPreprocessing(do_normalize=False), options=AudioOptions(channel_axis=1))
    assert torch.allclose(frames_first.input_values, mono.input_values)
    # 8 kHz array resampled when asked
    up = prepare_audio(
        torch.randn(400),
        AudioPreprocessing(do_normalize=False),
        options=AudioOptions(sampling_rate=8000, resample=True),
    )
    assert up.input_values.shape == (1, 800)


PRE = AudioPreprocessing()


@pytest.mark.parametrize(
    "make_input,kwargs,exc,match",
    [
        (lambda p: np.zeros(1600, np.float32) + 0.1, {"sampling_rate": 8000}, ValueError, "resample=True"),
        (lambda p: np.random.rand(1600, 2).astype(np.float32), {}, ValueError, "samples, channels"),
        (lambda p: np.random.rand(2, 3, 1600).astype(np.float32), {}, ValueError, "shape"),
        (lambda p: np.zeros(0, np.float32), {}, ValueError, "empty"),
        (lambda p: [], {}, ValueError, "empty list"),
        (lambda p: np.zeros(300, np.float32) + 0.1, {}, ValueError, "receptive field"),
        (lambda p: [np.ones(1600, np.float32) * 0.1, np.ones(100, np.float32) * 0.1], {}, ValueError, "item 1"),
        (lambda p: np.array([0.1, np.nan] * 800, np.float32), {}, ValueError, "NaN"),
        (lambda p: np.array([0.1, np.inf] * 800, np.float32), {}, ValueError, "infinite"),
        (lambda p: np.zeros(1600, np.int16), {}, TypeError, "integer PCM"),
        (lambda p: np.arange(1600).astype(np.float32) - 800, {}, ValueError, "integer PCM stored as float"),
        (lambda p: p / "missing.wav", {}, AudioFileNotFoundError, "not found"),
        (lambda p: _garbage_file(p), {}, ValueError, "could not read"),
        (lambda p: {"audio": 1}, {}, TypeError, "expected a waveform"),
        (lambda p: [[[0.1] * 1600]], {}, TypeError, "nest at most one level"),
        (lambda p: np.zeros(1600, np.float32) + 0.1, {"sampling_rate": -5}, ValueError, "positive integer"),
        (lambda p: np.zeros(1600, np.float32) + 0.1, {"channel_axis": 0}, ValueError, "2-D multi-channel"),
        (lambda p: np.zeros(1600, bool), {}, TypeError, "float samples"),
    ],
)
def test_bad_inputs_raise_clear_errors(tmp_path, make_input, kwargs, exc, match):
    audio = make_input(tmp_path)
    # a dict is outside prepare_audio's annotation: under make test-typecheck the type check rejects it first
    check = (
        raises_input_error(exc, match, param="input") if isinstance(audio, dict) else pytest.raises(exc, match=match)
    )
    with check:
        prepare_audio(audio, PRE, min_samples=400, options=AudioOptions(**kwargs))


def _garbage_file(p):
    path = p / "noise.mp3"
    path.write_bytes(b"this is not audio at all" * 10)
    return path


def test_missing_file_is_also_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_audio(tmp_path / "nope.flac")


def test_file_rate_conflict_and_folder(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, np.zeros(800) + 0.1, 8000)
    with pytest.raises(ValueError, match="8000 Hz"):
        to_waveforms(path, RATE, AudioOptions(sampling_rate=16000))
    with pytest.raises(ValueError, match="folder"):
        load_audio(tmp_path)


def test_model_keywords_build_one_options_object():
    from transformers import HubertConfig, HubertModel

    from encoderlens import HookedAudioEncoder

    cfg = HubertConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=20,
        conv_dim=(8, 8),
        conv_kernel=(10, 3),
        conv_stride=(5, 2),
        num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=2,
    )
    model = HookedAudioEncoder.from_pretrained(hf_model=HubertModel(cfg).eval())
    wave = torch.randn(2, 400)
    opts = AudioOptions(sampling_rate=8000, resample=True, channel_axis=0, normalize=False)
    with torch.no_grad():
        by_keywords = model(
            wave, return_type="hidden", sampling_rate=8000, resample=True, channel_axis=0, normalize=False
        )
        by_options = model(wave, return_type="hidden", options=opts)
    assert torch.equal(by_keywords, by_options) and by_options.shape[0] == 1  # stereo -> one item
    assert torch.equal(
        model.prepare(wave, options=opts).input_values, model.prepare(wave, 8000, True, 0, normalize=False).input_values
    )
    with pytest.raises(ValueError, match=r"not both"):
        model(wave, options=opts, resample=True)
    with pytest.raises(ValueError, match="already prepared"):
        model(model.prepare(wave, channel_axis=0), sampling_rate=8000)
    with raises_input_error(TypeError, "resample must be True or False", param="resample"):
        AudioOptions(resample="yes")
    with pytest.raises(ValueError, match="channel_axis must be 0 or 1"):
        AudioOptions(channel_axis=2)
