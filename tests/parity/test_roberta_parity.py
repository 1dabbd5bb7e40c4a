"""RoBERTa / XLM-R parity against HF: every residual and attention pattern, every head; padded batches."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaModel,
    XLMRobertaConfig,
    XLMRobertaForMaskedLM,
    XLMRobertaForSequenceClassification,
    XLMRobertaModel,
)

from encoderlens import HookedEncoder
from tests.conftest import masked_max_diff, save_claiming, save_tiny
from tests.parity.encoder_parity import ATOL, assert_stream_parity, load_pair, max_diff, padded_batch, run_both

PAD = 1


def tiny(cls=RobertaConfig, **kw):
    base = dict(
        vocab_size=99,
        hidden_size=36,
        num_hidden_layers=5,
        num_attention_heads=3,
        intermediate_size=37,
        max_position_embeddings=40,
        type_vocab_size=1,
        pad_token_id=PAD,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        attn_implementation="eager",
    )
    base.update(kw)
    return cls(**base)


@pytest.mark.parametrize(
    "hf_cls,cfg_cls,act,left_pad",
    [
        (RobertaModel, RobertaConfig, "gelu", False),
        (RobertaForMaskedLM, RobertaConfig, "gelu_new", True),
        (XLMRobertaModel, XLMRobertaConfig, "relu", True),
        (XLMRobertaForMaskedLM, XLMRobertaConfig, "gelu", False),
    ],
)
def test_roberta_parity_every_layer(tmp_path, hf_cls, cfg_cls, act, left_pad):
    hf, model = load_pair(hf_cls(tiny(cfg_cls, hidden_act=act)), tmp_path)
    assert model.cfg.embed.positions_skip_padding and model.cfg.embed.position_offset == PAD + 1
    tokens, mask, _ = padded_batch(pad_id=PAD, left_pad_row=left_pad)
    out, ours, cache = run_both(hf, model, tokens, mask, None)
    assert_stream_parity(out, cache, model, mask)
    if hf_cls in (RobertaModel, XLMRobertaModel):
        assert (ours.pooled - out.pooler_output).abs().max() < ATOL
        assert ours.logits is None
    else:
        # the LM head uses exact GELU whatever hidden_act says
        assert model.cfg.mlm_head.act_fn == "gelu"
        assert masked_max_diff(ours.logits, out.logits, mask) < ATOL


def test_positions_count_non_padding_tokens_like_hf(tmp_path):
    """A pad id inside the attended text is skipped by the position count, in HF and here alike."""
    hf, model = load_pair(RobertaModel(tiny(type_vocab_size=2)), tmp_path)
    tokens, mask, _ = padded_batch(pad_id=PAD)
    tokens[0, 4] = PAD  # attended, but not counted as a position
    tt = torch.zeros_like(tokens)
    tt[0, 10:] = 1
    out, _, cache = run_both(hf, model, tokens, mask, tt)
    assert_stream_parity(out, cache, model, mask)
    # the shift is real: with plain 0..n positions the embeddings would differ after token 4
    pos_rows = cache["embed.hook_pos_embed"][0]
    assert torch.allclose(pos_rows[4], model.W_pos[PAD]) and torch.allclose(pos_rows[5], model.W_pos[PAD + 5])


@pytest.mark.parametrize(
    "hf_cls,cfg_cls",
    [(RobertaForSequenceClassification, RobertaConfig), (XLMRobertaForSequenceClassification, XLMRobertaConfig)],
)
def test_sequence_classification_parity(tmp_path, hf_cls, cfg_cls):
    labels = {0: "neg", 1: "neutral", 2: "pos"}
    hf, model = load_pair(hf_cls(tiny(cfg_cls, num_labels=3, id2label=labels)), tmp_path)
    assert model.class_labels == ("neg", "neutral", "pos")
    tokens, mask, _ = padded_batch(pad_id=PAD)
    out, ours, cache = run_both(hf, model, tokens, mask, None)
    assert_stream_parity(out, cache, model, mask)
    assert max_diff(ours.classifier_logits, out.logits) < ATOL
    with torch.no_grad():
        direct = model(tokens, return_type="classification", one_zero_attention_mask=mask)
    assert max_diff(direct, out.logits) < ATOL
    assert "classifier.hook_hidden" in cache and cache["classifier.hook_logits"].shape == (3, 3)
    preds = model.predict_labels(tokens, one_zero_attention_mask=mask)
    assert preds == [labels[int(i)] for i in out.logits.argmax(-1)]


def test_token_classification_parity(tmp_path):
    hf, model = load_pair(RobertaForTokenClassification(tiny(num_labels=5)), tmp_path)
    tokens, mask, _ = padded_batch(pad_id=PAD)
    out, ours, cache = run_both(hf, model, tokens, mask, None)
    assert_stream_parity(out, cache, model, mask)
    assert masked_max_diff(ours.classifier_logits, out.logits, mask) < ATOL
    preds = model.predict_labels(tokens, one_zero_attention_mask=mask)
    assert [len(p) for p in preds] == mask.sum(1).tolist()
    assert preds[2] == [f"LABEL_{i}" for i in out.logits[2, :5].argmax(-1).tolist()]


def test_untied_mlm_head(tmp_path):
    hf, model = load_pair(RobertaForMaskedLM(tiny(tie_word_embeddings=False)), tmp_path)
    assert not model.cfg.mlm_head.tied and not model.W_U.equal(model.W_E.T)
    tokens, mask, _ = padded_batch(pad_id=PAD)
    out, ours, _ = run_both(hf, model, tokens, mask, None)
    assert masked_max_diff(ours.logits, out.logits, mask) < ATOL


def test_rejects_unsupported_settings(tmp_path):
    hf = RobertaModel(tiny(position_embedding_type="relative_key")).eval()
    with pytest.raises(ValueError, match="position_embedding_type"):
        HookedEncoder.from_pretrained(save_tiny(hf, tmp_path))


def test_rejects_leftover_head_weights(tmp_path):
    hf = RobertaForSequenceClassification(tiny(num_labels=2)).eval()
    path = save_claiming(hf, tmp_path, ["RobertaModel"])  # the classifier weights must still be noticed
    with pytest.raises(ValueError, match="classifier"):
        HookedEncoder.from_pretrained(path)


def tiny_bpe_tokenizer():
    """A byte-level BPE tokenizer trained on a few sentences (no network), wrapped as RoBERTa's."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    corpus = ["the cat sat on the mat", "a dog ran far away from the house", "cats and dogs"] * 5
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe.train_from_iterator(corpus, vocab_size=320, min_frequency=1, special_tokens=specials)
    return RobertaTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
    )


def test_text_input_and_mask_predictions_with_bpe_tokenizer(tmp_path):
    tok = tiny_bpe_tokenizer()
    assert tok.pad_token_id == PAD
    hf = RobertaForMaskedLM(tiny(vocab_size=len(tok))).eval()
    hf.config.architectures = ["RobertaForMaskedLM"]
    hf.save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    model = HookedEncoder.from_pretrained(tmp_path / "ckpt")
    texts = ["the cat sat on the<mask>", "a dog"]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = hf(**enc).logits
        ours = model(texts)
        preds = model(texts, return_type="mask_predictions", top_k=3)
    assert masked_max_diff(ours, theirs, enc["attention_mask"]) < ATOL
    first = preds[0][0]
    assert first.token_ids == theirs[0, first.position].topk(3).indices.tolist()
    # byte-level BPE marks word starts with 'Ġ': words are plain text, continuation = no marker
    assert all("Ġ" not in w for w in first.words)
    assert first.is_continuation == [not t.startswith("Ġ") for t in first.tokens]
