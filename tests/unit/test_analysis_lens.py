"""Logit lens: MLM head on every layer (post-LN BERT, pre-LN with final norm), linear heads, CTC decoding."""

from __future__ import annotations

import pytest
import torch

from encoderlens import HookedEncoder
from encoderlens.analysis import ctc_collapse, ctc_lens, head_fn, logit_lens
from tests.unit.analysis_helpers import (
    default_model,
    linear_head_encoder,
    padded_tokens,
    pre_ln_encoder,
    tiny_mlm,
    tiny_mlm_folder,
)


@pytest.fixture(scope="module")
def model():
    return tiny_mlm(seed=1, initializer_range=0.2)


def test_lens_applies_the_mlm_head_to_every_layer(model):
    tokens, mask = padded_tokens()
    lens = logit_lens(model, tokens, one_zero_attention_mask=mask)
    assert lens.layer_labels == ["embed", "L0", "L1", "L2"]
    assert lens.logits.shape == (4, 2, 9, 99)
    assert lens.meta["final_max_abs_diff"] < 1e-5  # last entry = the model's own logits
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, one_zero_attention_mask=mask)
        expected = model.mlm_head.logits(cache["blocks.1.hook_resid_pre"])  # the output of layer 0
    torch.testing.assert_close(lens.logits[1], expected, atol=1e-5, rtol=0)
    mid = logit_lens(model, tokens, one_zero_attention_mask=mask, include_mid=True, positions=[0, 3])
    assert mid.layer_labels == ["embed", "L0_mid", "L0", "L1_mid", "L1", "L2_mid", "L2"]
    assert mid.logits.shape == (7, 2, 2, 99)
    torch.testing.assert_close(mid.logits[-1], lens.logits[-1][:, [0, 3]], atol=1e-5, rtol=0)


def test_lens_summaries(model):
    tokens, mask = padded_tokens()
    lens = logit_lens(model, tokens, one_zero_attention_mask=mask, positions=[1, 2])
    top = lens.top_tokens(item=0, k=3)
    assert len(top) == 4 and len(top[0]) == 2 and len(top[0][0]) == 3
    final_top = int(lens.logits[-1, 0, 0].argmax())
    rank = lens.target_rank(final_top)
    assert rank.axes == ("layer", "pos") and rank.values[-1, 0].item() == 0
    prob = lens.target_prob([final_top, 5])
    assert 0 < prob.values[-1, 0].item() <= 1
    kl = lens.kl_to_final()
    assert kl.values[-1].abs().max().item() < 1e-6 and (kl.values >= -1e-6).all()
    assert "embed" in lens.to_text()
    with pytest.raises(ValueError, match="one per kept position"):
        lens.target_prob([1, 2, 3])
    with pytest.raises(ValueError, match="tokenizer"):
        lens.target_rank("paris")


def test_lens_on_mask_positions_with_a_tokenizer(tmp_path):
    m = HookedEncoder.from_pretrained(tiny_mlm_folder(tmp_path / "mlm"))
    lens = logit_lens(m, ["paris is the capital of [MASK] .", "the [MASK] sat on the [MASK] ."], positions="mask")
    assert lens.positions == [2, 6]  # every [MASK] position across the batch
    assert lens.target_rank("france").shape == (4, 2)
    with pytest.raises(ValueError, match="no \\[MASK\\]"):
        logit_lens(m, "the cat sat", positions="mask")
    with pytest.raises(ValueError, match="not one token"):
        lens.target_rank("zebra")


def test_lens_reads_through_the_final_norm_of_pre_ln_stacks():
    m = pre_ln_encoder(seed=3)
    tokens, mask = padded_tokens()
    lens = logit_lens(m, tokens, one_zero_attention_mask=mask)
    assert lens.meta["final_max_abs_diff"] < 1e-5
    with torch.no_grad():
        _, cache = m.run_with_cache(tokens, one_zero_attention_mask=mask)
        expected = m.mlm_head.logits(m.ln_final(cache["blocks.1.hook_resid_pre"]))
    torch.testing.assert_close(lens.logits[1], expected, atol=1e-5, rtol=0)


def test_declared_linear_unembedding_path():
    """A stream that declares (W_U, b_U) but no family head: W_U reads the final norm without its affine part."""
    m = linear_head_encoder()
    tokens, mask = padded_tokens()
    fn = head_fn(m)
    x = torch.randn(2, 3, m.cfg.d_model)
    c = x - x.mean(-1, keepdim=True)
    normalized = c / (c.pow(2).mean(-1, keepdim=True) + m.ln_final.eps).sqrt()
    torch.testing.assert_close(fn(x), normalized @ m.W_U_lin + m.b_U_lin)
    lens = logit_lens(m, tokens, one_zero_attention_mask=mask)
    assert lens.logits.shape == (4, 2, 9, 99)


def test_models_without_a_head_are_refused():
    with pytest.raises(ValueError, match="needs an output head.*similarity_by_layer"):
        logit_lens(default_model(), "A sentence-embedding checkpoint.")


def test_ctc_collapse():
    assert ctc_collapse([0, 3, 3, 0, 3, 5, 5, 5, 0, 0], blank_id=0) == [3, 3, 5]
    assert ctc_collapse([], blank_id=0) == []
    assert ctc_collapse([7, 7, 7], blank_id=7) == []


def test_ctc_lens_needs_a_speech_model(model):
    with pytest.raises(ValueError, match="speech encoders"):
        ctc_lens(model, torch.zeros(1, 5, dtype=torch.long))
