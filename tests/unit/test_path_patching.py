"""Neuron-level patching and path patching against manual hooks (post-LN BERT, T5 cross-attention paths)."""

from __future__ import annotations

import pytest
import torch

from encoderlens import HookedEncoderDecoder
from encoderlens.analysis import attribute_neurons, frozen_hooks, head, patch_neurons, path_patch, path_patch_heads
from tests.seq2seq_helpers import make_hf, padded_seq2seq_batch
from tests.unit.analysis_helpers import padded_tokens, tiny_mlm


@pytest.fixture(scope="module")
def bert_case():
    model = tiny_mlm(initializer_range=0.3)
    tok, mask = padded_tokens()
    cor = tok.clone()
    cor[:, 2] = 11

    def metric(logits):
        return logits[:, 4, 7] - logits[:, 4, 9]  # per item

    return model, tok, cor, metric, {"one_zero_attention_mask": mask}


def run(model, tok, kw, hooks):
    with torch.no_grad():
        return model.run_with_hooks(tok, fwd_hooks=hooks, **kw)


def test_neuron_patching_and_attribution_match_manual_hooks(bert_case):
    model, tok, cor, metric, kw = bert_case
    res = patch_neurons(model, tok, cor, metric, neurons=[(1, 3), (2, 30)], normalize=False, input_kwargs=kw)
    assert res.axes == ("neuron", "item") and res.labels["neuron"] == ["L1N3", "L2N30"]
    _, clean = model.run_with_cache(tok, **kw)
    for i, (lay, j) in enumerate([(1, 3), (2, 30)]):
        name = f"blocks.{lay}.mlp.hook_post"

        def patch(x, hook, j=j, name=name):
            x = x.clone()
            x[:, :, j] = clean[name][:, :, j]
            return x

        want = metric(run(model, cor, kw, [(name, patch)]))
        torch.testing.assert_close(res.values[i], want, atol=1e-5, rtol=1e-5)
    # attribution: (clean - corrupt) . grad at the corrupted run, summed over positions
    est = attribute_neurons(model, tok, cor, metric, normalize=False, input_kwargs=kw)
    assert est.axes == ("layer", "neuron", "item") and est.shape[:2] == (3, 37)
    acts = {}

    def keep(x, hook):
        acts[hook.name] = x
        return x

    with torch.enable_grad():
        out = model.run_with_hooks(cor, fwd_hooks=[("blocks.1.mlp.hook_post", keep)], **kw)
        g = torch.autograd.grad(metric(out).sum(), acts["blocks.1.mlp.hook_post"])[0]
    _, corr = model.run_with_cache(cor, **kw)
    manual = ((clean["blocks.1.mlp.hook_post"] - corr["blocks.1.mlp.hook_post"]) * g).sum(1)  # (b, d_mlp)
    base = metric(model(cor, **kw)).detach()
    torch.testing.assert_close(est.values[1], (manual + base[:, None]).t().detach(), atol=1e-5, rtol=1e-4)
    top = patch_neurons(model, tok, cor, lambda o: metric(o).mean(), top_k=4, input_kwargs=kw)
    assert top.shape == (4,) and len(top.meta["estimate"]) == 4


def test_path_patching_equals_manual_freezing(bert_case):
    model, tok, cor, metric, kw = bert_case
    _, clean = model.run_with_cache(tok, names_filter=lambda n: n.endswith(("hook_z", "hook_mlp_out")), **kw)
    _, corr = model.run_with_cache(cor, names_filter=lambda n: n.endswith(("hook_z", "hook_mlp_out")), **kw)
    sender = head(model, 0, 1)
    recv = "blocks.2.attn.hook_v"
    res = path_patch(model, tok, cor, metric, [sender], [recv], normalize=False, input_kwargs=kw)
    # manual: freeze every head and MLP at clean, sender's head at corrupted, record the receiver...
    frozen = list(clean)

    def freeze(x, hook):
        out = clean[hook.name].clone()
        if hook.name == "blocks.0.attn.hook_z":
            out[:, :, 1] = corr[hook.name][:, :, 1]
        return out

    got = {}
    run(model, tok, kw, [*((n, freeze) for n in frozen), (recv, lambda x, hook: got.update(v=x.clone()))])
    # ... then patch only the receiver into a clean run
    want = metric(run(model, tok, kw, [(recv, lambda x, hook: got["v"])]))
    torch.testing.assert_close(res.values[0], want, atol=1e-5, rtol=1e-5)
    # a sender after the receiver has no path to it
    late = path_patch(
        model, tok, cor, metric, [head(model, 2, 0)], ["blocks.1.hook_resid_post"], normalize=False, input_kwargs=kw
    )
    torch.testing.assert_close(late.values[0], metric(model(tok, **kw)).detach(), atol=1e-6, rtol=0)
    grid = path_patch_heads(model, tok, cor, lambda o: metric(o).mean(), ["blocks.2.hook_resid_post"], input_kwargs=kw)
    assert grid.axes == ("layer", "head") and grid.shape == (3, 3)
    with pytest.raises(ValueError, match="frozen"):
        path_patch(model, tok, cor, metric, [sender], ["blocks.1.hook_mlp_out"], input_kwargs=kw)


def test_encoder_to_cross_attention_to_decoder_paths():
    model = HookedEncoderDecoder.from_pretrained(hf_model=make_hf("bart"))
    src, sm, tgt, tm = padded_seq2seq_batch(first_token=2)
    kw = {"one_zero_attention_mask": sm, "decoder_input": tgt, "decoder_attention_mask": tm}
    cor = src.clone()
    cor[:, 3] = 9

    def metric(logits):
        return (logits[:, 2, 5] - logits[:, 2, 6]).mean()

    recv = [f"decoder.blocks.{i}.cross_attn.hook_{x}" for i in range(2) for x in "kv"]
    res = path_patch(
        model, src, cor, metric, [head(model, 1, 2, stream="encoder")], recv, normalize=False, input_kwargs=kw
    )
    frozen = frozen_hooks(model)
    assert "decoder.blocks.0.cross_attn.hook_z" in frozen
    _, clean = model.run_with_cache(src, names_filter=set(frozen).__contains__, **kw)
    _, corr = model.run_with_cache(cor, names_filter=set(frozen).__contains__, **kw)

    def freeze(x, hook):
        out = clean[hook.name].clone()
        if hook.name == "encoder.blocks.1.attn.hook_z":
            out[:, :, 2] = corr[hook.name][:, :, 2]
        return out

    got = {}
    run(
        model,
        src,
        kw,
        [*((n, freeze) for n in frozen), *((r, lambda x, hook: got.update({hook.name: x.clone()})) for r in recv)],
    )
    want = metric(run(model, src, kw, [(r, lambda x, hook: got[hook.name]) for r in recv]))
    torch.testing.assert_close(res.values[0], want, atol=1e-5, rtol=1e-5)
    assert abs(float(res.values[0]) - float(metric(model(src, **kw)).detach())) > 1e-5  # the path carries an effect
