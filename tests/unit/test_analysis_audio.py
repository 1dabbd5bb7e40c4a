"""The analysis toolkit on speech encoders (tiny random wav2vec2 / HuBERT CTC): frames are positions."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import HubertConfig, HubertForCTC, Wav2Vec2Config, Wav2Vec2ForCTC

from encoderlens import HookedAudioEncoder
from encoderlens.analysis import (
    attention_html,
    attribute_residual,
    ctc_lens,
    decompose,
    direct_logit_attribution,
    embedding_noise_hook,
    head_scores,
    logit_lens,
    patch_heads,
    patch_residual,
    prepare,
)
from encoderlens.cli import main
from tests.parity.test_audio_parity import randomize_all, save_checkpoint, tiny_kwargs
from tests.unit.brute_force import clean_cache, head_score_reference, patched_metric
from tests.unit.test_analysis_views import assert_renders, needs_chromium

LENGTHS = (617, 403)


def waves(seed: int = 3, scale: float = 0.3) -> list[np.ndarray]:
    g = np.random.default_rng(seed)
    return [(scale * g.standard_normal(n)).astype(np.float32) for n in LENGTHS]


def build(tmp_path, pre_ln: bool) -> tuple[HookedAudioEncoder, object]:
    torch.manual_seed(0)
    if pre_ln:
        hf = HubertForCTC(
            HubertConfig(**tiny_kwargs(num_hidden_layers=3, do_stable_layer_norm=True, feat_extract_norm="layer"))
        )
    else:
        hf = Wav2Vec2ForCTC(
            Wav2Vec2Config(**tiny_kwargs(num_hidden_layers=3, do_stable_layer_norm=False, feat_extract_norm="layer"))
        )
    hf.eval()
    randomize_all(hf)
    path, _ = save_checkpoint(hf, tmp_path, return_attention_mask=True, tokenizer=True)
    return HookedAudioEncoder.from_pretrained(path), path


@pytest.fixture(scope="module")
def post(tmp_path_factory):
    return build(tmp_path_factory.mktemp("post"), pre_ln=False)


@pytest.fixture(scope="module")
def pre(tmp_path_factory):
    return build(tmp_path_factory.mktemp("pre"), pre_ln=True)


def frame_metric(frame: int = 3, token: int = 7):
    def metric(logits):
        return logits[:, frame, token].mean()

    return metric


def test_frames_are_positions_with_time_labels(post):
    model, _ = post
    p = prepare(model, waves())
    n_frames = int(model.num_frames(LENGTHS[0]))
    assert p.family == "audio_encoder" and p.mask(None).shape == (2, n_frames)
    assert p.mask(None)[1].sum().item() == int(model.num_frames(LENGTHS[1]))
    labels = p.position_labels(None, 1)
    hop = model.hop_length / model.sampling_rate
    assert labels[1] == f"1:{hop:.3f}s" and labels[-1].endswith("<pad>")
    rep = p.repeat(3)
    assert rep.args[0].input_values.shape[0] == 6 and rep.args[0].lengths.tolist() == [617, 403] * 3


def test_patching_frames(post):
    model, _ = post
    clean = waves()
    corrupt = [w + 0.05 * np.random.default_rng(9).standard_normal(len(w)).astype(np.float32) for w in clean]
    res = patch_residual(model, clean, corrupt, frame_metric(), normalize=False, layers=[0, 2], positions=[2, 3, 30])
    assert (
        res.axes == ("layer", "pos") and res.labels["pos"][1] == f"3:{3 * model.hop_length / model.sampling_rate:.3f}s"
    )
    # frame 30 is padding in item 1 and its keys are masked; item 0 is real there: check against a manual run
    clean_p, corrupt_p = prepare(model, clean), prepare(model, corrupt)
    with torch.no_grad():
        _, cc = model.run_with_cache(*clean_p.args)

    def put(x, hook):
        x = x.clone()
        x[:, 3] = cc["blocks.2.hook_resid_pre"][:, 3]
        return x

    with torch.no_grad():
        manual = model.run_with_hooks(*corrupt_p.args, fwd_hooks=[("blocks.2.hook_resid_pre", put)])
    assert res.values[1, 1].item() == pytest.approx(float(frame_metric()(manual)), abs=1e-5)
    heads = patch_heads(model, clean, corrupt, frame_metric(), act="pattern", normalize=False)
    assert heads.shape == (3, 3)
    by_frame = patch_heads(model, clean, corrupt, frame_metric(), act="z", by_pos=True, layers=[1], normalize=False)
    # every entry against a brute-force hooked run on the padded batch
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(3)] + ["blocks.1.attn.hook_z"]
    cc = clean_cache(model, clean_p.args, clean_p.kwargs, names)
    for layer in range(3):
        for h in range(3):
            name = f"blocks.{layer}.attn.hook_pattern"
            want = patched_metric(model, corrupt_p.args, corrupt_p.kwargs, name, (h,), cc[name], frame_metric())
            assert heads.values[layer, h].item() == pytest.approx(want, abs=1e-5), (layer, h)
    n_frames = by_frame.shape[2]
    assert n_frames == int(model.num_frames(LENGTHS[0]))
    for h in range(3):
        for pos in range(n_frames):  # frames past item 1's end are padding there
            want = patched_metric(
                model, corrupt_p.args, corrupt_p.kwargs, "blocks.1.attn.hook_z", (pos, h), cc["blocks.1.attn.hook_z"],
                frame_metric(),
            )  # fmt: skip
            assert by_frame.values[0, h, pos].item() == pytest.approx(want, abs=1e-5), (h, pos)
    with pytest.raises(ValueError, match="different shapes|different padding"):
        patch_residual(model, clean, [clean[0][:500], clean[1]], frame_metric())


def test_attribution_tracks_patching_on_audio(post):
    model, _ = post
    hook = embedding_noise_hook(0.01, hook="hook_projected")
    kw = {"corrupt_hooks": [hook], "normalize": False}
    real = patch_residual(model, waves(), None, frame_metric(), **kw)
    est = attribute_residual(model, waves(), None, frame_metric(), **kw)
    base = real.meta["metric_corrupt"]
    a, b = (real.values - base).flatten(), (est.values - base).flatten()
    assert a.abs().max() > 1e-5
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9


@pytest.mark.parametrize("which", ["post", "pre"])
def test_lens_and_ctc_lens(which, post, pre):
    model, _ = post if which == "post" else pre
    lens = logit_lens(model, waves())
    assert lens.meta["final_max_abs_diff"] < 1e-4
    per_layer = ctc_lens(model, waves(), item=1)
    assert [lab for lab, _ in per_layer] == ["embed", "L0", "L1", "L2"]
    assert per_layer[-1][1] == model.transcribe(waves())[1]


@pytest.mark.parametrize("which", ["post", "pre"])
def test_decomposition_and_dla_on_audio(which, post, pre):
    model, _ = post if which == "post" else pre
    dec = decompose(model, waves(), heads=True)
    assert dec.max_error() < 1e-4
    assert dec.labels[:2] == ["projected", "pos_conv"]
    if which == "post":
        assert dec.frozen_norms[0] == "embed_ln"
    else:
        assert dec.frozen_norms == ["ln_final"]
    res = direct_logit_attribution(model, waves(), 7, position=3, item=0, heads=True)
    assert res.meta["linearised"] is False
    with torch.no_grad():
        logits = model(waves())
    assert res.values.sum().item() + res.meta["unembed_bias"] == pytest.approx(logits[0, 3, 7].item(), abs=1e-4)


def test_head_detectors_on_frames(post):
    model, _ = post
    scores = head_scores(model, waves())
    assert set(scores) == {
        "local_window",
        "self",
        "previous_token",
        "next_token",
        "first_token",
        "entropy",
        "mean_distance",
    }
    assert scores["local_window"].shape == (3, 3)
    assert ((scores["local_window"].values >= 0) & (scores["local_window"].values <= 1)).all()
    # values against loops over each item's real frames (the lengths come from the waveforms, not the model)
    p = prepare(model, waves())
    cache = clean_cache(model, p.args, p.kwargs, [f"blocks.{i}.attn.hook_pattern" for i in range(3)])
    patterns = torch.stack([cache[f"blocks.{i}.attn.hook_pattern"] for i in range(3)])
    lens = [int(model.num_frames(n)) for n in LENGTHS]
    assert lens[1] < patterns.shape[-1]  # item 1 is padded
    for det in ("local_window", "self", "previous_token", "next_token", "first_token", "entropy", "mean_distance"):
        want = head_score_reference(patterns, det, lens, lens)
        assert torch.allclose(scores[det].values.double(), want, atol=1e-5), det
    with pytest.raises(ValueError, match="token ids"):
        head_scores(model, waves(), ["duplicate_token"])


def test_attention_page_has_a_time_axis(post):
    model, _ = post
    doc = attention_html(model, waves())
    assert '"axis":"time"' in doc and f'"frame_seconds":{model.hop_length / model.sampling_rate}' in doc


@needs_chromium
def test_real_audio_page_renders(post, tmp_path):
    model, _ = post
    page = tmp_path / "audio.html"
    attention_html(model, waves(), page)
    assert_renders(page, tmp_path, "#item=1&layer=2&head=0&query=5", expect={"item": "1", "layer": "2", "head": "0"})


def test_cli_on_audio_files(post, tmp_path, capsys):
    _, path = post
    wav = tmp_path / "clip.wav"
    sf.write(str(wav), waves()[0], 16000)
    assert main(["inspect", str(path), "--hooks", "frontend.conv.*.hook_out"]) == 0
    out = capsys.readouterr().out
    assert "audio_encoder" in out and "frontend.conv.1.hook_out" in out
    assert main(["predict", str(path), str(wav)]) == 0
    assert str(wav) in capsys.readouterr().out
    out_file = tmp_path / "a.safetensors"
    assert main(["cache", str(path), str(wav), "--hooks", "hook_features", "--out", str(out_file)]) == 0
    assert out_file.exists()
    assert main(["attention", str(path), str(wav), "--html", str(tmp_path / "a.html")]) == 0
    assert main(["predict", str(path), str(tmp_path / "missing.wav")]) == 2
    capsys.readouterr()
    noisy = tmp_path / "noisy.wav"
    sf.write(
        str(noisy), waves()[0] + 0.05 * np.random.default_rng(1).standard_normal(LENGTHS[0]).astype(np.float32), 16000
    )
    assert (
        main(["patch", str(path), "--clean", str(wav), "--corrupt", str(noisy), "--target", "mlp", "--no-progress"])
        == 0
    )
    out = capsys.readouterr().out
    assert "clean run's ctc predictions" in out and "mlp_out by layer and position" in out
    short = tmp_path / "short.wav"
    sf.write(str(short), waves()[1], 16000)
    assert main(["patch", str(path), "--clean", str(wav), "--corrupt", str(short)]) == 2
    assert "different shapes" in capsys.readouterr().err
    assert main(["patch", str(path), "--clean", str(wav), "--corrupt", str(noisy), "--target", "cross"]) == 2
