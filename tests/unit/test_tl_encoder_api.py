"""HookedEncoder with TransformerLens's meanings: each silent difference of issue 11 is gone, the seed API exists."""

from __future__ import annotations

import warnings

import pytest
import torch

from encoderlens import HookedEncoder
from tests.conftest import masked_max_diff, raises_input_error

PAIRS = [("the cat sat", "on the mat"), ("a dog", "ran")]


def test_positional_forward_order_is_transformerlens(tiny_mlm):
    """Silent difference 1: forward(input, return_type, token_type_ids, one_zero_attention_mask)."""
    model, hf, _ = tiny_mlm
    tokens, tt, mask = model.to_tokens(PAIRS)
    assert int(tt.sum()) > 0 and int((mask == 0).sum()) > 0  # segments and padding both matter here
    with torch.no_grad():
        ours = model(tokens, "logits", tt, mask)
        theirs = hf(input_ids=tokens, token_type_ids=tt, attention_mask=mask).logits
    assert masked_max_diff(ours, theirs, mask) < 1e-4


def test_to_tokens_returns_the_transformerlens_triple(tiny_mlm):
    """Silent difference 2: three texts no longer unpack into three rows."""
    model, _, tok = tiny_mlm
    texts = ["the cat", "a dog ran", "paris"]
    tokens, token_type_ids, attention_mask = model.to_tokens(texts)
    ref = tok(texts, padding=True, return_tensors="pt")
    assert torch.equal(tokens, ref["input_ids"]) and torch.equal(token_type_ids, ref["token_type_ids"])
    assert torch.equal(attention_mask, ref["attention_mask"])
    with pytest.raises(ValueError, match="truncate=False"):
        model.to_tokens(texts, truncate=False)


def test_post_ln_hooks_have_transformerlens_meanings(tiny_mlm):
    """Silent difference 4: resid_mid / resid_post are the sums entering the norms (TL's BertBlock)."""
    model, hf, _ = tiny_mlm
    tokens, tt, mask = model.to_tokens(PAIRS)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, token_type_ids=tt, one_zero_attention_mask=mask)
        hidden = hf.bert(tokens, attention_mask=mask, token_type_ids=tt, output_hidden_states=True).hidden_states
    block = model.blocks[1]
    assert torch.allclose(cache["resid_mid", 1], cache["resid_pre", 1] + cache["attn_out", 1], atol=1e-6)
    assert torch.allclose(cache["normalized_resid_mid", 1], block.ln1(cache["resid_mid", 1]), atol=1e-6)
    expected_post = cache["normalized_resid_mid", 1] + cache["mlp_out", 1]
    assert torch.allclose(cache["resid_post", 1], expected_post, atol=1e-6)
    assert torch.equal(cache["normalized_resid_post", 1], cache["resid_pre", 2])
    assert masked_max_diff(cache["normalized_resid_post", 1], hidden[2], mask) < 1e-4
    assert masked_max_diff(cache["resid_post", 1], hidden[2], mask) > 1e-2  # the sum is not the hidden state


def test_unmasked_padding_warns_and_tokenizer_output_works(tiny_mlm):
    """Silent difference 5: padded ids without a mask warn as HF; a BatchEncoding carries mask and segments."""
    model, hf, tok = tiny_mlm
    enc = tok(PAIRS[0][0], [PAIRS[1][0], PAIRS[1][1]][0], return_tensors="pt")
    padded = tok(["the cat sat on the mat", "a dog"], padding=True, return_tensors="pt")
    with pytest.warns(UserWarning, match="padding token"):
        model(padded["input_ids"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(padded["input_ids"], one_zero_attention_mask=padded["attention_mask"])
        with torch.no_grad():
            ours = model(enc)
    assert torch.allclose(ours, hf(**enc).logits, atol=1e-4)


def test_seed_api_embed_mlm_head_unembed_encoder_output(tiny_mlm):
    model, hf, _ = tiny_mlm
    tokens, tt, mask = model.to_tokens(PAIRS)
    with torch.no_grad():
        emb = model.embed(tokens, token_type_ids=tt)
        assert torch.allclose(emb, hf.bert.embeddings(tokens, token_type_ids=tt), atol=1e-5)
        resid = model.encoder_output(tokens, tt, mask)
        assert torch.equal(resid, model(tokens, "embeddings", tt, mask))
        transformed = model.mlm_head(resid)
        assert transformed.shape == resid.shape
        assert torch.allclose(transformed, hf.cls.predictions.transform(resid), atol=1e-5)
        assert torch.allclose(model.unembed(transformed), model(tokens, "logits", tt, mask), atol=1e-5)
        # the whole head on any leading axes (the logit lens passes (batch, d_model) and stacks)
        logits = model.mlm_head.logits(resid)
        assert torch.allclose(model.mlm_head.logits(resid[:, 0]), logits[:, 0], atol=1e-6)
        assert torch.allclose(model.mlm_head.logits(resid[None])[0], logits, atol=1e-6)
    assert model.unembed.W_U is model.W_U or torch.equal(model.unembed.W_U, model.W_U)
    assert torch.equal(model.W_E_pos, torch.cat([model.W_E, model.W_pos]))


def test_predictions_as_transformerlens(tiny_mlm):
    model, _, tok = tiny_mlm
    one = model("the [MASK] sat", return_type="predictions")
    with torch.no_grad():
        logits = model("the [MASK] sat")
    assert one == tok.decode(logits[0, 2].argmax())
    rich = model("the [MASK] sat", return_type="mask_predictions")
    assert rich[0].token_ids[0] == int(logits[0, 2].argmax())


def test_devices_and_cfg_device(tiny_mlm, capsys):
    model, _, _ = tiny_mlm
    assert model.cfg.device == "cpu"
    assert model.to("cpu", print_details=False) is model and capsys.readouterr().out == ""
    assert model.cpu() is model and model.cfg.device == "cpu"


def test_from_pretrained_transformerlens_keywords(tiny_mlm, tmp_path):
    model, hf, tok = tiny_mlm
    from tests.conftest import save_tiny

    path = save_tiny(hf, tmp_path / "again", tok)
    half = HookedEncoder.from_pretrained(path, torch_dtype=torch.bfloat16, move_to_device=False)
    assert half.W_E.dtype == torch.bfloat16
    for key, value in (("checkpoint_index", 3), ("load_in_8bit", True), ("fold_ln", True)):
        with pytest.raises(ValueError, match=f"{key}=.*not supported"):
            HookedEncoder.from_pretrained(path, **{key: value})
    with pytest.raises(ValueError, match="revision"):
        HookedEncoder.from_pretrained(path, revision="main")  # a local folder has no revisions


def test_hooked_encoder_from_a_transformerlens_config():
    from encoderlens import HookedTransformerConfig

    tl_cfg = HookedTransformerConfig(d_head=4, d_model=12, n_ctx=5, n_layers=3, act_fn="gelu", d_vocab=22)
    model = HookedEncoder(tl_cfg)
    assert model.cfg.n_heads == 3 and model.cfg.stack.mlp.d_mlp == 48 and model.cfg.stack.norm_position == "post"
    assert model.W_U is model.unembed.W_U and model.W_E is model.embed.embed.W_E
    assert model.W_pos is model.embed.pos_embed.W_pos and model.W_E_pos.shape == (27, 12)
    assert HookedEncoder(dict(d_head=4, d_model=12, n_ctx=5, n_layers=1, d_vocab=22)).cfg.n_layers == 1
    with pytest.raises(ValueError, match="normalization_type"):
        HookedEncoder(
            HookedTransformerConfig(d_head=4, d_model=12, n_ctx=5, n_layers=1, d_vocab=9, normalization_type="RMS")
        )
    with pytest.raises(ValueError, match="not supported here"):
        HookedEncoder({"d_head": 4, "d_model": 12, "n_ctx": 5, "n_layers": 1, "d_vocab": 9, "rotary_dim": 4})
    with raises_input_error(TypeError, "from_pretrained", param="cfg"):
        HookedEncoder("bert-base-cased")
