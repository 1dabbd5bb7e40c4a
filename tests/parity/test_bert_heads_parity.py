"""BERT classification heads (sequence, token, multi-label) and an untied MLM head, against HF."""

from __future__ import annotations

import pytest
import torch
from transformers import BertForMaskedLM, BertForSequenceClassification, BertForTokenClassification, BertModel

from tests.conftest import masked_max_diff
from tests.parity.encoder_parity import ATOL, assert_stream_parity, load_pair, max_diff, padded_batch, run_both
from tests.parity.test_bert_parity import tiny_config


def test_sequence_classification_parity(tmp_path):
    labels = {0: "entailment", 1: "neutral", 2: "contradiction"}
    hf, model = load_pair(BertForSequenceClassification(tiny_config(num_labels=3, id2label=labels)), tmp_path)
    assert model.cfg.classifier.input == "pooler" and model.cfg.classifier.hidden_act is None
    assert model.class_labels == ("entailment", "neutral", "contradiction")
    tokens, mask, tt = padded_batch(n_token_types=3)
    out, ours, cache = run_both(hf, model, tokens, mask, tt)
    assert_stream_parity(out, cache, model, mask)
    assert max_diff(ours.classifier_logits, out.logits) < ATOL
    assert torch.equal(cache["classifier.hook_logits"], ours.classifier_logits)
    with torch.no_grad():
        direct = model(tokens, return_type="classification", one_zero_attention_mask=mask, token_type_ids=tt)
    assert max_diff(direct, out.logits) < ATOL
    preds = model.predict_labels(tokens, one_zero_attention_mask=mask, token_type_ids=tt)
    assert preds == [labels[int(i)] for i in out.logits.argmax(-1)]


def test_multi_label_predictions(tmp_path):
    cfg = tiny_config(num_labels=4, problem_type="multi_label_classification")
    hf, model = load_pair(BertForSequenceClassification(cfg), tmp_path)
    assert model.cfg.classifier.problem_type == "multi_label_classification"
    tokens, mask, tt = padded_batch(n_token_types=3)
    with torch.no_grad():
        logits = hf(input_ids=tokens, attention_mask=mask, token_type_ids=tt).logits
    preds = model.predict_labels(tokens, one_zero_attention_mask=mask, token_type_ids=tt)
    assert preds == [[f"LABEL_{j}" for j in range(4) if row[j] > 0] for row in logits]


def test_token_classification_parity(tmp_path):
    hf, model = load_pair(BertForTokenClassification(tiny_config(num_labels=5)), tmp_path)
    assert model.pooler is None
    tokens, mask, tt = padded_batch(n_token_types=3)
    out, ours, cache = run_both(hf, model, tokens, mask, tt)
    assert_stream_parity(out, cache, model, mask)
    assert masked_max_diff(ours.classifier_logits, out.logits, mask) < ATOL


def test_untied_mlm_head_parity(tmp_path):
    hf, model = load_pair(BertForMaskedLM(tiny_config(tie_word_embeddings=False)), tmp_path)
    assert not model.cfg.mlm_head.tied
    tokens, mask, tt = padded_batch(n_token_types=3)
    out, ours, _ = run_both(hf, model, tokens, mask, tt)
    assert masked_max_diff(ours.logits, out.logits, mask) < ATOL


def test_heads_missing_give_clear_errors(tmp_path):
    _, model = load_pair(BertModel(tiny_config()), tmp_path)
    tokens, mask, _ = padded_batch()
    with pytest.raises(ValueError, match="ForSequenceClassification"):
        model(tokens, return_type="classification")
    with pytest.raises(ValueError, match="classification head"):
        model.predict_labels(tokens)
    with pytest.raises(ValueError, match="no classification head"):
        _ = model.class_labels
