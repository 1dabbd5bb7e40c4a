"""Attention rollout and flow against slow references (explicit loops over the cached patterns)."""

from __future__ import annotations

import torch

from encoderlens import HookedEncoderDecoder
from encoderlens.analysis import attention_flow, attention_rollout
from tests.seq2seq_helpers import make_hf, padded_seq2seq_batch
from tests.unit.analysis_helpers import padded_tokens, tiny_mlm


def mixing(model, tok, mask, layer, item, n, prefix=""):
    _, cache = model.run_with_cache(tok, one_zero_attention_mask=mask) if not prefix else (None, None)
    a = cache[f"blocks.{layer}.attn.hook_pattern"][item, :, :n, :n].mean(0).double()
    return 0.5 * a + 0.5 * torch.eye(n, dtype=torch.float64)


def test_rollout_matches_a_loop_and_ignores_padding():
    model = tiny_mlm(initializer_range=0.5)
    tok, mask = padded_tokens()
    res = attention_rollout(model, tok, one_zero_attention_mask=mask)
    assert res.axes == ("item", "pos", "key_pos")
    for item, n in ((0, 9), (1, 6)):
        ref = torch.eye(n, dtype=torch.float64)
        for layer in range(3):
            ref = mixing(model, tok, mask, layer, item, n) @ ref
        torch.testing.assert_close(res.values[item, :n, :n], ref.float(), atol=1e-6, rtol=1e-5)
    assert torch.isnan(res.values[1, 6:]).all() and torch.isnan(res.values[1, :, 6:]).all()
    torch.testing.assert_close(res.values[1, :6, :6].sum(-1), torch.ones(6), atol=1e-5, rtol=0)
    alone = attention_rollout(model, tok[1:, :6])
    torch.testing.assert_close(alone.values[0], res.values[1, :6, :6], atol=1e-6, rtol=1e-5)


def test_flow_one_and_two_layers_have_closed_forms():
    model = tiny_mlm(initializer_range=0.5)
    tok, mask = padded_tokens()
    one = attention_flow(model, tok, layers=[1], one_zero_attention_mask=mask)
    a1 = mixing(model, tok, mask, 1, 1, 6)
    torch.testing.assert_close(one.values[1, :6, :6], a1.float(), atol=1e-6, rtol=1e-5)
    # two layers: each path j -> k -> i is disjoint from the others, so the flow is sum_k min(A2[i,k], A1[k,j])
    two = attention_flow(model, tok, layers=[0, 1], one_zero_attention_mask=mask)
    a0 = mixing(model, tok, mask, 0, 0, 9)
    a1 = mixing(model, tok, mask, 1, 0, 9)
    ref = torch.minimum(a1[:, :, None], a0[None, :, :]).sum(1)
    torch.testing.assert_close(two.values[0], ref.float(), atol=1e-6, rtol=1e-5)


def test_rollout_on_each_encoder_decoder_stream():
    model = HookedEncoderDecoder.from_pretrained(hf_model=make_hf("t5"))
    src, sm, tgt, tm = padded_seq2seq_batch(first_token=0)
    opts = {"one_zero_attention_mask": sm, "decoder_input": tgt, "decoder_attention_mask": tm}
    enc = attention_rollout(model, src, stream="encoder", **opts)
    dec = attention_rollout(model, src, stream="decoder", **opts)
    assert enc.shape == (3, 25, 25) and dec.shape == (3, 23, 23)
    # the decoder is causal: nothing flows from later positions
    assert (torch.nan_to_num(dec.values[0]).triu(1) == 0).all()
