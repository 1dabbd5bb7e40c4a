"""The analysis toolkit on a tiny Whisper through the model contract: logit lens on the decoder,
activation and attribution patching over audio time windows and decoder positions, direct
contributions, attention views with time labels, harvest."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encoderlens import HookedWhisper
from encoderlens.analysis import (
    attention_html,
    attribute_residual,
    decompose,
    direct_logit_attribution,
    logit_lens,
    patch_residual,
    prepare,
)
from encoderlens.harvest import harvest, load_harvest
from tests.parity.test_whisper_parity import RATE, _generating, _generation_config, speech_like


@pytest.fixture(scope="module")
def setup():
    model = HookedWhisper.from_pretrained(hf_model=_generating(), generation_config=_generation_config())
    waves = speech_like((RATE * 3, RATE * 2), seed=3)
    tokens = model.generate(waves, language="en", max_new_tokens=6)[:, :8]
    corrupt = [w.copy() for w in waves]
    for w in corrupt:
        w[RATE // 2 : RATE] = 0.0  # silence 0.5 s .. 1.0 s
    return model, waves, corrupt, {"decoder_input": tokens}


def metric(logits):
    return logits[:, 5, 7].mean() - logits[:, 5, 8].mean()


def test_lens_and_direct_contributions_on_the_decoder(setup):
    model, waves, _, kw = setup
    lens = logit_lens(model, waves, **kw)
    assert lens.meta["final_max_abs_diff"] < 1e-4 and len(lens.layer_labels) == 4
    dec = decompose(model, waves, heads=True, **kw)
    assert dec.max_error() < 1e-4 and "L2X0" in dec.labels
    res = direct_logit_attribution(model, waves, 7, wrong_token=8, position=5, item=1, **kw)
    with torch.no_grad():
        logits = model(waves, **kw)
    assert res.meta["actual"] == pytest.approx(float(logits[1, 5, 7] - logits[1, 5, 8]), abs=1e-4)


def test_patching_audio_windows_and_decoder_positions(setup):
    model, waves, corrupt, kw = setup
    common = {"input_kwargs": kw, "normalize": False}
    window = list(range(25, 50))  # encoder positions of 0.5 s .. 1.0 s (20 ms each)
    enc = patch_residual(model, waves, corrupt, metric, stream="encoder", positions=window[:3], **common)
    assert enc.axes == ("layer", "pos") and enc.shape == (2, 3)
    prepared = prepare(model, waves, **kw)
    assert prepared.position_labels("encoder", 0)[25] == "25:0.500s"
    dec = patch_residual(model, waves, corrupt, metric, stream="decoder", **common)
    assert dec.shape == (3, 8)
    assert abs(enc.meta["metric_clean"] - enc.meta["metric_corrupt"]) > 1e-6  # the silenced window matters
    est = attribute_residual(model, waves, corrupt, metric, stream="decoder", **common)
    a = (dec.values - dec.meta["metric_corrupt"]).flatten()
    b = (est.values - est.meta["metric_corrupt"]).flatten()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.8


def test_attention_views_have_time_labels(setup):
    model, waves, _, kw = setup
    doc = attention_html(model, waves, layers=[0], **kw)
    assert '"axis":"time"' in doc and '"frame_seconds":0.02' in doc  # encoder self-attention on a time axis
    assert "cross-attention (decoder -\\u003e encoder)" in doc and '"1:0.020s"' in doc  # keys labelled in seconds


def test_harvest_encoder_and_decoder_hooks(setup, tmp_path):
    model, waves, _, kw = setup
    data = [{"audio": {"array": w, "sampling_rate": RATE}, "target": t} for w, t in zip(waves, kw["decoder_input"])]
    hooks = ["encoder.blocks.1.hook_resid_post", "decoder.blocks.2.hook_resid_post"]
    man = harvest(model, data, hooks, tmp_path / "h", batch_size=2, progress=False)
    assert man["complete"]
    h = load_harvest(tmp_path / "h")
    with torch.no_grad():
        _, cache = model.run_with_cache(waves, names_filter=hooks, **kw)
    got = h.load(hooks[1])
    assert np.allclose(got.reshape(-1).numpy(), cache[hooks[1]].reshape(-1).numpy(), atol=1e-5)
