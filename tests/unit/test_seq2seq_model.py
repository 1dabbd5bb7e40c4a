"""HookedEncoderDecoder: ActivationCache algebra on both streams, text on both sides, clear errors."""

from __future__ import annotations

import pytest
import torch

from encoderlens import HookedEncoderDecoder
from encoderlens.cache import CacheKeyError
from tests.conftest import masked_max_diff, raises_input_error, save_tiny
from tests.seq2seq_helpers import bart_tokenizer, make_hf, padded_seq2seq_batch, t5_tokenizer

ATOL = 1e-4


def run(kind):
    hf = make_hf(kind)
    model = HookedEncoderDecoder.from_pretrained(hf_model=hf)
    src, src_mask, tgt, tgt_mask = padded_seq2seq_batch(first_token=model.cfg.decoder_start_token_id)
    with torch.no_grad():
        logits, cache = model.run_with_cache(
            src, tgt, one_zero_attention_mask=src_mask, decoder_attention_mask=tgt_mask
        )
    return model, logits, cache


@pytest.mark.parametrize("kind", ["t5_gated", "mbart"])
def test_pre_ln_decompositions_are_exact_on_both_streams(kind):
    model, logits, cache = run(kind)
    n_enc, n_dec = model.cfg.n_layers, model.cfg.n_decoder_layers
    for stream, n in (("encoder", n_enc), ("decoder", n_dec)):
        c = getattr(cache, stream)
        final = cache[f"{stream}.blocks.{n - 1}.hook_resid_post"]
        parts, labels = c.decompose_resid(return_labels=True)
        assert torch.allclose(parts.sum(0), final, atol=1e-5), stream
        if stream == "decoder":
            assert "0_cross_attn_out" in labels
        mid = c.decompose_resid(layer=1)
        assert torch.allclose(mid.sum(0), cache[f"{stream}.blocks.1.hook_resid_pre"], atol=1e-5)
        full = c.get_full_resid_decomposition()
        assert torch.allclose(full.sum(0), final, atol=1e-4), stream
        heads = c.stack_head_results(layer=1)
        b_O = model.get_submodule(f"{stream}.blocks.0.attn").b_O
        attn_out = heads.sum(0) + (b_O if b_O is not None else 0)
        assert torch.allclose(attn_out, cache[f"{stream}.blocks.0.hook_attn_out"], atol=1e-5)
        acc = c.accumulated_resid(incl_mid=True, apply_ln=True)
        assert acc.shape[0] == n * (3 if stream == "decoder" else 2) + 1
    # cross-attention heads sum to the cross-attention output
    cross = cache.decoder.stack_head_results(attn="cross_attn", layer=2)
    b_O = model.decoder.blocks[1].cross_attn.b_O
    out1 = cross[-model.cfg.decoder.n_heads :].sum(0) + (b_O if b_O is not None else 0)
    assert torch.allclose(out1, cache["decoder.blocks.1.hook_cross_attn_out"], atol=1e-5)
    # logit attribution (normalised by the cached final-norm scale inside, as TransformerLens): times the
    # folded unembedding, the components sum to the logits
    tok = torch.tensor(7)
    attrs = cache.decoder.logit_attrs(cache.decoder.decompose_resid(), tok)
    _, bias = model.folded_unembed()
    assert torch.allclose(attrs.sum(0) + bias[7], logits[..., 7], atol=1e-4)
    with pytest.raises(ValueError, match="not unembedded"):
        cache.encoder.logit_attrs(cache.encoder.decompose_resid(), 3)
    with pytest.raises(ValueError, match="no cross-attention"):
        cache.encoder.stack_head_results(attn="cross_attn")


def test_t5_logit_attrs_include_the_tied_output_scale():
    model, logits, cache = run("t5")
    assert model.cfg.unembed.tied and model.cfg.unembed.scale == 36**-0.5
    attrs = cache.decoder.logit_attrs(cache.decoder.accumulated_resid()[-1:], 11)[0]
    assert torch.allclose(attrs, logits[..., 11], atol=1e-4)


def test_post_ln_bart_explains_instead_of_failing():
    model, logits, cache = run("bart")
    for c in (cache.encoder, cache.decoder):
        for call in (
            c.decompose_resid,
            c.get_full_resid_decomposition,
            lambda c=c: c.apply_ln_to_stack(c.accumulated_resid()),
            lambda c=c: c.stack_head_results(incl_remainder=True),
        ):
            with pytest.raises(ValueError, match="post-LN") as info:
                call()
            assert not isinstance(info.value, KeyError)
        assert c.accumulated_resid().shape[0] == c._spec().n_layers + 1
        n_pos = 25 if c.stream == "encoder" else 23
        assert c.stack_head_results().shape[1:] == (3, n_pos, 36)
    # a post-LN stack has no final norm: the last residual is what the head reads, linearly
    final = cache.decoder.accumulated_resid()[-1]
    attrs = cache.decoder.logit_attrs(final[None], 5)[0]
    assert torch.allclose(attrs + model.b_U[5], logits[..., 5], atol=1e-4)
    heads = cache.decoder.stack_head_results(attn="cross_attn")
    assert heads.shape == (2 * 2, 3, 23, 36)  # 2 layers x 2 decoder heads


def test_no_internal_key_error_anywhere():
    """Every helper on every stream either works or raises a ValueError that explains (never a bare KeyError)."""
    for kind in ("t5", "bart"):
        model, _, cache = run(kind)
        helpers = [
            lambda c: c.accumulated_resid(incl_mid=True),
            lambda c: c.accumulated_resid(apply_ln=True),
            lambda c: c.decompose_resid(apply_ln=True),
            lambda c: c.stack_head_results(apply_ln=True),
            lambda c: c.stack_head_results(attn="cross_attn"),
            lambda c: c.get_full_resid_decomposition(expand_neurons=False, apply_ln=True),
            lambda c: c.logit_attrs(c.accumulated_resid(), 3),
            lambda c: c.stack_activation("pattern"),
            lambda c: c.stack_activation("pattern", sublayer_type="cross_attn"),
            lambda c: c["scale", 0, "ln3"],
        ]
        for c in (cache.encoder, cache.decoder):
            for h in helpers:
                try:
                    h(c)
                except CacheKeyError:
                    # a name that is genuinely absent from this stream (encoder ln3), reported as such
                    assert c.stream == "encoder"
                except KeyError as e:  # pragma: no cover - this is the failure being tested for
                    raise AssertionError(f"internal KeyError from {kind} {c.stream}: {e}") from e
                except ValueError as e:
                    assert len(str(e)) > 40
        with pytest.raises(ValueError, match="several residual streams"):
            cache["pattern", 0]
        assert cache.decoder["pattern", 0, "cross_attn"].shape[-1] == 25
        assert cache.decoder.stack_activation("pattern", sublayer_type="cross_attn").shape[:2] == (2, 3)


def test_missing_and_mismatched_decoder_inputs():
    model = HookedEncoderDecoder.from_pretrained(hf_model=make_hf("t5"))
    src, src_mask, tgt, tgt_mask = padded_seq2seq_batch(first_token=0)
    with pytest.raises(ValueError, match=r"decoder_input_from_targets\(text\)"):
        model(src)
    with pytest.raises(ValueError, match="batch size 3 but decoder input has 2"):
        model(src, tgt[:2])
    with pytest.raises(ValueError, match="got text but this model has no tokenizer"):
        model("the cat", tgt[:1])
    with pytest.raises(ValueError, match="got text but this model has no tokenizer"):
        model(src, "das haus")
    with pytest.raises(ValueError, match="decoder_attention_mask must have the tokens' shape"):
        model(src, tgt, decoder_attention_mask=tgt_mask[:, :5])
    with pytest.raises(ValueError, match="token ids must lie in"):
        model(src, tgt + 1000)
    with pytest.raises(TypeError, match="integer tensor"):
        model(src, tgt.float())
    with raises_input_error(ValueError, "return_type must be one of", param="return_type"):
        model(src, tgt, return_type="hidden")
    with pytest.raises(ValueError, match="encoder only; do not pass decoder_input"):
        model(src, tgt, return_type="encoder_output")
    enc = model(src, return_type="encoder_output", one_zero_attention_mask=src_mask)
    assert torch.equal(enc, model.encode(src, src_mask))
    out = model(src, tgt, return_type="all", one_zero_attention_mask=src_mask, decoder_attention_mask=tgt_mask)
    assert out.logits.shape == (3, 23, 99) and out.decoder_attention_mask.shape == (3, 23)


def test_decoder_padding_mask_matters():
    """Padded decoder positions are masked as keys: real positions do not change with the padding content."""
    model = HookedEncoderDecoder.from_pretrained(hf_model=make_hf("bart"))
    src, src_mask, tgt, tgt_mask = padded_seq2seq_batch(first_token=2)
    a = model(src, tgt, one_zero_attention_mask=src_mask, decoder_attention_mask=tgt_mask)
    noisy = tgt.clone()
    noisy[tgt_mask == 0] = 50
    b = model(src, noisy, one_zero_attention_mask=src_mask, decoder_attention_mask=tgt_mask)
    assert masked_max_diff(a, b, tgt_mask) < 1e-5
    # causal: changing a later decoder token never changes earlier positions
    later = tgt.clone()
    later[:, 3] = 60
    c = model(src, later, one_zero_attention_mask=src_mask, decoder_attention_mask=tgt_mask)
    assert torch.allclose(a[:, :3], c[:, :3], atol=1e-5)


def test_text_on_both_sides_with_a_t5_tokenizer(tmp_path):
    tok = t5_tokenizer()
    hf = make_hf("t5")
    path = save_tiny(hf, tmp_path, tokenizer=tok)
    model = HookedEncoderDecoder.from_pretrained(path)
    assert model.tokenizer is not None
    src_text = ["the cat sat on a mat", "a dog ran"]
    tgt_text = ["das haus ist gross", "hallo welt"]
    enc = tok(src_text, padding=True, return_tensors="pt")
    labels = tok(tgt_text, padding=True, return_tensors="pt")
    dec_ids = hf._shift_right(labels.input_ids)
    dec = model.decoder_input_from_targets(tgt_text)
    assert torch.equal(dec.tokens, dec_ids)
    assert dec.attention_mask[:, 0].tolist() == [1, 1]
    with torch.no_grad():
        theirs = hf(
            input_ids=enc.input_ids,
            attention_mask=enc.attention_mask,
            decoder_input_ids=dec_ids,
            decoder_attention_mask=dec.attention_mask,
        ).logits
        ours_text = model(src_text, tgt_text)  # text on the decoder side goes through decoder_input_from_targets
        ours_batch = model(src_text, dec)
    assert masked_max_diff(ours_text, theirs, dec.attention_mask) < ATOL
    assert torch.equal(ours_text, ours_batch)
    # a single string on both sides
    single = model("the cat sat", "das haus")
    assert single.shape == (1, 3, 99)  # [start, das, haus]
    out = model.generate(src_text, max_new_tokens=4)
    assert isinstance(out, list) and len(out) == 2 and all(isinstance(s, str) for s in out)
    assert isinstance(model.generate("the cat", max_new_tokens=3), str)
    tokens = model.generate(src_text, max_new_tokens=4, return_type="tokens")
    assert tokens.shape[0] == 2 and tokens[0, 0] == 0
    assert model.to_str_tokens("the cat") == ["\u2581the", "\u2581cat", "</s>"]
    with pytest.raises(ValueError, match="built from text automatically"):
        model(src_text, tgt_text, decoder_attention_mask=dec.attention_mask)


def test_text_with_a_bart_tokenizer(tmp_path):
    from transformers.models.bart.modeling_bart import shift_tokens_right

    tok = bart_tokenizer()
    hf = make_hf("bart")
    model = HookedEncoderDecoder.from_pretrained(save_tiny(hf, tmp_path, tokenizer=tok))
    labels = tok(["the cat", "a dog sat"], padding=True, return_tensors="pt")
    dec = model.decoder_input_from_targets(["the cat", "a dog sat"])
    assert torch.equal(dec.tokens, shift_tokens_right(labels.input_ids, 1, 2))
    assert dec.tokens[0, :2].tolist() == [2, 0]  # BART decoder inputs start with </s> <s>


def test_batched_generation_rows_match_single_runs():
    """Rows padded on the encoder side generate what they generate alone (the cross mask hides padding)."""
    model = HookedEncoderDecoder.from_pretrained(hf_model=make_hf("bart"))
    src, src_mask, _, _ = padded_seq2seq_batch()
    batch = model.generate(src, one_zero_attention_mask=src_mask, max_new_tokens=6, eos_token_id=())
    alone = model.generate(src[2:, :6], max_new_tokens=6, eos_token_id=())
    assert torch.equal(batch[2:], alone)
