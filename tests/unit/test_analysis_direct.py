"""Direct contributions: parts sum exactly to the residual (post-LN with frozen norms, pre-LN), DLA."""

from __future__ import annotations

import pytest
import torch

from encoderlens.analysis import component_norms, decompose, direct_logit_attribution, head_fn
from tests.unit.analysis_helpers import linear_head_encoder, padded_tokens, pre_ln_encoder, tiny_mlm


@pytest.fixture(scope="module")
def post_ln():
    return tiny_mlm(seed=1, initializer_range=0.2)


@pytest.mark.parametrize("heads", [False, True])
@pytest.mark.parametrize("layer", [None, 0, 2])
def test_post_ln_parts_sum_to_the_residual(post_ln, heads, layer):
    tokens, mask = padded_tokens()
    dec = decompose(post_ln, tokens, layer=layer, heads=heads, one_zero_attention_mask=mask)
    n = 3 if layer is None else layer
    expected = ["embed", "pos_embed", "token_type_embed"]
    for i in range(n):
        expected += [f"L{i}H{h}" for h in range(3)] if heads else [f"L{i}_attn"]
        expected.append(f"L{i}_mlp")
    assert dec.labels == [*expected, "bias"]
    assert dec.max_error() < 1e-4
    assert dec.target_name == (
        "blocks.2.hook_normalized_resid_post" if layer is None else f"blocks.{layer}.hook_resid_pre"
    )
    # embed LN + two norms per block are frozen
    assert dec.frozen_norms[:1] == ["embed.ln"] and len(dec.frozen_norms) == 1 + 2 * n


def test_post_ln_parts_are_the_frozen_norm_images(post_ln):
    """L0's MLP output, pushed through blocks.0.ln2 frozen at its cached scale, is the part reported for layer 1."""
    tokens, mask = padded_tokens()
    dec = decompose(post_ln, tokens, layer=1, one_zero_attention_mask=mask)
    with torch.no_grad():
        _, cache = post_ln.run_with_cache(tokens, one_zero_attention_mask=mask)
    ln2 = post_ln.blocks[0].ln2
    x = cache["blocks.0.hook_mlp_out"]
    manual = (x - x.mean(-1, keepdim=True)) / cache["blocks.0.ln2.hook_scale"] * ln2.w
    torch.testing.assert_close(dec.components[dec.labels.index("L0_mlp")], manual, atol=1e-5, rtol=0)


def test_pre_ln_is_exact_and_agrees_with_the_cache():
    m = pre_ln_encoder(seed=2)
    tokens, mask = padded_tokens()
    mid = decompose(m, tokens, layer=2, one_zero_attention_mask=mask)
    assert mid.frozen_norms == [] and mid.max_error() < 1e-5
    assert mid.meta["cache_decompose_max_diff"] < 1e-6  # same parts as ActivationCache.decompose_resid
    final = decompose(m, tokens, heads=True, one_zero_attention_mask=mask)
    assert final.frozen_norms == ["ln_final"]
    assert final.target_name == "ln_final(blocks.2.hook_resid_post)"
    assert final.max_error() < 1e-5
    raw = decompose(m, tokens, apply_final_norm=False, one_zero_attention_mask=mask)
    assert raw.frozen_norms == [] and raw.target_name == "blocks.2.hook_resid_post" and raw.max_error() < 1e-5


def test_dla_through_a_declared_unembedding():
    """No family head: the declared unembedding is read through the (nonlinear) final norm, to first order."""
    m = linear_head_encoder(seed=4)
    tokens, mask = padded_tokens()
    res = direct_logit_attribution(
        m, tokens, 10, wrong_token=11, position=3, item=1, heads=True, one_zero_attention_mask=mask
    )
    assert res.axes == ("component",) and res.meta["linearised"] is True
    with torch.no_grad():
        resid = m(tokens, one_zero_attention_mask=mask, return_type="embeddings", stop_at_layer=None)
        _, cache = m.run_with_cache(tokens, one_zero_attention_mask=mask, return_type="embeddings")
        logits = head_fn(m)(cache["blocks.2.hook_resid_post"])
    assert resid.shape[-1] == m.cfg.d_model
    actual = float(logits[1, 3, 10] - logits[1, 3, 11])
    assert res.meta["actual"] == pytest.approx(actual, abs=1e-4)
    assert res.meta["first_order_total"] + res.meta["head_offset"] == pytest.approx(actual, abs=1e-4)
    assert res.values.sum().item() == pytest.approx(res.meta["first_order_total"], abs=1e-4)


def test_dla_through_the_mlm_head_is_first_order_and_says_so(post_ln):
    tokens, mask = padded_tokens()
    res = direct_logit_attribution(post_ln, tokens, 10, position=2, one_zero_attention_mask=mask)
    meta = res.meta
    assert meta["linearised"] is True
    with torch.no_grad():
        actual = post_ln(tokens, one_zero_attention_mask=mask)[0, 2, 10].item()
    assert meta["actual"] == pytest.approx(actual, abs=1e-4)
    assert meta["first_order_total"] == pytest.approx(res.values.sum().item(), abs=1e-4)
    assert meta["head_offset"] == pytest.approx(actual - meta["first_order_total"], abs=1e-4)
    assert meta["decomposition_max_error"] < 1e-4


def test_projection_and_norms(post_ln):
    tokens, mask = padded_tokens()
    dec = decompose(post_ln, tokens, one_zero_attention_mask=mask)
    direction = torch.randn(post_ln.cfg.d_model)
    proj = dec.project(direction)
    assert proj.axes == ("component", "item", "pos")
    assert torch.isnan(proj.values[:, 1, 6:]).all() and not torch.isnan(proj.values[:, 0]).any()
    total = proj.values[:, 0].sum(0)
    torch.testing.assert_close(total, dec.target[0] @ direction, atol=1e-4, rtol=0)
    norms = component_norms(dec, item=0, positions=[0, 1])
    assert norms.shape == (len(dec.labels), 2)
    with pytest.raises(ValueError, match="d_model"):
        dec.project(torch.randn(5))


def test_bad_arguments(post_ln):
    tokens, mask = padded_tokens()
    with pytest.raises(ValueError, match="layer must be"):
        decompose(post_ln, tokens, layer=9)
    with pytest.raises(ValueError, match="padding"):
        direct_logit_attribution(post_ln, tokens, 10, position=7, item=1, one_zero_attention_mask=mask)
    with pytest.raises(ValueError, match="out of range"):
        direct_logit_attribution(post_ln, tokens, 10, position=40)
    with pytest.raises(ValueError, match="tokenizer"):
        direct_logit_attribution(post_ln, tokens, "paris", position=1)
    no_head = pre_ln_encoder(mlm=False)
    with pytest.raises(ValueError, match="needs an output head"):
        direct_logit_attribution(no_head, tokens, 10, position=1)
