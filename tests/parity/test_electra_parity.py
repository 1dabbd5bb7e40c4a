"""ELECTRA parity against HF: every residual and attention pattern, every head; factorised embeddings."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    ElectraConfig,
    ElectraForMaskedLM,
    ElectraForPreTraining,
    ElectraForSequenceClassification,
    ElectraForTokenClassification,
    ElectraModel,
)

from tests.conftest import masked_max_diff
from tests.parity.encoder_parity import ATOL, assert_stream_parity, load_pair, max_diff, padded_batch, run_both


def tiny(**kw):
    base = dict(
        vocab_size=99,
        embedding_size=20,
        hidden_size=36,
        num_hidden_layers=5,
        num_attention_heads=3,
        intermediate_size=37,
        max_position_embeddings=64,
        type_vocab_size=3,
        hidden_act="gelu",
        attn_implementation="eager",
    )
    base.update(kw)
    return ElectraConfig(**base)


@pytest.mark.parametrize("embedding_size", [20, 36])
def test_electra_model_parity(tmp_path, embedding_size):
    hf, model = load_pair(ElectraModel(tiny(embedding_size=embedding_size)), tmp_path)
    assert (model.embed.proj is not None) == (embedding_size != 36)
    assert model.W_E.shape == (99, embedding_size)
    tokens, mask, tt = padded_batch(n_token_types=3)
    out, ours, cache = run_both(hf, model, tokens, mask, tt)
    assert_stream_parity(out, cache, model, mask)
    assert masked_max_diff(ours.embeddings, out.last_hidden_state, mask) < ATOL
    if embedding_size != 36:
        assert cache["embed.hook_embed_pre_proj"].shape == (3, 23, embedding_size)


def test_discriminator_parity(tmp_path):
    hf, model = load_pair(ElectraForPreTraining(tiny(hidden_act="gelu_new")), tmp_path)
    assert model.class_labels == ("replaced",)
    tokens, mask, tt = padded_batch(n_token_types=3)
    out, ours, cache = run_both(hf, model, tokens, mask, tt)
    assert_stream_parity(out, cache, model, mask)
    assert ours.classifier_logits.shape == (3, 23, 1)
    assert masked_max_diff(ours.classifier_logits[..., 0], out.logits, mask) < ATOL
    replaced = model.predict_labels(tokens, one_zero_attention_mask=mask, token_type_ids=tt)
    expect = [["replaced"] if v > 0 else [] for v in out.logits[1, :17].tolist()]
    assert replaced[1] == expect


def test_generator_mlm_parity(tmp_path):
    hf, model = load_pair(ElectraForMaskedLM(tiny()), tmp_path)
    assert model.mlm_head.W_transform.shape == (36, 20) and model.W_U.shape == (20, 99)
    tokens, mask, tt = padded_batch(n_token_types=3)
    out, ours, cache = run_both(hf, model, tokens, mask, tt)
    assert_stream_parity(out, cache, model, mask)
    assert masked_max_diff(ours.logits, out.logits, mask) < ATOL


def test_sequence_classification_parity(tmp_path):
    hf, model = load_pair(ElectraForSequenceClassification(tiny(num_labels=3)), tmp_path)
    assert model.cfg.classifier.hidden_act == "gelu"
    tokens, mask, tt = padded_batch(n_token_types=3)
    out, ours, cache = run_both(hf, model, tokens, mask, tt)
    assert_stream_parity(out, cache, model, mask)
    assert max_diff(ours.classifier_logits, out.logits) < ATOL


def test_token_classification_parity(tmp_path):
    hf, model = load_pair(ElectraForTokenClassification(tiny(num_labels=7)), tmp_path)
    tokens, mask, tt = padded_batch(n_token_types=3)
    out, ours, cache = run_both(hf, model, tokens, mask, tt)
    assert_stream_parity(out, cache, model, mask)
    assert masked_max_diff(ours.classifier_logits, out.logits, mask) < ATOL


def test_projection_hook_changes_the_stream(tmp_path):
    _, model = load_pair(ElectraModel(tiny()), tmp_path)
    tokens, mask, _ = padded_batch()
    with torch.no_grad():
        base = model(tokens, return_type="embeddings", one_zero_attention_mask=mask)
        zeroed = model.run_with_hooks(
            tokens,
            return_type="embeddings",
            one_zero_attention_mask=mask,
            fwd_hooks=[("embed.hook_embed_pre_proj", lambda x, hook: torch.zeros_like(x))],
        )
    assert (base - zeroed).abs().max() > 1e-2
