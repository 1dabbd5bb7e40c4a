"""BERT parity against HF: every residual, every attention pattern, final outputs; padded batches, odd sizes."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertForPreTraining, BertModel

from encoderlens import HookedEncoder
from tests.conftest import masked_max_diff, pattern_max_diff, randomize_norms, save_claiming, save_tiny

ATOL = 1e-4


def tiny_config(**kw) -> BertConfig:
    base = dict(
        vocab_size=99,
        hidden_size=36,
        num_hidden_layers=5,
        num_attention_heads=3,
        intermediate_size=37,
        max_position_embeddings=64,
        type_vocab_size=3,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        attn_implementation="eager",
    )
    base.update(kw)
    return BertConfig(**base)


def padded_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(5, 99, (3, 23), generator=g)
    mask = torch.ones_like(tokens)
    mask[1, 17:] = 0
    mask[2, 5:] = 0
    tokens[mask == 0] = 0
    tt = torch.zeros_like(tokens)
    tt[0, 12:] = 1
    tt[1, 8:17] = 2
    return tokens, mask, tt


@pytest.mark.parametrize(
    "hf_cls,act",
    [(BertModel, "gelu"), (BertForMaskedLM, "gelu_new"), (BertForPreTraining, "relu")],
)
def test_bert_parity_every_layer(tmp_path, hf_cls, act):
    hf = hf_cls(tiny_config(hidden_act=act)).eval()
    randomize_norms(hf)
    model = HookedEncoder.from_pretrained(save_tiny(hf, tmp_path))
    tokens, mask, tt = padded_batch()
    with torch.no_grad():
        out = hf(
            input_ids=tokens,
            attention_mask=mask,
            token_type_ids=tt,
            output_hidden_states=True,
            output_attentions=True,
        )
        all_out, cache = model.run_with_cache(
            tokens, return_type="all", one_zero_attention_mask=mask, token_type_ids=tt
        )
    hidden = out.hidden_states
    assert len(hidden) == model.cfg.n_layers + 1
    assert masked_max_diff(cache["hook_full_embed"], hidden[0], mask) < ATOL
    for i in range(model.cfg.n_layers):
        assert masked_max_diff(cache["resid_pre", i], hidden[i], mask) < ATOL, i
        assert masked_max_diff(cache["normalized_resid_post", i], hidden[i + 1], mask) < ATOL, i
        assert pattern_max_diff(cache["pattern", i], out.attentions[i], mask) < ATOL, i
    if hf_cls is BertModel:
        assert masked_max_diff(all_out.embeddings, out.last_hidden_state, mask) < ATOL
        assert (all_out.pooled - out.pooler_output).abs().max() < ATOL
        assert all_out.logits is None
    else:
        logits = out.logits if hf_cls is BertForMaskedLM else out.prediction_logits
        assert masked_max_diff(all_out.logits, logits, mask) < ATOL
    if hf_cls is BertForPreTraining:
        assert (all_out.nsp_logits - out.seq_relationship_logits).abs().max() < ATOL


def test_fast_path_equals_explicit_path(tmp_path):
    """SDPA (no pattern hooks) and the explicit softmax path agree, on a padded batch."""
    hf = BertForMaskedLM(tiny_config()).eval()
    randomize_norms(hf)
    model = HookedEncoder.from_pretrained(save_tiny(hf, tmp_path))
    tokens, mask, tt = padded_batch()
    with torch.no_grad():
        fast = model(tokens, one_zero_attention_mask=mask, token_type_ids=tt)
        slow = model.run_with_hooks(
            tokens,
            one_zero_attention_mask=mask,
            token_type_ids=tt,
            fwd_hooks=[(lambda n: n.endswith("hook_pattern"), lambda x, hook: None)],
        )
    assert masked_max_diff(fast, slow, mask) < 1e-5


def test_hf_model_object_and_heads_follow_weights(tmp_path):
    hf = BertForPreTraining(tiny_config()).eval()
    model = HookedEncoder.from_pretrained(hf_model=hf)
    assert model.mlm_head is not None and model.pooler is not None and model.nsp_head is not None
    assert not hasattr(model, "hf_model")
    tokens, mask, tt = padded_batch()
    with torch.no_grad():
        ours = model(tokens, one_zero_attention_mask=mask, token_type_ids=tt, return_type="nsp")
        theirs = hf(input_ids=tokens, attention_mask=mask, token_type_ids=tt).seq_relationship_logits
    assert (ours - theirs).abs().max() < ATOL


def test_converter_rejects_unsupported_settings(tmp_path):
    hf = BertModel(tiny_config(position_embedding_type="relative_key")).eval()
    with pytest.raises(ValueError, match="position_embedding_type"):
        HookedEncoder.from_pretrained(save_tiny(hf, tmp_path))


def test_converter_rejects_leftover_weights(tmp_path):
    from transformers import BertForSequenceClassification

    hf = BertForSequenceClassification(tiny_config(num_labels=3)).eval()
    path = save_claiming(hf, tmp_path, ["BertModel"])  # pretend; the classifier weights must still be noticed
    with pytest.raises(ValueError, match="classifier"):
        HookedEncoder.from_pretrained(path)


@pytest.mark.parametrize("saved_as", [None, ["BertForMaskedLM"]])
def test_hf_model_object_is_converted_as_its_own_class(saved_as):
    """An HF model object is what its class says: built from a config it has no ``architectures`` yet, and
    one loaded from another head's checkpoint keeps that head's name there."""
    from transformers import BertForQuestionAnswering

    hf = BertForQuestionAnswering(tiny_config()).eval()
    hf.config.architectures = saved_as
    model = HookedEncoder.from_pretrained(hf_model=hf)
    assert hf.config.architectures == saved_as  # the user's config is not modified
    tokens, mask, tt = padded_batch()
    with torch.no_grad():
        ours = model(tokens, one_zero_attention_mask=mask, token_type_ids=tt)
        theirs = hf(input_ids=tokens, attention_mask=mask, token_type_ids=tt)
    assert masked_max_diff(ours[..., 0], theirs.start_logits, mask) < ATOL
    assert masked_max_diff(ours[..., 1], theirs.end_logits, mask) < ATOL
