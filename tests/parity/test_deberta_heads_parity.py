"""DeBERTa-v2/v3 classification heads against HF: sequence (``ContextPooler``) and token classification.

The DeBERTa parity setup (odd sizes, sharp attention, a padded batch), fp32 atol 1e-4: every layer, the
pooler's dense + ``pooler_hidden_act`` (``classifier.hook_hidden``), the logits.
"""

from __future__ import annotations

import pytest
import torch
from transformers import DebertaV2ForSequenceClassification, DebertaV2ForTokenClassification

from encoderlens import HookedEncoder
from tests.conftest import masked_max_diff, save_tiny
from tests.parity.encoder_parity import ATOL, max_diff, run_both
from tests.parity.test_deberta_parity import V2, V3, load_pair, padded_batch, tiny_config
from tests.parity.test_qa_heads_parity import assert_every_layer


@pytest.mark.parametrize("kw", [dict(V3), dict(V2, pooler_hidden_act="tanh", num_labels=4)], ids=["v3", "v2"])
def test_sequence_classification_parity(kw, tmp_path):
    torch.manual_seed(0)
    hf, model = load_pair(tmp_path, DebertaV2ForSequenceClassification, **kw)
    head = model.cfg.classifier
    assert head.task == "sequence" and head.input == "first_token"
    assert head.hidden_act == kw.get("pooler_hidden_act", "gelu") and model.cfg.pooler is False
    tokens, mask, tt = padded_batch()
    tt = tt if kw["type_vocab_size"] else None
    out, ours, cache = run_both(hf, model, tokens, mask, tt)
    assert_every_layer(out, ours, cache, model, mask)
    with torch.no_grad():
        assert max_diff(cache["classifier.hook_hidden"], hf.pooler(out.hidden_states[-1])) < ATOL
    assert max_diff(ours.classifier_logits, out.logits) < ATOL
    assert torch.equal(cache["classifier.hook_pooled"], cache[model.stream_spec().resid_hook(4)][:, 0])


def test_token_classification_parity(tmp_path):
    torch.manual_seed(0)
    hf, model = load_pair(tmp_path, DebertaV2ForTokenClassification, num_labels=5, **V3)
    tokens, mask, _ = padded_batch()
    out, ours, cache = run_both(hf, model, tokens, mask, None)
    assert_every_layer(out, ours, cache, model, mask)
    assert masked_max_diff(ours.classifier_logits, out.logits, mask) < ATOL


def test_pooler_of_another_width_is_refused(tmp_path):
    hf = DebertaV2ForSequenceClassification(tiny_config(pooler_hidden_size=40, **V3))
    with pytest.raises(ValueError, match="pooler_hidden_size=40"):
        HookedEncoder.from_pretrained(save_tiny(hf, tmp_path))
