"""One text-input normaliser (encoderlens.io.text.text_batch) behind every text entry point.

Tokenizer output (``BatchEncoding`` or a plain dict) is accepted everywhere text is, giving the same
ids, mask and segment ids as the text itself.
"""

from __future__ import annotations

import pytest
import torch

from encoderlens import HookedEncoderDecoder
from encoderlens.io.text import is_text, text_batch
from tests.seq2seq_helpers import make_hf, t5_tokenizer

PAIRS = [("the cat sat", "on the mat"), ("a dog", "ran far away from the house")]


def test_encoder_takes_batch_encoding_and_dicts_like_text(tiny_mlm):
    model, hf, tok = tiny_mlm
    enc = tok([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, return_tensors="pt")
    from_text = model.tokenize(PAIRS)
    for given in (enc, dict(enc), {k: v.tolist() for k, v in enc.items()}):
        batch = model.tokenize(given)
        assert torch.equal(batch.tokens, from_text.tokens)
        assert torch.equal(batch.attention_mask, from_text.attention_mask)
        assert torch.equal(batch.token_type_ids, from_text.token_type_ids)
        assert bool(batch.token_type_ids.any())  # the segment ids were taken, not dropped
    with torch.no_grad():
        ours = model(enc, return_type="logits")
        theirs = hf(**enc).logits
    real = enc["attention_mask"].bool()
    assert (ours - theirs)[real].abs().max() < 1e-4


def test_tokenizer_output_errors_say_what_to_do(tiny_mlm):
    model, _, tok = tiny_mlm
    enc = tok(["the cat"], return_tensors="pt")
    with pytest.raises(ValueError, match="carries its own"):
        model(enc, one_zero_attention_mask=torch.ones(1, 4))
    with pytest.raises(ValueError, match=r"\['position_ids'\]"):
        model({**enc, "position_ids": torch.arange(4)[None]})
    # explicit segment ids override the tokenizer's, validated
    with pytest.raises(ValueError, match="token_type_ids must lie in"):
        model(enc, token_type_ids=torch.full_like(enc["input_ids"], 5))
    info = tok(["the cat"], return_tensors="pt", return_special_tokens_mask=True)
    assert torch.equal(model.tokenize(info).tokens, enc["input_ids"])  # informational keys are dropped


def test_encoder_decoder_source_and_targets_take_tokenizer_output():
    tok = t5_tokenizer()
    model = HookedEncoderDecoder.from_pretrained(hf_model=make_hf("t5"), tokenizer=tok)
    src = ["the cat sat on the mat", "a dog"]
    tgt = ["das haus ist gross", "hallo"]
    enc, dec = tok(src, padding=True, return_tensors="pt"), tok(tgt, padding=True, return_tensors="pt")
    with torch.no_grad():
        from_text = model(src, decoder_input=model.decoder_input_from_targets(tgt))
        from_encodings = model(enc, decoder_input=model.decoder_input_from_targets(dec))
    torch.testing.assert_close(from_encodings, from_text, atol=0, rtol=0)
    assert torch.equal(model.tokenize(dict(enc)).attention_mask, enc["attention_mask"])


def test_pairs_are_a_family_choice():
    assert is_text(("a", "b")) and is_text(("a", "b"), pairs=False)
    assert not is_text([("a", "b")], pairs=False) and is_text([("a", "b")])
    assert not is_text([]) and not is_text([1, 2])
    with pytest.raises(TypeError, match="input is None"):
        text_batch(None, tokenizer=None, d_vocab=10, max_positions=None)
    with pytest.raises(ValueError, match="no tokenizer"):
        text_batch("hello", tokenizer=None, d_vocab=10, max_positions=None)
