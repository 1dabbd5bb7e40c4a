"""ModernBERT's classification heads against HF: sequence (``classifier_pooling`` cls and mean) and token.

HF pools the final hidden state first (position 0, or the mean over real tokens), then applies the
prediction head (dense -> ``classifier_activation`` -> LayerNorm) and ``classifier``. Checked on the
padded batch of the ModernBERT parity tests (odd sizes, a row shorter than the local window), fp32 atol
1e-4: every layer (as there), the pooled vector, the logits and the hooks on them.
"""

from __future__ import annotations

import pytest
import torch
from transformers import ModernBertForSequenceClassification, ModernBertForTokenClassification

from encoderlens import HookedEncoder
from encoderlens.convert.modernbert import convert
from tests.conftest import masked_max_diff
from tests.parity.encoder_parity import ATOL, load_pair, max_diff, run_both
from tests.parity.test_modernbert_parity import padded_batch, tiny_config
from tests.parity.test_qa_heads_parity import assert_every_layer

LABELS = {0: "entailment", 1: "neutral", 2: "contradiction"}


@pytest.mark.parametrize(
    "kw",
    [
        dict(classifier_pooling="cls"),
        dict(classifier_pooling="mean"),
        dict(classifier_pooling="mean", classifier_bias=True, norm_bias=True, classifier_activation="silu"),
    ],
)
def test_sequence_classification_parity(kw, tmp_path):
    torch.manual_seed(0)
    hf, model = load_pair(
        ModernBertForSequenceClassification(tiny_config(num_labels=3, id2label=LABELS, **kw)), tmp_path
    )
    head = model.cfg.classifier
    assert head.task == "sequence" and head.input == ("mean" if kw["classifier_pooling"] == "mean" else "first_token")
    assert head.hidden_norm is not None and model.class_labels == tuple(LABELS.values())
    tokens, mask = padded_batch()
    out, ours, cache = run_both(hf, model, tokens, mask, None)
    assert_every_layer(out, ours, cache, model, mask)
    last = out.hidden_states[-1]
    m = mask[..., None].float()
    pooled = (last * m).sum(1) / m.sum(1) if kw["classifier_pooling"] == "mean" else last[:, 0]
    assert max_diff(cache["classifier.hook_pooled"], pooled) < ATOL
    with torch.no_grad():
        assert max_diff(cache["classifier.hook_hidden"], hf.head.act(hf.head.dense(pooled))) < ATOL
    assert max_diff(ours.classifier_logits, out.logits) < ATOL
    assert torch.equal(cache["classifier.hook_logits"], ours.classifier_logits)
    assert model.predict_labels(tokens, one_zero_attention_mask=mask) == [LABELS[int(i)] for i in out.logits.argmax(-1)]


def test_mean_pooling_ignores_padding(tmp_path):
    """An item's logits do not depend on what its padding holds, nor on the other items of the batch."""
    _, model = load_pair(ModernBertForSequenceClassification(tiny_config(classifier_pooling="mean")), tmp_path)
    tokens, mask = padded_batch()
    with torch.no_grad():
        batched = model(tokens, return_type="classification", one_zero_attention_mask=mask)
        alone = model(tokens[2:, :5], return_type="classification")
        other_pad = tokens.clone()
        other_pad[mask == 0] = 7
        repadded = model(other_pad, return_type="classification", one_zero_attention_mask=mask)
    assert max_diff(batched[2:], alone) < ATOL
    assert max_diff(batched, repadded) < ATOL


def test_token_classification_parity(tmp_path):
    torch.manual_seed(0)
    hf, model = load_pair(ModernBertForTokenClassification(tiny_config(num_labels=5, classifier_bias=True)), tmp_path)
    assert model.cfg.classifier.task == "token" and model.cfg.classifier.hidden_norm is not None
    tokens, mask = padded_batch()
    out, ours, cache = run_both(hf, model, tokens, mask, None)
    assert_every_layer(out, ours, cache, model, mask)
    assert masked_max_diff(ours.classifier_logits, out.logits, mask) < ATOL
    readout = model.readout()
    assert readout is not None and readout.kind == "classifier" and not readout.linear


def test_unknown_pooling_is_refused():
    hf = ModernBertForSequenceClassification(tiny_config())
    # transformers 5 validates the field; older versions (and hand-written configs) do not
    object.__setattr__(hf.config, "classifier_pooling", "max")
    hf.config.architectures = ["ModernBertForSequenceClassification"]
    with pytest.raises(ValueError, match="classifier_pooling='max'"):
        convert(hf.config, hf.state_dict())


def test_classifier_weights_are_not_taken_for_the_mlm_head(tmp_path):
    """``head.*`` belongs to the classifier in a classification checkpoint: no MLM head appears."""
    _, model = load_pair(ModernBertForSequenceClassification(tiny_config()), tmp_path)
    assert model.mlm_head is None and model.default_return_type == "embeddings"
    assert isinstance(model, HookedEncoder)
