"""Circuit discovery: opt-in per-head input hooks, EAP / EAP-IG against true single-edge ablations, faithfulness."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr

from encoderlens import HookedEncoderDecoder
from encoderlens.analysis import ablate_edges, circuit_html, edge_attribution, faithfulness
from encoderlens.hooks import OPT_IN_HOOKS
from tests.seq2seq_helpers import make_hf, padded_seq2seq_batch
from tests.unit.analysis_helpers import padded_tokens, pre_ln_encoder, tiny_mlm

SPLIT = ("hook_q_input", "hook_k_input", "hook_v_input", "hook_mlp_in")


def enc_case():
    model = pre_ln_encoder()
    tok, mask = padded_tokens()
    cor = tok.clone()
    cor[:, 2] = 11

    def metric(logits):
        return logits[:, 4, 7].sum() - logits[:, 4, 9].sum()

    return model, tok, cor, metric, {"one_zero_attention_mask": mask}


@pytest.fixture(scope="module")
def t5_case():
    model = HookedEncoderDecoder.from_pretrained(hf_model=make_hf("t5"))
    src, sm, tgt, tm = padded_seq2seq_batch(first_token=0)
    src, sm, tgt, tm = src[:, :8], sm[:, :8], tgt[:, :6], tm[:, :6]
    cor = src.clone()
    cor[:, 1] = 9

    def metric(logits):
        return logits[:, 3, 5].sum() - logits[:, 3, 6].sum()

    return model, src, cor, metric, {"one_zero_attention_mask": sm, "decoder_input": tgt, "decoder_attention_mask": tm}


@pytest.mark.parametrize("which", ["post_ln", "pre_ln"])
def test_split_input_hooks_are_opt_in_and_exact(which):
    model = tiny_mlm(initializer_range=0.3) if which == "post_ln" else pre_ln_encoder()
    tok, mask = padded_tokens()
    ref = model(tok, one_zero_attention_mask=mask)
    names = [n for n in model.hook_dict if n.endswith(SPLIT)]
    assert len(names) == 4 * 3 and all(n.endswith(OPT_IN_HOOKS) for n in names)
    _, cache = model.run_with_cache(tok, one_zero_attention_mask=mask)
    assert not any(k.endswith(SPLIT) for k in cache)
    out = model.run_with_hooks(tok, one_zero_attention_mask=mask, fwd_hooks=[(n, lambda x, hook: x) for n in names])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # adding d to head 1's q input (before ln1 in pre-LN) = adding the projection to head 1's q
    g = torch.Generator().manual_seed(0)
    d = torch.randn(2, 9, model.cfg.d_model, generator=g) * 0.3

    def on_input(x, hook):
        x = x.clone()
        x[:, :, 1] += d
        return x

    got = model.run_with_hooks(tok, one_zero_attention_mask=mask, fwd_hooks=[("blocks.1.hook_q_input", on_input)])
    block = model.blocks[1]
    _, c = model.run_with_cache(tok, one_zero_attention_mask=mask, names_filter="blocks.1.hook_resid_pre")
    x = c["blocks.1.hook_resid_pre"]
    ln = block.ln1 if which == "pre_ln" else (lambda t: t)
    dq = (ln(x + d) - ln(x)) @ block.attn.W_Q[1]

    def on_q(q, hook):
        q = q.clone()
        q[:, :, 1] += dq
        return q

    want = model.run_with_hooks(tok, one_zero_attention_mask=mask, fwd_hooks=[("blocks.1.attn.hook_q", on_q)])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert (got - ref).abs().max() > 1e-3


def test_eap_matches_true_single_edge_ablations_on_a_pre_ln_encoder():
    model, tok, cor, metric, kw = enc_case()
    eap = edge_attribution(model, tok, cor, metric, input_kwargs=kw)
    n = len(eap.graph)
    # ablating no edge is the clean run, every edge the corrupted run (receivers' inputs are sums of senders)
    none_all = ablate_edges(model, tok, cor, metric, [[], list(range(n))], input_kwargs=kw)
    torch.testing.assert_close(none_all, torch.tensor([eap.metric_clean, eap.metric_corrupt]), atol=1e-5, rtol=1e-5)
    true = ablate_edges(model, tok, cor, metric, [[e] for e in range(n)], input_kwargs=kw, chunk_size=32)
    true = true - eap.metric_clean
    rho = spearmanr(eap.scores, true).statistic
    ig = edge_attribution(model, tok, cor, metric, input_kwargs=kw, method="EAP-IG", n_steps=8)
    rho_ig = spearmanr(ig.scores, true).statistic
    print(f"EAP vs single-edge ablation: Spearman {rho:.3f} over {n} edges; EAP-IG {rho_ig:.3f}")
    assert rho > 0.9 and rho_ig > 0.9
    # edges whose estimate is exact: into the output (the metric is linear in the final stream's direct path
    # only up to the final norm), so check the largest edges' signs agree
    top = eap.top(10)
    assert (torch.sign(eap.scores[top]) == torch.sign(true[top])).float().mean() >= 0.8


@pytest.mark.parametrize("which", ["pre_ln", "post_ln"])
def test_eap_costs_two_forwards_and_one_backward(which, monkeypatch):
    model, tok, cor, metric, kw = enc_case()
    if which == "post_ln":  # the propagation through the stream's norms is tensor maths, not model forwards
        model = tiny_mlm(initializer_range=0.3)
    counts = {"fwd": 0, "bwd": 0}

    def fwd(x, hook):
        counts["fwd"] += 1

    grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        counts["bwd"] += 1
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    model.add_hook("blocks.0.hook_resid_pre", fwd)
    try:
        edge_attribution(model, tok, cor, metric, input_kwargs=kw)
    finally:
        model.reset_hooks()
    assert counts == {"fwd": 2, "bwd": 1}


def test_eap_on_an_encoder_decoder_with_cross_attention_edges(t5_case):
    model, src, cor, metric, kw = t5_case
    eap = edge_attribution(model, src, cor, metric, input_kwargs=kw)
    names = eap.graph.edge_names()
    assert sum(n.startswith("e.enc_out->d.") for n in names) == 2 * 2 * 3  # k, v of every cross head
    assert not any(n.startswith("e.L") and "->d." in n for n in names)
    n = len(eap.graph)
    none_all = ablate_edges(model, src, cor, metric, [[], list(range(n))], input_kwargs=kw)
    torch.testing.assert_close(none_all, torch.tensor([eap.metric_clean, eap.metric_corrupt]), atol=1e-4, rtol=1e-4)
    true = ablate_edges(model, src, cor, metric, [[e] for e in range(n)], input_kwargs=kw, chunk_size=64)
    rho = spearmanr(eap.scores, true - eap.metric_clean).statistic
    print(f"T5 EAP vs single-edge ablation: Spearman {rho:.3f} over {n} edges")
    assert rho > 0.8


def test_faithfulness_curve_prunes_and_view(t5_case, tmp_path):
    model, src, cor, metric, kw = t5_case
    eap = edge_attribution(model, src, cor, metric, input_kwargs=kw)
    n = len(eap.graph)
    curve = faithfulness(model, src, cor, metric, eap, [0, 10, 40, n], input_kwargs=kw)
    assert curve.axes == ("n_edges",)
    torch.testing.assert_close(curve.values[[0, -1]], torch.tensor([0.0, 1.0]), atol=1e-4, rtol=0)
    # the curve is measured by ablating the complement: 10 edges = ablate_edges of the other n - 10
    keep = set(eap.circuit(n_edges=10))
    direct = ablate_edges(model, src, cor, metric, [[e for e in range(n) if e not in keep]], input_kwargs=kw)
    torch.testing.assert_close(torch.tensor(curve.meta["metric"][1]), direct[0], atol=1e-5, rtol=1e-5)
    thr = float(eap.scores.abs().sort(descending=True).values[4])
    assert sorted(eap.circuit(threshold=thr)) == sorted(eap.top(5))
    page = circuit_html(eap, n_edges=12, path=tmp_path / "c.html")
    assert page.count("<line") == 12 and "<script" not in page and (tmp_path / "c.html").exists()
    with pytest.raises(ValueError, match="exactly one"):
        eap.circuit()


def test_eap_on_a_pre_ln_speech_encoder():
    from transformers import HubertConfig, HubertForCTC

    from encoderlens import HookedAudioEncoder
    from tests.parity.test_audio_parity import randomize_all, tiny_kwargs

    torch.manual_seed(0)
    hf = HubertForCTC(
        HubertConfig(**tiny_kwargs(num_hidden_layers=2, do_stable_layer_norm=True, feat_extract_norm="layer"))
    ).eval()
    randomize_all(hf)
    model = HookedAudioEncoder.from_pretrained(hf_model=hf)
    g = torch.Generator().manual_seed(1)
    clean = [torch.randn(400, generator=g).numpy() * 0.5, torch.randn(330, generator=g).numpy() * 0.5]
    corrupt = [c.copy() for c in clean]
    corrupt[0][100:200] = 0.0
    corrupt[1][100:200] = 0.0

    def metric(logits):
        return logits[:, 2, 5].sum()

    eap = edge_attribution(model, clean, corrupt, metric)
    n = len(eap.graph)
    none_all = ablate_edges(model, clean, corrupt, metric, [[], list(range(n))])
    torch.testing.assert_close(none_all, torch.tensor([eap.metric_clean, eap.metric_corrupt]), atol=1e-4, rtol=1e-4)
    true = ablate_edges(model, clean, corrupt, metric, [[e] for e in range(n)], chunk_size=32) - eap.metric_clean
    assert spearmanr(eap.scores, true).statistic > 0.8
