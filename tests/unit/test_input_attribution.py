"""Input attribution on every family: IG completeness, captum equality, padding, targets, seq2seq, views."""

from __future__ import annotations

import captum.attr as captum
import numpy as np
import pytest
import torch
from transformers import RobertaForSequenceClassification

from encoderlens import HookedAudioEncoder, HookedEncoder, HookedEncoderDecoder
from encoderlens.analysis import (
    attribute_input,
    attribute_sequence,
    class_score,
    ctc_token,
    ctc_transcript,
    mask_fill,
    quadrature,
    similarity,
    token_score,
)
from tests.conftest import raises_input_error
from tests.parity.encoder_parity import load_pair, padded_batch
from tests.parity.test_audio_parity import randomize_all, tiny_kwargs
from tests.parity.test_roberta_parity import tiny
from tests.seq2seq_helpers import make_hf, padded_seq2seq_batch
from tests.unit.analysis_helpers import default_model, padded_tokens, pre_ln_encoder, tiny_mlm


@pytest.fixture(scope="module")
def bert():
    return tiny_mlm(seed=0, initializer_range=0.3)


@pytest.fixture(scope="module")
def audio():
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    torch.manual_seed(0)
    hf = Wav2Vec2ForCTC(Wav2Vec2Config(**tiny_kwargs(num_hidden_layers=2, feat_extract_norm="layer"))).eval()
    randomize_all(hf)
    return HookedAudioEncoder.from_pretrained(hf_model=hf)


@pytest.fixture(scope="module")
def seq2seq():
    return {k: HookedEncoderDecoder.from_pretrained(hf_model=make_hf(k)) for k in ("t5", "bart")}


def waves(lengths=(401, 297), seed=3):
    g = np.random.default_rng(seed)
    return [(0.5 * g.standard_normal(n)).astype(np.float32) for n in lengths]


def family_case(name, bert, audio, seq2seq):
    """(model, input, options, target, baseline) per family, padded batches."""
    tok, mask = padded_tokens()
    if name == "bert":
        return bert, tok, {"one_zero_attention_mask": mask}, token_score([3, 2], [7, 8]), "zero"
    if name == "pre_ln":
        return pre_ln_encoder(), tok, {"one_zero_attention_mask": mask}, token_score([3, 2], [7, 8]), "zero"
    if name == "audio":
        base = [0.5 * w[::-1].copy() for w in waves()]  # a different recording of the same lengths
        return audio, waves(), {}, ctc_token(5, (1, 4)), base
    src, sm, tgt, tm = padded_seq2seq_batch(first_token=0 if name == "t5" else 2)
    opts = {"one_zero_attention_mask": sm[:2, :9], "decoder_input": tgt[:2, :7], "decoder_attention_mask": tm[:2, :7]}
    base_src = torch.full_like(src[:2, :9], 7)
    base = seq2seq[name].prepare_input(base_src, **{**opts, "decoder_input": torch.full_like(tgt[:2, :7], 7)})
    return seq2seq[name], src[:2, :9], opts, token_score([3, 2], [5, 6], kind="logprob"), base


@pytest.mark.parametrize("name", ["bert", "pre_ln", "audio", "t5", "bart"])
def test_ig_completeness_every_family(name, bert, audio, seq2seq):
    model, inp, opts, target, baseline = family_case(name, bert, audio, seq2seq)
    res = attribute_input(model, inp, target, baseline=baseline, n_steps=64, **opts)
    gap = res.target - res.baseline_target
    assert bool((gap.abs() > 1e-3).all()), gap
    # attributions of every hook sum to f(x) - f(baseline) within 1% at 64 steps
    assert bool((res.delta.abs() <= 0.01 * gap.abs()).all()), (res.delta, gap)
    assert torch.allclose(res.total(), gap, rtol=0.01, atol=1e-6)
    assert set(res.scores) == {model.input_spec(s).hook for s in model.streams}


def _replace(model, hook):
    """captum wrapper: f(activation) runs the model with ``hook`` replaced."""

    def run(batch, target, emb):
        reps = emb.shape[0] // batch.batch_size
        out = model.run_prepared(batch.repeat(reps), target.return_type, fwd_hooks=[(hook, lambda x, hook: emb)])
        return target(out, batch.repeat(reps))

    return run


@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_trapezoid", "riemann_middle"])
def test_ig_equals_captum_on_the_same_hook(bert, rule):
    tok, mask = padded_tokens()
    target = token_score([3, 2], [7, 8])
    batch = bert.prepare_input(tok, one_zero_attention_mask=mask)
    ours = attribute_input(bert, batch, target, n_steps=20, rule=rule, chunk_size=7)
    _, cache = bert.run_prepared_with_cache(batch, names_filter="embed.hook_embed")
    emb = cache["embed.hook_embed"]
    run = _replace(bert, "embed.hook_embed")
    ig = captum.IntegratedGradients(lambda e: run(batch, target, e))
    theirs, delta = ig.attribute(
        emb,
        baselines=torch.zeros_like(emb),
        n_steps=20,
        method=rule,
        internal_batch_size=2 * 20,
        return_convergence_delta=True,
    )
    torch.testing.assert_close(ours.raw["embed.hook_embed"], theirs, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(ours.delta, delta.float(), atol=1e-5, rtol=1e-3)


def test_saliency_and_x_grad_equal_captum(bert):
    tok, mask = padded_tokens()
    target = token_score([3, 2], [7, 8])
    batch = bert.prepare_input(tok, one_zero_attention_mask=mask)
    _, cache = bert.run_prepared_with_cache(batch, names_filter="embed.hook_embed")
    emb = cache["embed.hook_embed"].clone().requires_grad_(True)
    f = _replace(bert, "embed.hook_embed")
    sal = captum.Saliency(lambda e: f(batch, target, e)).attribute(emb, abs=True)
    ixg = captum.InputXGradient(lambda e: f(batch, target, e)).attribute(emb)
    torch.testing.assert_close(attribute_input(bert, batch, target, method="saliency").raw["embed.hook_embed"], sal)
    torch.testing.assert_close(
        attribute_input(bert, batch, target, method="input_x_gradient").raw["embed.hook_embed"], ixg
    )


def test_layer_attribution_with_baseline_input_equals_captum_layer_ig(bert):
    """IG at a residual hook, the baseline being the activations of a baseline input (every token 4)."""
    tok, mask = padded_tokens()
    base_tok = torch.where(mask.bool(), torch.full_like(tok, 4), tok)
    target = token_score([3, 2], [7, 8])
    hook = "blocks.1.hook_resid_pre"
    opts = {"one_zero_attention_mask": mask}
    ours = attribute_input(
        bert,
        tok,
        target,
        hooks=[hook],
        baseline=bert.prepare_input(base_tok, **opts),
        n_steps=16,
        rule="riemann_right",
        **opts,
    )

    def fwd(ids):
        reps = ids.shape[0] // tok.shape[0]
        batch = bert.prepare_input(ids, one_zero_attention_mask=mask.repeat(reps, 1))
        return target(bert.run_prepared(batch, "logits"), batch)

    lig = captum.LayerIntegratedGradients(fwd, bert.blocks[1].hook_resid_pre)
    theirs = lig.attribute(tok, baselines=base_tok, n_steps=16, method="riemann_right", internal_batch_size=32)
    torch.testing.assert_close(ours.raw[hook], theirs, atol=1e-6, rtol=1e-4)
    assert ours.scores[hook].axes == ("item", "pos")


def test_padding_is_nan_and_does_not_change_the_real_positions(bert):
    tok, mask = padded_tokens()
    target = token_score([3, 2], [7, 8])
    res = attribute_input(bert, tok, target, n_steps=8, rule="riemann_trapezoid", one_zero_attention_mask=mask)
    vals = res.scores["embed.hook_embed"].values
    assert torch.isnan(vals[1, 6:]).all() and not torch.isnan(vals[0]).any()
    alone = attribute_input(bert, tok[1:, :6], token_score(2, 8), n_steps=8, rule="riemann_trapezoid")
    torch.testing.assert_close(vals[1, :6], alone.scores["embed.hook_embed"].values[0], atol=1e-6, rtol=1e-4)


def test_quadrature_matches_captum():
    from captum.attr._utils.approximation_methods import approximation_parameters

    for rule in ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"):
        steps, alphas = approximation_parameters(rule)
        a, w = quadrature(rule, 7)
        assert np.allclose(a, alphas(7)) and np.allclose(w, steps(7))
    with pytest.raises(ValueError, match="rule must be one of"):
        quadrature("simpson", 8)


def test_mask_fill_class_logit_and_similarity_targets(tmp_path):
    from tests.unit.analysis_helpers import tiny_mlm_folder

    folder = tiny_mlm_folder(tmp_path / "mlm", initializer_range=0.3)
    mlm = HookedEncoder.from_pretrained(folder)
    paris = mlm.tokenizer.convert_tokens_to_ids("paris")
    res = attribute_input(mlm, ["the capital of france is [MASK] .", "a [MASK] sat"], mask_fill(mlm, paris), n_steps=32)
    assert res.delta.abs().max() < 0.01 * (res.target - res.baseline_target).abs().min()
    assert "france" in res.to_text(0)
    # each item shows its own tokens (the axis labels are item 0's)
    assert "sat" in res.to_text(1) and "france" not in res.to_text(1) and ">sat<" in res.to_html(item=1)
    with pytest.raises(ValueError, match="mask token"):
        attribute_input(mlm, "no mask here", mask_fill(mlm, paris), method="saliency")

    hf, clf = load_pair(RobertaForSequenceClassification(tiny(num_labels=3, initializer_range=0.3)), tmp_path)
    tok, mask, _ = padded_batch(pad_id=1)
    res = attribute_input(clf, tok[:2], class_score(2), n_steps=64, one_zero_attention_mask=mask[:2])
    with torch.no_grad():
        ref = hf(input_ids=tok[:2], attention_mask=mask[:2]).logits[:, 2]
    torch.testing.assert_close(res.target, ref, atol=1e-4, rtol=1e-4)
    assert res.delta.abs().max() < 0.05 * (res.target - res.baseline_target).abs().min()

    st = default_model()
    ref_emb = st("A man plays the guitar.", return_type="sentence_embedding")[0]
    res = attribute_input(st, "A man is playing music.", similarity(ref_emb), n_steps=16)
    with torch.no_grad():
        direct = torch.cosine_similarity(st("A man is playing music.", return_type="sentence_embedding")[0], ref_emb, 0)
    torch.testing.assert_close(res.target[0], direct, atol=1e-5, rtol=1e-5)
    assert res.delta.abs().max() < 0.01 * (res.target - res.baseline_target).abs().min()


def test_ctc_targets_waveform_and_frames(audio):
    w = waves()
    blank = audio.readout().blank_id
    res = attribute_input(audio, w, ctc_transcript([5, 6], blank=blank), method="input_x_gradient")
    assert res.scores["hook_waveform"].values.shape == (2, 401)
    frames = res.by_frame("hook_waveform")
    assert frames.axes == ("item", "pos") and torch.isnan(frames.values[1]).any()
    # per-frame sums keep the total of the samples they cover
    hop = int(round(audio.hop_length))
    n = frames.values.shape[1]
    torch.testing.assert_close(
        torch.nan_to_num(frames.values[0]).sum(), res.scores["hook_waveform"].values[0, : n * hop].sum()
    )
    # attribution over frames: a layer hook whose positions are frames gets time labels
    res2 = attribute_input(audio, w, ctc_token(5, [2, 3]), hooks=["hook_full_embed"], method="saliency")
    assert res2.scores["hook_full_embed"].labels["pos"][1].endswith("s")
    span = ctc_transcript([5], blank=blank, frames=(0, 4))
    assert attribute_input(audio, w, span, method="saliency").target.shape == (2,)


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_sequence_attribution_matches_one_target_at_a_time(kind, seq2seq):
    model = seq2seq[kind]
    src, sm, tgt, tm = padded_seq2seq_batch(first_token=0 if kind == "t5" else 2)
    opts = {"one_zero_attention_mask": sm[:, :7], "decoder_input": tgt[:, :5], "decoder_attention_mask": tm[:, :5]}
    res = attribute_sequence(model, src[:, :7], method="input_x_gradient", **opts)
    assert res.source.values.shape == (3, 4, 7) and res.target.values.shape == (3, 4, 5)
    # reference: one target position at a time through attribute_input
    for t in (0, 2):
        one = attribute_input(
            model, src[:, :7], token_score(t, tgt[:, t + 1], kind="logprob"), method="input_x_gradient", **opts
        )
        ok = tm[:, t + 1].bool()
        torch.testing.assert_close(
            res.source.values[ok, t], one.scores["encoder.hook_embed"].values[ok], equal_nan=True
        )
        torch.testing.assert_close(
            res.target.values[ok, t], one.scores["decoder.hook_embed"].values[ok], equal_nan=True
        )
    # later target tokens get exactly nothing (causal); item 2 has only 3 real targets
    assert (torch.nan_to_num(res.target.values[0, 1, 2:]) == 0).all()
    assert torch.isnan(res.scores[2, 3])
    m = res.matrix(2)
    assert m.axes == ("generated", "input") and m.shape[0] == 3
    assert "<table" in res.to_html() and "src" in res.to_text()


def test_sequence_attribution_of_generate_outputs_with_ig(seq2seq):
    model = seq2seq["bart"]
    src = padded_seq2seq_batch(first_token=2)[0][:1, :6]
    gen = model.generate(src, max_new_tokens=3, return_type="tokens")
    res = attribute_sequence(model, src, decoder_input=gen, n_steps=64)
    assert res.matrix(0).shape == (gen.shape[1] - 1, 6 + gen.shape[1])
    # completeness per generated token: the row sums are f(x) - f(0)
    with torch.no_grad():
        zero = model.run_prepared(
            model.prepare_input(src, decoder_input=gen),
            "logits",
            fwd_hooks=[(h, lambda x, hook: torch.zeros_like(x)) for h in ("encoder.hook_embed", "decoder.hook_embed")],
        ).log_softmax(-1)
    f0 = zero[0, torch.arange(gen.shape[1] - 1), gen[0, 1:]]
    gap = res.scores[0] - f0
    rows = torch.nan_to_num(res.source.values[0]).sum(-1) + torch.nan_to_num(res.target.values[0]).sum(-1)
    torch.testing.assert_close(rows, gap, rtol=0.01, atol=1e-5)


def test_views_render(bert, audio, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    tok, mask = padded_tokens()
    res = attribute_input(bert, tok, token_score([3, 2], [7, 8]), method="saliency", one_zero_attention_mask=mask)
    page = res.to_html(tmp_path / "a.html", item=1)
    assert page.count("class='tok'") == 6 and (tmp_path / "a.html").exists()
    assert res.plot(item=1) is not None
    wave = attribute_input(audio, waves(), ctc_token(5, (1, 4)), method="saliency")
    assert "<polyline" in wave.to_html() and wave.plot().get_xlabel() == "time (s)"
    with raises_input_error(ValueError, "method must be one of", param="method"):
        attribute_input(bert, tok, token_score(0, 1), method="lime")


def test_ctc_token_refuses_padding_frames_and_frames_outside(audio):
    w = waves()  # 401 and 297 samples: the second item has fewer real frames
    real = audio.prepare_input(w).mask(None).bool()
    n, n_short = real.shape[1], int(real[1].sum())
    assert n_short < n
    # a frame real in item 0 but padding in item 1 scored item 1's padding logits
    with pytest.raises(ValueError, match="padding in batch item 1"):
        attribute_input(audio, w, ctc_token(5, [n_short]), method="saliency")
    with pytest.raises(ValueError, match="outside the"):
        attribute_input(audio, w, ctc_token(5, (n, n + 2)), method="saliency")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        attribute_input(audio, w, ctc_token(10_000, [0]), method="saliency")
    # real frames of both items still score
    assert attribute_input(audio, w, ctc_token(5, [0, n_short - 1]), method="saliency").target.shape == (2,)


def test_ctc_transcript_span_outside_or_on_padding_is_refused(audio):
    w = waves()
    blank = audio.readout().blank_id
    real = audio.prepare_input(w).mask(None).bool()
    n, n_short = real.shape[1], int(real[1].sum())
    # a negative start sliced the padded end and counted lengths past it; a start on padding gave -inf
    for frames in ((-3, n), (0, n + 4), (4, 2), (n_short, n)):
        with pytest.raises(ValueError, match="ctc_transcript frames"):
            attribute_input(audio, w, ctc_transcript([5], blank=blank, frames=frames), method="saliency")
    ok = attribute_input(audio, w, ctc_transcript([5], blank=blank, frames=(1, n)), method="saliency")
    assert bool(torch.isfinite(ok.target).all())
