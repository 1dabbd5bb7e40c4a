"""MLM heads of the shared BERT-like mapping where a layout differs: DeBERTa's legacy and newer heads, tied and not."""

from __future__ import annotations

import pytest
import torch
from transformers import DebertaV2ForMaskedLM

from encoderlens import HookedEncoder
from tests.conftest import masked_max_diff, randomize_norms
from tests.parity.test_deberta_parity import V3, padded_batch, tiny_config

ATOL = 1e-4


@pytest.mark.parametrize("legacy,tied", [(True, True), (True, False), (False, True), (False, False)])
def test_deberta_mlm_head_layouts(legacy, tied):
    """Legacy ``cls.predictions`` honours ``tie_word_embeddings`` as HF does; ``lm_predictions`` always reads W_E."""
    torch.manual_seed(0)
    hf = DebertaV2ForMaskedLM(tiny_config(**V3, legacy=legacy, tie_word_embeddings=tied)).eval()
    randomize_norms(hf)
    if legacy and not tied:  # HF keeps a separate decoder: make it differ from the embeddings
        with torch.no_grad():
            hf.cls.predictions.decoder.weight.normal_()
    model = HookedEncoder.from_pretrained(hf_model=hf)
    assert model.cfg.mlm_head.tied == (tied or not legacy)
    tokens, mask, _ = padded_batch()
    with torch.no_grad():
        theirs = hf(input_ids=tokens, attention_mask=mask).logits
        ours = model(tokens, one_zero_attention_mask=mask)
    assert masked_max_diff(ours, theirs, mask) < ATOL
