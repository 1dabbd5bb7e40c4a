"""Question-answering heads against HF: every architecture's ``*ForQuestionAnswering``, and the refusals.

Same bar as the other parity tests: tiny random models with odd sizes (d_model 36, 3 heads), randomised
norms and biases, saved and loaded through ``from_pretrained(path)``, a padded batch of unequal lengths
with a left-padded row; fp32 atol 1e-4 on the input of block 0, every block's input and output, every
attention pattern, and HF's ``start_logits`` / ``end_logits``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from transformers import (
    AlbertForQuestionAnswering,
    BertForQuestionAnswering,
    CamembertConfig,
    CamembertForQuestionAnswering,
    Data2VecTextConfig,
    Data2VecTextForQuestionAnswering,
    DebertaV2ForQuestionAnswering,
    DistilBertForQuestionAnswering,
    ElectraForQuestionAnswering,
    ModernBertForQuestionAnswering,
    RobertaConfig,
    RobertaForQuestionAnswering,
    XLMRobertaConfig,
    XLMRobertaForQuestionAnswering,
)

from encoderlens import HookedEncoder
from tests.conftest import masked_max_diff, pattern_max_diff, save_tiny
from tests.parity import test_albert_parity, test_bert_parity, test_distilbert_parity, test_electra_parity
from tests.parity import test_deberta_parity as deberta
from tests.parity import test_modernbert_parity as modernbert
from tests.parity.encoder_parity import ATOL, load_pair, padded_batch, run_both
from tests.parity.test_roberta_parity import PAD, tiny

#: name -> (tiny HF QA model, padding id, token types in the batch)
CASES: dict[str, tuple[Callable[[], Any], int, int]] = {
    "bert": (lambda: BertForQuestionAnswering(test_bert_parity.tiny_config()), 0, 3),
    "roberta": (lambda: RobertaForQuestionAnswering(tiny(RobertaConfig)), PAD, 0),
    "xlm-roberta": (lambda: XLMRobertaForQuestionAnswering(tiny(XLMRobertaConfig, hidden_act="gelu_new")), PAD, 0),
    "camembert": (lambda: CamembertForQuestionAnswering(tiny(CamembertConfig)), PAD, 0),
    "data2vec-text": (lambda: Data2VecTextForQuestionAnswering(tiny(Data2VecTextConfig)), PAD, 0),
    "electra": (lambda: ElectraForQuestionAnswering(test_electra_parity.tiny()), 0, 3),
    "albert": (lambda: AlbertForQuestionAnswering(test_albert_parity.tiny(num_hidden_groups=2)), 0, 3),
    "distilbert": (lambda: DistilBertForQuestionAnswering(test_distilbert_parity.tiny()), 0, 0),
    "deberta-v3": (lambda: DebertaV2ForQuestionAnswering(deberta.tiny_config(**deberta.V3)), 0, 0),
    "deberta-v2": (lambda: DebertaV2ForQuestionAnswering(deberta.tiny_config(**deberta.V2)), 0, 2),
    "modernbert": (lambda: ModernBertForQuestionAnswering(modernbert.tiny_config(classifier_bias=True)), 0, 0),
}


def assert_every_layer(out: Any, ours: Any, cache: Any, model: HookedEncoder, mask: torch.Tensor) -> None:
    """Block-0 input, every block's input and output (the final norm's output where the model has one),
    and every attention pattern match HF at real positions."""
    hidden, n = out.hidden_states, model.cfg.n_layers
    assert len(hidden) == n + 1 and len(out.attentions) == n
    assert masked_max_diff(cache["hook_full_embed"], hidden[0], mask) < ATOL
    for i in range(n):
        assert masked_max_diff(cache["resid_pre", i], hidden[i], mask) < ATOL, i
        assert pattern_max_diff(cache["pattern", i], out.attentions[i], mask) < ATOL, i
        block_out = cache[model.stream_spec().resid_hook(i)]
        if i == n - 1 and model.ln_final is not None:  # HF's last hidden state is after the final norm
            block_out = ours.embeddings
        assert masked_max_diff(block_out, hidden[i + 1], mask) < ATOL, i


@pytest.mark.parametrize("name", CASES)
def test_qa_head_parity_every_layer(name, tmp_path):
    make, pad, n_types = CASES[name]
    torch.manual_seed(0)
    hf, model = load_pair(make(), tmp_path)
    assert model.cfg.qa_head is not None and model.cfg.classifier is None and model.mlm_head is None
    assert model.default_return_type == "qa"
    tokens, mask, tt = padded_batch(pad_id=pad, n_token_types=n_types, left_pad_row=True)
    out, ours, cache = run_both(hf, model, tokens, mask, tt)
    assert_every_layer(out, ours, cache, model, mask)
    assert masked_max_diff(ours.start_logits, out.start_logits, mask) < ATOL
    assert masked_max_diff(ours.end_logits, out.end_logits, mask) < ATOL
    # the default return type is the QA logits, start and end stacked last; the hook sees that tensor
    kw: dict[str, Any] = {"one_zero_attention_mask": mask} | ({"token_type_ids": tt} if tt is not None else {})
    with torch.no_grad():
        default = model(tokens, **kw)
    assert masked_max_diff(default, torch.stack([out.start_logits, out.end_logits], -1), mask) < ATOL
    assert torch.equal(cache["qa_head.hook_logits"][..., 0], ours.start_logits)
    assert torch.equal(cache["qa_head.hook_logits"][..., 1], ours.end_logits)


def test_modernbert_qa_head_has_its_prediction_head_hooks(tmp_path):
    """ModernBERT's QA head reads dense -> act -> LayerNorm first: those are hooked, and a hook edit takes effect."""
    hf, model = load_pair(CASES["modernbert"][0](), tmp_path)
    tokens, mask = modernbert.padded_batch()
    with torch.no_grad():
        last = hf.model(input_ids=tokens, attention_mask=mask).last_hidden_state
        logits, cache = model.run_with_cache(tokens, one_zero_attention_mask=mask)
        assert masked_max_diff(cache["qa_head.hook_hidden"], hf.head.act(hf.head.dense(last)), mask) < ATOL
        assert model.qa_head.ln.b is None  # norm_bias=False: zeroing the normalised input leaves the output bias
        zeroed = model.run_with_hooks(
            tokens, one_zero_attention_mask=mask, fwd_hooks=[("qa_head.ln.hook_normalized", lambda x, hook: x * 0)]
        )
    assert torch.allclose(zeroed, model.qa_head.b.expand_as(zeroed))
    assert not torch.allclose(logits, zeroed)


@pytest.mark.parametrize(
    "make",
    [
        lambda n: BertForQuestionAnswering(test_bert_parity.tiny_config(num_labels=n)),
        lambda n: ModernBertForQuestionAnswering(modernbert.tiny_config(num_labels=n)),
    ],
    ids=["bert", "modernbert"],
)
@pytest.mark.parametrize("n_labels", [1, 3])
def test_qa_num_labels_other_than_two_is_refused_as_hf_fails(make, n_labels, tmp_path):
    hf = make(n_labels).eval()
    tokens, mask, _ = padded_batch()
    with pytest.raises(ValueError):  # HF's own forward cannot split the logits into start and end
        hf(input_ids=tokens, attention_mask=mask)
    with pytest.raises(ValueError, match=rf"num_labels \(for {type(hf).__name__}\)={n_labels}.*start and end"):
        HookedEncoder.from_pretrained(save_tiny(hf, tmp_path))


def test_qa_return_type_without_a_qa_head_is_refused(tmp_path):
    _, model = load_pair(BertForQuestionAnswering(test_bert_parity.tiny_config()).bert, tmp_path)
    tokens, mask, _ = padded_batch()
    assert model.qa_head is None and model.default_return_type == "embeddings"
    with pytest.raises(ValueError, match="ForQuestionAnswering"):
        model(tokens, return_type="qa", one_zero_attention_mask=mask)
    with torch.no_grad():
        assert model(tokens, return_type="all", one_zero_attention_mask=mask).start_logits is None
