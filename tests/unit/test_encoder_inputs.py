"""HookedEncoder inputs and outputs: strings, pairs, tokens, predictions, and clear errors on bad input."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import raises_input_error


def test_strings_pairs_and_tokens_agree(tiny_mlm):
    model, hf, tok = tiny_mlm
    texts = ["the cat sat on the mat", "a dog"]
    batch = model.tokenize(texts)
    assert batch.attention_mask[1].sum() < batch.attention_mask[0].sum()
    with torch.no_grad():
        from_text = model(texts)
        from_tokens = model(batch.tokens, one_zero_attention_mask=batch.attention_mask)
    assert torch.equal(from_text, from_tokens)
    pair = model.tokenize(("the cat sat", "a dog ran"))
    assert pair.token_type_ids is not None and pair.token_type_ids.max() == 1
    enc = tok("the cat sat", "a dog ran", return_tensors="pt")
    assert torch.equal(pair.token_type_ids, enc["token_type_ids"])
    with torch.no_grad():
        ours = model(("the cat sat", "a dog ran"))
        theirs = hf(**enc).logits
    assert (ours - theirs).abs().max() < 1e-4
    assert model.to_str_tokens("the cats") == ["[CLS]", "the", "cat", "##s", "[SEP]"]
    assert model.to_str_tokens(["the", "a dog"])[1] == ["[CLS]", "a", "dog", "[SEP]"]
    assert model.to_string(model.to_tokens("the cat")[0][0]) == "the cat"


def test_predictions_several_masks_across_a_batch(tiny_mlm):
    model, _, tok = tiny_mlm
    texts = ["the [MASK] sat on the [MASK]", "a dog [MASK]"]
    preds = model(texts, return_type="mask_predictions", top_k=3)
    assert [len(p) for p in preds] == [2, 1]
    logits = model(texts)
    first = preds[0][0]
    assert first.position == 2
    assert first.token_ids == logits[0, 2].topk(3).indices.tolist()
    assert abs(sum(first.probs) - logits[0, 2].softmax(-1).topk(3).values.sum().item()) < 1e-5
    assert len(first.tokens) == 3 and "[MASK]" not in first.sequence
    assert all(w == (t[2:] if c else t) for w, t, c in zip(first.words, first.tokens, first.is_continuation))
    single = model("a [MASK] dog", return_type="mask_predictions")
    assert isinstance(single, list) and len(single) == 1 and len(single[0].token_ids) == 5
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        model("no mask here", return_type="mask_predictions")


def test_bad_inputs_raise_clear_errors(tiny_mlm):
    model, _, _ = tiny_mlm
    with pytest.raises(ValueError, match=r"\[0, 99\)"):
        model(torch.tensor([[2, 150, 3]]))
    with pytest.raises(ValueError, match="positions"):
        model(torch.randint(5, 90, (1, 41)))
    with pytest.warns(UserWarning, match="truncating"):
        out = model(" ".join(["cat"] * 60))
    assert out.shape[1] == 40
    with pytest.raises(TypeError, match="integer"):
        model(torch.rand(1, 4))
    with pytest.raises(ValueError, match="shape"):
        model(torch.tensor([[2, 5, 3]]), one_zero_attention_mask=torch.ones(1, 4))
    with pytest.raises(ValueError, match="0 and 1"):
        model(torch.tensor([[2, 5, 3]]), one_zero_attention_mask=torch.tensor([[1, 2, 1]]))
    with pytest.raises(ValueError, match="token_type_ids"):
        model(torch.tensor([[2, 5, 3]]), token_type_ids=torch.tensor([[0, 5, 0]]))
    with raises_input_error(ValueError, "return_type", param="return_type"):
        model("the cat", return_type="logit")
    with pytest.raises(ValueError, match="empty"):
        model([])
    with pytest.raises(ValueError, match="pooler"):
        model("the cat", return_type="pooled")
    model.tokenizer = None
    with pytest.raises(ValueError, match="no tokenizer"):
        model("the cat")


def test_embeddings_only_checkpoint_refuses_logits(tmp_path):
    from encoderlens import HookedEncoder

    model = HookedEncoder.from_pretrained("default")
    with pytest.raises(ValueError, match="MLM head"):
        model("hello", return_type="logits")
    with pytest.raises(TypeError, match="dtype"):
        HookedEncoder.from_pretrained("default", dtype="float32")
    with pytest.raises(ValueError, match="no such folder|config.json"):
        HookedEncoder.from_pretrained(str(tmp_path / "missing" / "x" / "y"))
