"""ALBERT parity against HF (shared layers, factorised embeddings, every head) and per-application hooks."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AlbertConfig,
    AlbertForMaskedLM,
    AlbertForPreTraining,
    AlbertForSequenceClassification,
    AlbertForTokenClassification,
    AlbertModel,
)

from encoderlens import HookedEncoder
from encoderlens.convert.albert import layer_groups
from tests.conftest import masked_max_diff, save_tiny
from tests.parity.encoder_parity import ATOL, assert_stream_parity, load_pair, max_diff, padded_batch, run_both


def tiny(**kw):
    base = dict(
        vocab_size=99,
        embedding_size=20,
        hidden_size=36,
        num_hidden_layers=5,
        num_hidden_groups=1,
        num_attention_heads=3,
        intermediate_size=37,
        max_position_embeddings=64,
        type_vocab_size=3,
        hidden_act="gelu_new",
        attn_implementation="eager",
    )
    base.update(kw)
    return AlbertConfig(**base)


@pytest.mark.parametrize("n_groups", [1, 2])
def test_albert_model_parity(tmp_path, n_groups):
    hf, model = load_pair(AlbertModel(tiny(num_hidden_groups=n_groups)), tmp_path)
    # 5 layers over 2 groups: HF applies groups 0,0,0,1,1 (int(i / 2.5))
    assert model.cfg.param_source == ((0,) * 5 if n_groups == 1 else (0, 0, 0, 3, 3))
    tokens, mask, tt = padded_batch(n_token_types=3)
    out, ours, cache = run_both(hf, model, tokens, mask, tt)
    assert_stream_parity(out, cache, model, mask)
    assert masked_max_diff(ours.embeddings, out.last_hidden_state, mask) < ATOL
    assert (ours.pooled - out.pooler_output).abs().max() < ATOL


def test_layer_groups_match_hf_arithmetic():
    assert layer_groups(12, 1) == [0] * 12
    assert layer_groups(5, 2) == [0, 0, 0, 1, 1]
    assert layer_groups(12, 4) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_mlm_parity(tmp_path):
    hf, model = load_pair(AlbertForMaskedLM(tiny(hidden_act="relu")), tmp_path)
    assert model.W_U.shape == (20, 99)
    tokens, mask, tt = padded_batch(n_token_types=3)
    out, ours, cache = run_both(hf, model, tokens, mask, tt)
    assert_stream_parity(out, cache, model, mask)
    assert masked_max_diff(ours.logits, out.logits, mask) < ATOL


def test_pretraining_mlm_and_sentence_order_parity(tmp_path):
    hf, model = load_pair(AlbertForPreTraining(tiny(num_hidden_groups=2)), tmp_path)
    tokens, mask, tt = padded_batch(n_token_types=3)
    out, ours, cache = run_both(hf, model, tokens, mask, tt)
    assert_stream_parity(out, cache, model, mask)
    assert masked_max_diff(ours.logits, out.prediction_logits, mask) < ATOL
    assert max_diff(ours.classifier_logits, out.sop_logits) < ATOL


@pytest.mark.parametrize("hf_cls", [AlbertForSequenceClassification, AlbertForTokenClassification])
def test_classification_parity(tmp_path, hf_cls):
    hf, model = load_pair(hf_cls(tiny(num_labels=3, id2label={0: "x", 1: "y", 2: "z"})), tmp_path)
    assert model.class_labels == ("x", "y", "z")
    tokens, mask, tt = padded_batch(n_token_types=3)
    out, ours, cache = run_both(hf, model, tokens, mask, tt)
    assert_stream_parity(out, cache, model, mask)
    if hf_cls is AlbertForSequenceClassification:
        assert max_diff(ours.classifier_logits, out.logits) < ATOL
    else:
        assert masked_max_diff(ours.classifier_logits, out.logits, mask) < ATOL


def test_shared_layers_are_one_set_of_parameters(tmp_path):
    _, model = load_pair(AlbertModel(tiny(num_hidden_groups=2)), tmp_path)
    b = model.blocks
    assert b[1].attn.W_Q is b[0].attn.W_Q and b[2].mlp.W_in is b[0].mlp.W_in and b[4].ln2.w is b[3].ln2.w
    assert b[3].attn.W_Q is not b[0].attn.W_Q
    names = {n for n, _ in model.named_parameters()}
    assert "blocks.0.attn.W_Q" in names and "blocks.3.attn.W_Q" in names and "blocks.1.attn.W_Q" not in names
    # sharing survives a dtype change, and the stacked view repeats the shared weights per application
    model.to(torch.float64)
    assert b[1].attn.W_Q is b[0].attn.W_Q and b[1].attn.W_Q.dtype == torch.float64
    assert torch.equal(model.W_Q[2], model.W_Q[0]) and not torch.equal(model.W_Q[3], model.W_Q[0])


def test_hooks_fire_once_per_application(tmp_path):
    """Blocks share weights but not hooks: a hook on blocks.2 changes only layers 2 and later."""
    _, model = load_pair(AlbertModel(tiny()), tmp_path)
    tokens, mask, tt = padded_batch(n_token_types=3)
    calls: list[str] = []

    def count(x, hook):
        calls.append(hook.name)

    def ablate(z, hook):
        return torch.zeros_like(z)

    with torch.no_grad():
        _, clean = model.run_with_cache(tokens, return_type=None, one_zero_attention_mask=mask)
        model.run_with_hooks(
            tokens, return_type=None, one_zero_attention_mask=mask, fwd_hooks=[("blocks.*.attn.hook_z", count)]
        )
        with model.hooks(fwd_hooks=[("blocks.2.attn.hook_z", ablate)]):
            _, patched = model.run_with_cache(tokens, return_type=None, one_zero_attention_mask=mask)
    assert calls == [f"blocks.{i}.attn.hook_z" for i in range(5)]
    for i in range(5):
        diff = masked_max_diff(patched["resid_post", i], clean["resid_post", i], mask)
        assert (diff > 1e-3) == (i >= 2), (i, diff)


def test_rejects_inner_groups(tmp_path):
    hf = AlbertModel(tiny(inner_group_num=2)).eval()
    with pytest.raises(ValueError, match="inner_group_num"):
        HookedEncoder.from_pretrained(save_tiny(hf, tmp_path))
