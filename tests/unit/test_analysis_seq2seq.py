"""The analysis toolkit on encoder-decoders (tiny random T5 and BART): both streams and cross-attention."""

from __future__ import annotations

import pytest
import torch

from encoderlens import HookedEncoderDecoder
from encoderlens.analysis import (
    attention_html,
    attribute_heads,
    attribute_residual,
    decompose,
    direct_logit_attribution,
    embedding_noise_hook,
    head_scores,
    logit_lens,
    patch_block_outputs,
    patch_heads,
    patch_residual,
    prepare,
)
from encoderlens.cli import main
from tests.seq2seq_helpers import make_hf, padded_seq2seq_batch, t5_tokenizer
from tests.unit.brute_force import clean_cache, head_score_reference, patched_metric
from tests.unit.test_analysis_views import assert_renders, needs_chromium

KINDS = ["t5", "bart"]


@pytest.fixture(scope="module")
def models():
    return {k: HookedEncoderDecoder.from_pretrained(hf_model=make_hf(k)) for k in KINDS}


def batch(kind: str):
    src, src_mask, tgt, tgt_mask = padded_seq2seq_batch(first_token=0 if kind == "t5" else 2)
    return src, {"one_zero_attention_mask": src_mask, "decoder_input": tgt, "decoder_attention_mask": tgt_mask}


def metric(logits):
    return logits[:, 3, 5].mean() - logits[:, 3, 6].mean()


def test_prepared_input_has_both_streams(models):
    src, kw = batch("t5")
    p = prepare(models["t5"], src, **kw)
    assert p.family == "encoder_decoder" and set(p.masks) == {"encoder", "decoder"}
    assert torch.equal(p.mask("encoder"), kw["one_zero_attention_mask"])
    assert torch.equal(p.mask("decoder"), kw["decoder_attention_mask"])
    assert p.repeat(2).kwargs["decoder_input"].tokens.shape == (6, 23)
    with pytest.raises(ValueError, match="decoder_input"):
        prepare(models["t5"], src)


@pytest.mark.parametrize("kind", KINDS)
def test_patching_both_streams_and_cross_attention(models, kind):
    """Every entry against a brute-force run: one hooked forward per patched site, on the padded batch."""
    model = models[kind]
    src, kw = batch(kind)
    corrupt = src.clone()
    corrupt[:, 2] = 7
    common = {"input_kwargs": kw, "normalize": False}
    n_heads = model.stream_spec("decoder").n_heads
    enc = patch_residual(model, src, corrupt, metric, stream="encoder", positions=[1, 2], **common)
    assert enc.axes == ("layer", "pos") and enc.shape == (3, 2)
    dec = patch_residual(model, src, corrupt, metric, stream="decoder", **common)
    assert dec.shape == (2, 23)
    dec_pos, key_pos = range(23), range(25)  # every position, real and padded
    cross = patch_heads(model, src, corrupt, metric, attn="cross_attn", act="z", **common)
    assert cross.shape == (2, n_heads)
    cross_out = patch_block_outputs(model, src, corrupt, metric, component="cross_attn", **common)
    assert cross_out.shape == (2,)
    by_key = patch_heads(model, src, corrupt, metric, attn="cross_attn", act="v", by_pos=True, layers=[0], **common)
    assert by_key.shape == (1, n_heads, 25)  # cross-attention values live on encoder positions

    names = [f"decoder.blocks.{i}.{leaf}" for i in range(2) for leaf in ("cross_attn.hook_z", "hook_cross_attn_out")]
    names += ["decoder.blocks.0.cross_attn.hook_v"] + [f"decoder.blocks.{i}.hook_resid_pre" for i in range(2)]
    names += [f"encoder.blocks.{i}.hook_resid_pre" for i in range(3)]
    cc = clean_cache(model, (src,), kw, names)

    def brute(name, index):
        return patched_metric(model, (corrupt,), kw, name, index, cc[name], metric)

    for layer in range(2):
        z = f"decoder.blocks.{layer}.cross_attn.hook_z"
        for h in range(n_heads):
            assert cross.values[layer, h].item() == pytest.approx(brute(z, (slice(None), h)), abs=1e-5)
        out_name = f"decoder.blocks.{layer}.hook_cross_attn_out"
        assert cross_out.values[layer].item() == pytest.approx(brute(out_name, ()), abs=1e-5)
        for pos in dec_pos:
            want = brute(f"decoder.blocks.{layer}.hook_resid_pre", (pos,))
            assert dec.values[layer, pos].item() == pytest.approx(want, abs=1e-5), (layer, pos)
    for h in range(n_heads):
        for pos in key_pos:
            want = brute("decoder.blocks.0.cross_attn.hook_v", (pos, h))
            assert by_key.values[0, h, pos].item() == pytest.approx(want, abs=1e-5), (h, pos)
    for layer in range(3):
        for j, pos in enumerate([1, 2]):
            want = brute(f"encoder.blocks.{layer}.hook_resid_pre", (pos,))
            assert enc.values[layer, j].item() == pytest.approx(want, abs=1e-5), (layer, pos)
    # the swapped encoder token reaches the decoder only through cross-attention
    assert enc.values[0, 1].item() == pytest.approx(enc.meta["metric_clean"], abs=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_attribution_tracks_patching(models, kind):
    model = models[kind]
    src, kw = batch(kind)
    std = 0.01 if kind == "bart" else 0.5  # T5 embeddings are ~N(0, 1), BART's ~N(0, 0.2) scaled
    common = {
        "input_kwargs": kw,
        "normalize": False,
        "corrupt_hooks": [embedding_noise_hook(std, hook="encoder.hook_embed")],
    }
    for patch_fn, attr_fn, extra in (
        (patch_residual, attribute_residual, {"stream": "decoder"}),
        (patch_heads, attribute_heads, {"attn": "cross_attn"}),
    ):
        real = patch_fn(model, src, None, metric, **extra, **common)
        est = attr_fn(model, src, None, metric, **extra, **common)
        base = real.meta["metric_corrupt"]
        a, b = (real.values - base).flatten(), (est.values - base).flatten()
        assert a.abs().max() > 1e-5
        assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9, (kind, patch_fn.__name__)


@pytest.mark.parametrize("kind", KINDS)
def test_lens_and_direct_attribution_on_the_decoder(models, kind):
    model = models[kind]
    src, kw = batch(kind)
    lens = logit_lens(model, src, **kw)
    assert lens.layer_labels == ["embed", "L0", "L1"] and lens.meta["final_max_abs_diff"] < 1e-4
    with pytest.raises(ValueError, match="encoder stream is not unembedded"):
        logit_lens(model, src, stream="encoder", **kw)
    dec = decompose(model, src, heads=True, **kw)
    assert dec.max_error() < 1e-4
    assert "L1X0" in dec.labels and "L1H0" in dec.labels
    enc = decompose(model, src, stream="encoder", **kw)
    assert enc.max_error() < 1e-4
    res = direct_logit_attribution(model, src, 5, wrong_token=6, position=3, item=1, **kw)
    with torch.no_grad():
        logits = model(src, return_type="logits", **kw)
    actual = float(logits[1, 3, 5] - logits[1, 3, 6])
    assert res.meta["actual"] == pytest.approx(actual, abs=1e-4)
    assert res.values.sum().item() + res.meta.get("unembed_bias", 0.0) == pytest.approx(actual, abs=1e-4)


def test_head_scores_and_views(models):
    model = models["bart"]
    src, kw = batch("bart")
    self_scores = head_scores(model, src, **kw)  # decoder self-attention by default
    assert self_scores["previous_token"].shape == (2, model.stream_spec("decoder").n_heads)
    enc_scores = head_scores(model, src, ["previous_token", "first_token", "entropy"], stream="encoder", **kw)
    assert enc_scores["previous_token"].shape == (3, model.stream_spec("encoder").n_heads)
    cross = head_scores(model, src, attn="cross_attn", **kw)
    assert set(cross) == {"first_token", "last_token", "entropy"}  # no tokenizer: no special-token detector
    # values against loops over each item's real queries and keys (padding excluded by hand)
    src_lens, tgt_lens = kw["one_zero_attention_mask"].sum(1).tolist(), kw["decoder_attention_mask"].sum(1).tolist()
    names = [f"{s}.blocks.{i}.{a}.hook_pattern" for s, a, n in (("encoder", "attn", 3), ("decoder", "attn", 2),
             ("decoder", "cross_attn", 2)) for i in range(n)]  # fmt: skip
    cache = clean_cache(model, (src,), kw, names)
    encoder = torch.stack([cache[f"encoder.blocks.{i}.attn.hook_pattern"] for i in range(3)])
    dec_self = torch.stack([cache[f"decoder.blocks.{i}.attn.hook_pattern"] for i in range(2)])
    dec_cross = torch.stack([cache[f"decoder.blocks.{i}.cross_attn.hook_pattern"] for i in range(2)])
    for det in ("previous_token", "next_token", "self", "first_token"):
        want = head_score_reference(dec_self, det, tgt_lens, tgt_lens)
        assert torch.allclose(self_scores[det].values.double(), want, atol=1e-5), det
    for det in ("previous_token", "first_token", "entropy"):
        want = head_score_reference(encoder, det, src_lens, src_lens)
        assert torch.allclose(enc_scores[det].values.double(), want, atol=1e-5), det
    for det in ("first_token", "last_token", "entropy"):
        want = head_score_reference(dec_cross, det, tgt_lens, src_lens, cross=True)
        assert torch.allclose(cross[det].values.double(), want, atol=1e-5), det
    # cross-attention whose encoder and decoder happen to have the same length is still cross-attention:
    # query 0 counts for first_token, and a query at the last key's index counts for last_token
    kw_eq = {**kw, "one_zero_attention_mask": kw["one_zero_attention_mask"][:, :23]}
    eq_lens = kw_eq["one_zero_attention_mask"].sum(1).tolist()
    cross_eq = head_scores(model, src[:, :23], attn="cross_attn", **kw_eq)
    cache = clean_cache(model, (src[:, :23],), kw_eq, names[5:])
    dec_cross = torch.stack([cache[f"decoder.blocks.{i}.cross_attn.hook_pattern"] for i in range(2)])
    for det in ("first_token", "last_token"):
        want = head_score_reference(dec_cross, det, tgt_lens, eq_lens, cross=True)
        assert torch.allclose(cross_eq[det].values.double(), want, atol=1e-5), det
    with pytest.raises(ValueError, match="differ in cross-attention"):
        head_scores(model, src, ["previous_token"], attn="cross_attn", **kw)
    doc = attention_html(model, src, **kw)
    for key in ('"encoder":', '"decoder":', '"cross":'):
        assert key in doc


@needs_chromium
def test_real_seq2seq_page_renders(models, tmp_path):
    src, kw = batch("t5")
    page = tmp_path / "t5.html"
    attention_html(models["t5"], src, page, **kw)
    assert_renders(page, tmp_path, "#view=cross&item=2&layer=1&query=1", expect={"view": "cross", "item": "2"})


def test_cli_on_a_t5_folder(tmp_path, capsys):
    hf = make_hf("t5")
    tok = t5_tokenizer()
    hf.resize_token_embeddings(len(tok)) if len(tok) > hf.config.vocab_size else None
    folder = tmp_path / "t5"
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    assert main(["inspect", str(folder), "--hooks", "decoder.blocks.0.cross_attn.hook_pattern"]) == 0
    out = capsys.readouterr().out
    assert "encoder_decoder" in out and "decoder.blocks.0.cross_attn.hook_pattern" in out
    assert main(["predict", str(folder), "the cat sat", "--max-new-tokens", "4"]) == 0
    assert "->" in capsys.readouterr().out
    out_file = tmp_path / "acts.safetensors"
    code = main(
        [
            "cache",
            str(folder),
            "the cat sat",
            "--decoder-input",
            "das haus",
            "--hooks",
            "decoder.blocks.*.cross_attn.hook_pattern",
            "--out",
            str(out_file),
        ]
    )
    assert code == 0 and out_file.exists()
    assert main(["cache", str(folder), "the cat", "--hooks", "encoder.hook_embed", "--out", str(out_file)]) == 2
    assert "--decoder-input" in capsys.readouterr().err
    capsys.readouterr()
    base = ["patch", str(folder), "--clean", "the cat sat on the mat", "--corrupt", "the dog sat on the mat"]
    assert main([*base, "--decoder-input", "das haus ist gross", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "mean log-probability of 'das haus ist gross'" in out and "1:▁cat/▁dog" in out
    assert (
        main(
            [
                *base,
                "--decoder-input",
                "das haus",
                "--target",
                "cross",
                "--no-progress",
                "--json",
                str(tmp_path / "x.json"),
            ]
        )
        == 0
    )
    assert "cross_attn heads" in capsys.readouterr().out
    assert main([*base, "--decoder-input", "das haus", "--stream", "decoder", "--target", "mlp", "--no-progress"]) == 0
    assert "decoder.mlp_out" in capsys.readouterr().out
    assert main(base) == 2
    assert "--decoder-input" in capsys.readouterr().err
    page = tmp_path / "a.html"
    assert main(["attention", str(folder), "the cat sat", "--decoder-input", "das haus", "--html", str(page)]) == 0
    assert '"cross":' in page.read_text()
