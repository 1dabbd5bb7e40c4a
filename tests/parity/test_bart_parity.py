"""BART / mBART parity against HF: logits, every encoder/decoder residual, self- and cross-attention patterns.

BART: post-LN, learned positions (offset 2), layernorm_embedding, sqrt(d_model) embedding scale,
final_logits_bias. mBART: pre-LN with final layer norms. Padded batches on both sides, odd sizes, encoder
and decoder with different head counts and MLP widths.
"""

from __future__ import annotations

import pytest
import torch
from transformers import BartModel, MBartConfig, MBartForConditionalGeneration
from transformers.models.bart.modeling_bart import shift_tokens_right as bart_shift
from transformers.models.mbart.modeling_mbart import shift_tokens_right as mbart_shift

from encoderlens import HookedEncoderDecoder
from tests.conftest import masked_max_diff, pattern_max_diff, randomize_norms, save_tiny
from tests.seq2seq_helpers import bart_config, make_hf, padded_seq2seq_batch

ATOL = 1e-4


@pytest.mark.parametrize("kind,via", [("bart", "folder"), ("bart", "hf_model"), ("mbart", "folder")])
def test_bart_parity_every_layer(tmp_path, kind, via):
    hf = make_hf(kind)
    model = (
        HookedEncoderDecoder.from_pretrained(save_tiny(hf, tmp_path))
        if via == "folder"
        else HookedEncoderDecoder.from_pretrained(hf_model=hf)
    )
    pre_ln = kind == "mbart"
    assert model.cfg.encoder.norm_position == ("pre" if pre_ln else "post")
    assert model.cfg.encoder_embed.scale == 6.0  # sqrt(36)
    assert model.cfg.unembed.bias
    src, src_mask, tgt, tgt_mask = padded_seq2seq_batch(first_token=2)
    with torch.no_grad():
        out = hf(
            input_ids=src,
            attention_mask=src_mask,
            decoder_input_ids=tgt,
            decoder_attention_mask=tgt_mask,
            output_hidden_states=True,
            output_attentions=True,
        )
        res, cache = model.run_with_cache(
            src, tgt, return_type="all", one_zero_attention_mask=src_mask, decoder_attention_mask=tgt_mask
        )
        fast = model(src, tgt, one_zero_attention_mask=src_mask, decoder_attention_mask=tgt_mask)
    assert masked_max_diff(res.logits, out.logits, tgt_mask) < ATOL
    assert masked_max_diff(fast, out.logits, tgt_mask) < ATOL
    for side, hidden, attn, mask, n in (
        ("encoder", out.encoder_hidden_states, out.encoder_attentions, src_mask, 3),
        ("decoder", out.decoder_hidden_states, out.decoder_attentions, tgt_mask, 2),
    ):
        assert len(hidden) == n + 1
        assert masked_max_diff(cache[f"{side}.hook_full_embed"], hidden[0], mask) < ATOL, side
        for i in range(n):
            assert masked_max_diff(cache[f"{side}.blocks.{i}.hook_resid_pre"], hidden[i], mask) < ATOL, (side, i)
            assert pattern_max_diff(cache[f"{side}.blocks.{i}.attn.hook_pattern"], attn[i], mask) < ATOL, (side, i)
        last = (
            cache[f"{side}.hook_final_norm"] if pre_ln else cache[f"{side}.blocks.{n - 1}.hook_normalized_resid_post"]
        )
        assert masked_max_diff(last, hidden[n], mask) < ATOL, side
    assert masked_max_diff(res.encoder_output, out.encoder_last_hidden_state, src_mask) < ATOL
    for i in range(2):
        assert (
            pattern_max_diff(cache[f"decoder.blocks.{i}.cross_attn.hook_pattern"], out.cross_attentions[i], tgt_mask)
            < ATOL
        )
    assert cache["decoder.blocks.0.cross_attn.hook_pattern"].shape == (3, 3 if pre_ln else 2, 23, 25)
    assert ("encoder.hook_final_norm" in cache) is pre_ln


def test_bart_model_without_head(tmp_path):
    torch.manual_seed(0)
    hf = BartModel(bart_config(scale_embedding=False)).eval()  # bart-base/large do not scale embeddings
    randomize_norms(hf)
    model = HookedEncoderDecoder.from_pretrained(save_tiny(hf, tmp_path))
    assert model.lm_head is None and model.cfg.encoder_embed.scale == 1.0
    src, src_mask, tgt, tgt_mask = padded_seq2seq_batch(first_token=2)
    with torch.no_grad():
        theirs = hf(input_ids=src, attention_mask=src_mask, decoder_input_ids=tgt, decoder_attention_mask=tgt_mask)
        ours = model(src, tgt, one_zero_attention_mask=src_mask, decoder_attention_mask=tgt_mask)
    assert masked_max_diff(ours, theirs.last_hidden_state, tgt_mask) < ATOL
    # HF's BartModel invents decoder inputs from the encoder input when none are given; we refuse
    with pytest.raises(ValueError, match="decoder_input_from_targets"):
        model(src)


def test_untied_bart_head():
    hf = make_hf("bart")
    hf.config.tie_word_embeddings = False
    hf.lm_head.weight = torch.nn.Parameter(torch.randn(99, 36))
    model = HookedEncoderDecoder.from_pretrained(hf_model=hf)
    assert not model.cfg.unembed.tied
    src, src_mask, tgt, tgt_mask = padded_seq2seq_batch(first_token=2)
    with torch.no_grad():
        theirs = hf(input_ids=src, attention_mask=src_mask, decoder_input_ids=tgt, decoder_attention_mask=tgt_mask)
        ours = model(src, tgt, one_zero_attention_mask=src_mask, decoder_attention_mask=tgt_mask)
    assert masked_max_diff(ours, theirs.logits, tgt_mask) < ATOL


def test_decoder_input_from_targets_matches_hf_shift():
    for kind, shift in (("bart", lambda t: bart_shift(t, 1, 2)), ("mbart", lambda t: mbart_shift(t, 1))):
        model = HookedEncoderDecoder.from_pretrained(hf_model=make_hf(kind))
        labels = torch.tensor([[5, 6, 7, 2, 50], [8, 9, 2, 50, -100]])  # mBART: "... </s> [lang]", -100 = ignored
        ours = model.decoder_input_from_targets(labels)
        assert torch.equal(ours.tokens, shift(labels)), kind
        assert ours.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]  # the -100 label is not real
    # mBART moves the language id (last real target token) to the front
    assert ours.tokens[:, 0].tolist() == [50, 50]


def test_decoder_longer_than_positions_is_rejected():
    model = HookedEncoderDecoder.from_pretrained(hf_model=make_hf("bart"))
    src = torch.randint(3, 99, (1, 5))
    with pytest.raises(ValueError, match="exceeds the model's 40 positions"):
        model(src, torch.randint(3, 99, (1, 41)))
    with pytest.raises(ValueError, match="needs 44 decoder positions but the model has 40"):
        model.generate(src, max_new_tokens=44)


def test_converter_rejects_unsupported_settings(tmp_path):
    hf = make_hf("bart")
    hf.config.normalize_before = True  # a fairseq flag HF's BART would silently ignore
    with pytest.raises(ValueError, match="normalize_before=True"):
        HookedEncoderDecoder.from_pretrained(hf_model=hf)
    hf = make_hf("bart")
    hf.config.activation_function = "mish"
    with pytest.raises(ValueError, match="activation_function='mish'"):
        HookedEncoderDecoder.from_pretrained(hf_model=hf)


def test_mbart_without_start_token_needs_a_prefix():
    torch.manual_seed(0)
    hf = MBartForConditionalGeneration(bart_config(MBartConfig, decoder_start_token_id=None)).eval()
    model = HookedEncoderDecoder.from_pretrained(hf_model=hf)
    src = torch.randint(3, 99, (2, 6))
    with pytest.raises(ValueError, match="no decoder_start_token_id; pass decoder_input"):
        model.generate(src, max_new_tokens=3)
    out = model.generate(src, max_new_tokens=3, decoder_input=torch.tensor([[2, 50]]), stop_at_eos=False)
    assert out.shape == (2, 5) and out[:, :2].tolist() == [[2, 50], [2, 50]]
