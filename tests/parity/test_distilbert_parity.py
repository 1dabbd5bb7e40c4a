"""DistilBERT parity against HF: every residual and attention pattern, every head; padded batches, odd sizes."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    DistilBertConfig,
    DistilBertForMaskedLM,
    DistilBertForSequenceClassification,
    DistilBertForTokenClassification,
    DistilBertModel,
)

from encoderlens import HookedEncoder
from encoderlens.convert.distilbert import sinusoidal_table
from tests.conftest import masked_max_diff, randomize_norms, save_tiny
from tests.parity.encoder_parity import ATOL, assert_stream_parity, load_pair, max_diff, padded_batch, run_both


def tiny(**kw):
    base = dict(
        vocab_size=99,
        dim=36,
        n_layers=5,
        n_heads=3,
        hidden_dim=37,
        max_position_embeddings=64,
        activation="gelu",
        pad_token_id=0,
        attn_implementation="eager",
    )
    base.update(kw)
    return DistilBertConfig(**base)


@pytest.mark.parametrize("hf_cls,act", [(DistilBertModel, "gelu"), (DistilBertForMaskedLM, "relu")])
def test_distilbert_parity_every_layer(tmp_path, hf_cls, act):
    hf, model = load_pair(hf_cls(tiny(activation=act)), tmp_path)
    assert model.embed.token_type_embed is None and model.pooler is None
    tokens, mask, _ = padded_batch()
    out, ours, cache = run_both(hf, model, tokens, mask, None)
    assert_stream_parity(out, cache, model, mask)
    if hf_cls is DistilBertModel:
        assert masked_max_diff(ours.embeddings, out.last_hidden_state, mask) < ATOL
        assert ours.logits is None
    else:
        assert model.cfg.mlm_head.act_fn == act
        assert masked_max_diff(ours.logits, out.logits, mask) < ATOL


def test_sequence_classification_parity(tmp_path):
    labels = {0: "a", 1: "b", 2: "c", 3: "d"}
    hf, model = load_pair(DistilBertForSequenceClassification(tiny(num_labels=4, id2label=labels)), tmp_path)
    assert model.class_labels == ("a", "b", "c", "d") and model.cfg.classifier.hidden_act == "relu"
    tokens, mask, _ = padded_batch()
    out, ours, cache = run_both(hf, model, tokens, mask, None)
    assert_stream_parity(out, cache, model, mask)
    assert max_diff(ours.classifier_logits, out.logits) < ATOL


def test_regression_head(tmp_path):
    hf, model = load_pair(DistilBertForSequenceClassification(tiny(num_labels=1)), tmp_path)
    assert model.cfg.classifier.problem_type == "regression"
    tokens, mask, _ = padded_batch()
    with torch.no_grad():
        ours = model(tokens, return_type="classification", one_zero_attention_mask=mask)
        theirs = hf(input_ids=tokens, attention_mask=mask).logits
    assert ours.shape == (3, 1) and max_diff(ours, theirs) < ATOL
    with pytest.raises(ValueError, match="regression"):
        model.predict_labels(tokens, one_zero_attention_mask=mask)


def test_token_classification_parity(tmp_path):
    hf, model = load_pair(DistilBertForTokenClassification(tiny(num_labels=3)), tmp_path)
    tokens, mask, _ = padded_batch()
    out, ours, cache = run_both(hf, model, tokens, mask, None)
    assert_stream_parity(out, cache, model, mask)
    assert masked_max_diff(ours.classifier_logits, out.logits, mask) < ATOL


def test_sinusoidal_positions_rebuilt_when_missing(tmp_path):
    """With sinusoidal_pos_embds and no stored table, we rebuild the table HF's init builds."""
    hf = DistilBertModel(tiny(sinusoidal_pos_embds=True)).eval()
    randomize_norms(hf)
    path = save_tiny(hf, tmp_path)
    sd = load_file(str(path / "model.safetensors"))
    table = sd.pop("embeddings.position_embeddings.weight")
    assert torch.allclose(sinusoidal_table(64, 36), table, atol=1e-6)
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    model = HookedEncoder.from_pretrained(path)
    hf2 = DistilBertModel.from_pretrained(path, attn_implementation="eager").eval()
    tokens, mask, _ = padded_batch()
    out, _, cache = run_both(hf2, model, tokens, mask, None)
    assert_stream_parity(out, cache, model, mask)


def test_missing_learned_positions_rejected(tmp_path):
    hf = DistilBertModel(tiny()).eval()
    path = save_tiny(hf, tmp_path)
    sd = load_file(str(path / "model.safetensors"))
    del sd["embeddings.position_embeddings.weight"]
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="sinusoidal_pos_embds"):
        HookedEncoder.from_pretrained(path)


def test_token_types_refused(tmp_path):
    _, model = load_pair(DistilBertModel(tiny()), tmp_path)
    tokens, mask, _ = padded_batch()
    with pytest.raises(ValueError, match="token-type"):
        model(tokens, return_type="embeddings", token_type_ids=torch.zeros_like(tokens))
