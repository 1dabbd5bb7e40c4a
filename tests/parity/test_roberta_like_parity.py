"""CamemBERT and Data2VecText parity against HF (RoBERTa-shaped): every residual and pattern, every head.

As strict as ``test_roberta_parity.py``: padded batches with a left-padded row, odd sizes (d_model 36,
3 heads), fp32 atol 1e-4 on logits, every layer's residual stream and every attention pattern.
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    CamembertConfig,
    CamembertForMaskedLM,
    CamembertForSequenceClassification,
    CamembertForTokenClassification,
    CamembertModel,
    Data2VecTextConfig,
    Data2VecTextForMaskedLM,
    Data2VecTextForSequenceClassification,
    Data2VecTextForTokenClassification,
    Data2VecTextModel,
)

from encoderlens import HookedEncoder
from tests.conftest import masked_max_diff, save_claiming, save_tiny
from tests.parity.encoder_parity import ATOL, assert_stream_parity, load_pair, max_diff, padded_batch, run_both
from tests.parity.test_roberta_parity import PAD, tiny

FAMILIES = {
    "camembert": (
        CamembertConfig,
        CamembertModel,
        CamembertForMaskedLM,
        CamembertForSequenceClassification,
        CamembertForTokenClassification,
    ),
    "data2vec-text": (
        Data2VecTextConfig,
        Data2VecTextModel,
        Data2VecTextForMaskedLM,
        Data2VecTextForSequenceClassification,
        Data2VecTextForTokenClassification,
    ),
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "head,act,left_pad", [("model", "gelu", False), ("mlm", "gelu_new", True), ("model", "relu", True)]
)
def test_every_layer(tmp_path, family, head, act, left_pad):
    cfg_cls, model_cls, mlm_cls, _, _ = FAMILIES[family]
    hf_cls = model_cls if head == "model" else mlm_cls
    hf, model = load_pair(hf_cls(tiny(cfg_cls, hidden_act=act)), tmp_path)
    assert model.cfg.model_type == family and model.cfg.architecture == hf_cls.__name__
    assert model.cfg.embed.positions_skip_padding and model.cfg.embed.position_offset == PAD + 1
    tokens, mask, _ = padded_batch(pad_id=PAD, left_pad_row=left_pad)
    out, ours, cache = run_both(hf, model, tokens, mask, None)
    assert_stream_parity(out, cache, model, mask)
    if head == "model":
        assert (ours.pooled - out.pooler_output).abs().max() < ATOL
        assert ours.logits is None
    else:
        assert model.cfg.mlm_head.act_fn == "gelu"  # HF hard-codes exact GELU in the LM head
        assert masked_max_diff(ours.logits, out.logits, mask) < ATOL


@pytest.mark.parametrize("family", FAMILIES)
def test_positions_skip_inner_padding_and_token_types(tmp_path, family):
    cfg_cls, model_cls, *_ = FAMILIES[family]
    hf, model = load_pair(model_cls(tiny(cfg_cls, type_vocab_size=2)), tmp_path)
    tokens, mask, _ = padded_batch(pad_id=PAD)
    tokens[0, 4] = PAD
    tt = torch.zeros_like(tokens)
    tt[0, 10:] = 1
    out, _, cache = run_both(hf, model, tokens, mask, tt)
    assert_stream_parity(out, cache, model, mask)


@pytest.mark.parametrize("family", FAMILIES)
def test_sequence_classification(tmp_path, family):
    cfg_cls, _, _, seq_cls, _ = FAMILIES[family]
    labels = {0: "neg", 1: "neutral", 2: "pos"}
    hf, model = load_pair(seq_cls(tiny(cfg_cls, num_labels=3, id2label=labels)), tmp_path)
    assert model.class_labels == ("neg", "neutral", "pos")
    tokens, mask, _ = padded_batch(pad_id=PAD)
    out, ours, cache = run_both(hf, model, tokens, mask, None)
    assert_stream_parity(out, cache, model, mask)
    assert max_diff(ours.classifier_logits, out.logits) < ATOL
    assert "classifier.hook_hidden" in cache


@pytest.mark.parametrize("family", FAMILIES)
def test_token_classification(tmp_path, family):
    cfg_cls, _, _, _, tok_cls = FAMILIES[family]
    hf, model = load_pair(tok_cls(tiny(cfg_cls, num_labels=5)), tmp_path)
    tokens, mask, _ = padded_batch(pad_id=PAD, left_pad_row=True)
    out, ours, cache = run_both(hf, model, tokens, mask, None)
    assert_stream_parity(out, cache, model, mask)
    assert masked_max_diff(ours.classifier_logits, out.logits, mask) < ATOL


@pytest.mark.parametrize("family", FAMILIES)
def test_untied_mlm_head(tmp_path, family):
    cfg_cls, _, mlm_cls, _, _ = FAMILIES[family]
    hf, model = load_pair(mlm_cls(tiny(cfg_cls, tie_word_embeddings=False)), tmp_path)
    assert not model.cfg.mlm_head.tied
    tokens, mask, _ = padded_batch(pad_id=PAD)
    out, ours, _ = run_both(hf, model, tokens, mask, None)
    assert masked_max_diff(ours.logits, out.logits, mask) < ATOL


@pytest.mark.parametrize("family", FAMILIES)
def test_unsupported_setting_is_refused_naming_the_architecture(tmp_path, family):
    cfg_cls, model_cls, *_ = FAMILIES[family]
    hf = model_cls(tiny(cfg_cls, position_embedding_type="relative_key")).eval()
    with pytest.raises(
        ValueError, match=f"^{family} converter does not support position_embedding_type='relative_key'"
    ):
        HookedEncoder.from_pretrained(save_tiny(hf, tmp_path))


@pytest.mark.parametrize("family", FAMILIES)
def test_leftover_head_weights_are_refused(family, tmp_path):
    cfg_cls, _, _, seq_cls, _ = FAMILIES[family]
    hf = seq_cls(tiny(cfg_cls, num_labels=2)).eval()
    path = save_claiming(hf, tmp_path, [f"{seq_cls.__name__.split('For')[0]}Model"])
    with pytest.raises(ValueError, match=f"{family} converter left .* classifier"):
        HookedEncoder.from_pretrained(path)
