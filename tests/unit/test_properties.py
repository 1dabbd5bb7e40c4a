"""Property-based tests over each family's input space (hypothesis, bounded and derandomised).

Every generated case either gives the result of the reference path (each item run alone, unpadded, as
int64 ids / float32 audio) or raises a ValueError / TypeError whose message names the argument at fault;
no other exception type escapes the public API.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import encoderlens
from encoderlens import HookedAudioEncoder, HookedEncoderDecoder
from tests.seq2seq_helpers import make_hf
from tests.unit.analysis_helpers import WORDS, tiny_mlm

ATOL = 1e-4
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@functools.lru_cache(maxsize=1)
def text_model():
    return tiny_mlm()


@functools.lru_cache(maxsize=1)
def text_model_with_tokenizer():
    import tempfile
    from pathlib import Path

    from tests.conftest import tiny_bert_tokenizer

    model = tiny_mlm()
    model.tokenizer = tiny_bert_tokenizer(Path(tempfile.mkdtemp(prefix="el-props-")))
    return model


@functools.lru_cache(maxsize=1)
def audio_model():
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    from tests.parity.test_audio_parity import tiny_kwargs

    torch.manual_seed(0)
    # layer-norm front end + stable layer norm: HF masks padded samples, so a padded batch equals single runs
    kw = tiny_kwargs(num_hidden_layers=2, feat_extract_norm="layer", do_stable_layer_norm=True)
    hf = Wav2Vec2ForCTC(Wav2Vec2Config(**kw)).eval()
    return HookedAudioEncoder.from_pretrained(hf_model=hf)


@functools.lru_cache(maxsize=1)
def seq2seq_model():
    return HookedEncoderDecoder.from_pretrained(hf_model=make_hf("t5"))


def expect_clear_error(err: Exception, *names: str) -> None:
    """A ValueError / TypeError whose message names one of ``names``."""
    assert isinstance(err, (ValueError, TypeError)), f"{type(err).__name__} escaped: {err}"
    msg = str(err).lower()
    assert any(n.lower() in msg for n in names), f"message does not name {names}: {err}"


def right_padded(lengths: list[int], width: int) -> torch.Tensor:
    return torch.tensor([[1] * n + [0] * (width - n) for n in lengths])


# ---------------------------------------------------------------------- text encoder: token ids and masks
ID_DTYPES = [torch.int64, torch.int32, torch.int16, torch.uint8, torch.float32, torch.bool]
MASK_DTYPES = [torch.int64, torch.int32, torch.bool, torch.float32]


@st.composite
def id_batches(draw):
    vocab = text_model().cfg.d_vocab
    batch = draw(st.integers(1, 3))
    width = draw(st.integers(1, 10))
    lengths = [draw(st.integers(0 if draw(st.booleans()) else 1, width)) for _ in range(batch)]
    lo, hi = (-3, vocab + 3) if draw(st.integers(0, 4)) == 0 else (0, min(vocab - 1, 250))
    ids = torch.tensor(
        draw(st.lists(st.lists(st.integers(lo, hi), min_size=width, max_size=width), min_size=batch, max_size=batch))
    )
    mask = right_padded(lengths, width)
    kind = draw(st.sampled_from(["plain", "hole", "two", "none", "shape"]))
    if kind == "hole" and width > 2:
        mask[0, 1] = 0
    elif kind == "two":
        mask[0, 0] = 2
    elif kind == "shape":
        mask = mask[:, :-1]
    id_dtype = draw(st.sampled_from(ID_DTYPES))
    mask_dtype = draw(st.sampled_from(MASK_DTYPES))
    one_d = batch == 1 and draw(st.booleans())
    return ids, mask, kind, id_dtype, mask_dtype, one_d


@SETTINGS
@given(id_batches())
def test_text_ids_and_masks(case):
    ids, mask, kind, id_dtype, mask_dtype, one_d = case
    model = text_model()
    if id_dtype in (torch.uint8, torch.bool, torch.int16) and (ids.min() < 0 or ids.max() > 255):
        id_dtype = torch.int64  # not representable: keep the case about ranges
    x = ids.to(id_dtype)
    m = None if kind == "none" else mask.to(mask_dtype)
    if one_d:
        x, m = x[0], (m[0] if m is not None else None)
    try:
        with torch.no_grad():
            out = model(x, one_zero_attention_mask=m, return_type="embeddings")
    except Exception as e:  # noqa: BLE001 -- the property: only clear ValueError/TypeError
        expect_clear_error(e, "input", "token", "ids", "one_zero_attention_mask", "mask")
        return
    # accepted: must equal the reference path (int64 ids, each item alone on its real positions)
    assert id_dtype not in (torch.float32,) or torch.equal(ids.to(id_dtype).long(), ids), "lossy float ids accepted"
    assert ids.min() >= 0 and ids.max() < model.cfg.d_vocab, "out-of-range ids accepted"
    out = out[None] if one_d else out
    real = torch.ones_like(ids) if kind == "none" else mask
    assert kind != "two", "a mask value of 2 was accepted"
    assert out.shape == (*ids.shape, model.cfg.d_model)
    for i in range(ids.shape[0]):
        keep = real[i].bool()
        if kind == "hole" or not keep.any():
            continue  # no single-item equivalent (holes shift nothing); checked only for being an error or finite
        with torch.no_grad():
            alone = model(ids[i][keep][None], return_type="embeddings")[0]
        assert (out[i][keep] - alone).abs().max() < ATOL
    assert torch.isfinite(out[real.bool()]).all()


# ---------------------------------------------------------------------- text encoder: strings and pairs
word = st.sampled_from([w for w in WORDS if w.isalpha()] + ["Paris", "don't", "naïve", "日本", "🙂", ""])
sentence = st.lists(word, min_size=0, max_size=6).map(" ".join)


@settings(SETTINGS, max_examples=15)
@given(st.lists(st.one_of(sentence, st.tuples(sentence, sentence)), min_size=1, max_size=3))
def test_text_strings_and_pairs(items):
    model = text_model_with_tokenizer()
    mixed = len({isinstance(t, tuple) for t in items}) > 1
    try:
        with torch.no_grad():
            out = model(items, return_type="embeddings")
            batch = model.tokenize(items)
    except Exception as e:  # noqa: BLE001
        expect_clear_error(e, "pair", "input", "string", "text")
        return
    assert not mixed, "a batch mixing strings and pairs was accepted"
    for i, item in enumerate(items):
        keep = batch.attention_mask[i].bool()
        with torch.no_grad():
            alone = model(item, return_type="embeddings")[0]
        assert alone.shape[0] == int(keep.sum())
        assert (out[i][keep] - alone).abs().max() < ATOL


# ---------------------------------------------------------------------- audio: waveforms, NaN/Inf, dtypes
@st.composite
def waveform_batches(draw):
    n = draw(st.integers(1, 3))
    waves = []
    for _ in range(n):
        length = draw(st.sampled_from([0, 5, 19, 25, 160, 401, 777]))
        g = np.random.default_rng(draw(st.integers(0, 1000)))
        w = (0.3 * g.standard_normal(length)).astype(np.float32)
        bad = draw(st.sampled_from(["none", "none", "nan", "inf"]))
        if bad != "none" and length:
            w[length // 2] = np.nan if bad == "nan" else np.inf
        kind = draw(st.sampled_from(["np32", "np64", "torch", "list", "int16"]))
        if kind == "np64":
            w = w.astype(np.float64)
        elif kind == "torch":
            w = torch.from_numpy(w)
        elif kind == "list":
            w = w.tolist()
        elif kind == "int16":
            w = np.nan_to_num(w * 1000).astype(np.int16)
        waves.append(w)
    return waves


def as_float(w) -> np.ndarray:
    a = np.asarray(w.numpy() if isinstance(w, torch.Tensor) else w)
    return a.astype(np.float32)


@SETTINGS
@given(waveform_batches())
def test_audio_waveforms(waves):
    model = audio_model()
    try:
        with torch.no_grad():
            out = model(waves if len(waves) > 1 else waves[0], return_type="hidden")
    except Exception as e:  # noqa: BLE001
        expect_clear_error(e, "waveform", "sample", "audio", "nan", "inf", "dtype", "input")
        return
    floats = [as_float(w) for w in waves]
    assert all(np.isfinite(f).all() for f in floats), "NaN/Inf audio accepted"
    out = out if len(waves) > 1 else out[None]
    for i, f in enumerate(floats):
        if isinstance(waves[i], np.ndarray) and waves[i].dtype == np.int16:
            continue  # integer PCM is scaled by the loader: compared with itself only through finiteness
        with torch.no_grad():
            alone = model(torch.from_numpy(f), return_type="hidden")[0]
        n = alone.shape[0]
        assert (out[i, :n] - alone).abs().max() < ATOL
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------------- encoder-decoder: ids on both sides
@st.composite
def seq2seq_batches(draw):
    batch = draw(st.integers(1, 3))
    enc_len, dec_len = draw(st.integers(1, 8)), draw(st.integers(1, 6))
    enc_lengths = [draw(st.integers(1, enc_len)) for _ in range(batch)]
    dec_lengths = [draw(st.integers(1, dec_len)) for _ in range(batch)]
    hi = 98 if draw(st.integers(0, 4)) else 120
    src = torch.tensor(
        draw(st.lists(st.lists(st.integers(2, hi), min_size=enc_len, max_size=enc_len), min_size=batch, max_size=batch))
    )
    dec = torch.tensor(
        draw(st.lists(st.lists(st.integers(2, 98), min_size=dec_len, max_size=dec_len), min_size=batch, max_size=batch))
    )
    dec[:, 0] = 0  # the start token
    dec_batch = batch if draw(st.integers(0, 5)) else batch + 1
    return src, right_padded(enc_lengths, enc_len), dec, right_padded(dec_lengths, dec_len), dec_batch


@settings(SETTINGS, max_examples=15)
@given(seq2seq_batches())
def test_seq2seq_ids(case):
    src, src_mask, dec, dec_mask, dec_batch = case
    model = seq2seq_model()
    if dec_batch != src.shape[0]:
        dec, dec_mask = torch.cat([dec, dec[:1]]), torch.cat([dec_mask, dec_mask[:1]])
    try:
        with torch.no_grad():
            out = model(src, dec, one_zero_attention_mask=src_mask, decoder_attention_mask=dec_mask)
    except Exception as e:  # noqa: BLE001
        expect_clear_error(e, "input", "decoder", "token", "ids", "items")
        return
    assert int(src.max()) < model.cfg.d_vocab and dec.shape[0] == src.shape[0]
    for i in range(src.shape[0]):
        e, d = src_mask[i].bool(), dec_mask[i].bool()
        with torch.no_grad():
            alone = model(src[i][e][None], dec[i][d][None])[0]
        assert (out[i][d] - alone).abs().max() < ATOL


# ---------------------------------------------------------------------- loading: paths and names
@SETTINGS
@given(
    st.one_of(
        st.sampled_from(["", ".", "..", "/", "~", "./nope", "../x/y", "/no/such/dir", "a/b/c", "config.json", "\x00"]),
        st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=12).map(lambda s: "./" + s),
        st.sampled_from([123, 1.5, b"bytes", ["a"], {"a": 1}, object()]),
    )
)
def test_from_pretrained_paths(name):
    try:
        encoderlens.from_pretrained(name)
    except Exception as e:  # noqa: BLE001
        expect_clear_error(e, "folder", "path", "name", "hub", "file", "config.json", "checkpoint")
        return
    pytest.fail(f"{name!r} loaded a model")
