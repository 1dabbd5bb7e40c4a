"""TransformerLens compatibility of HookedEncoderDecoder: TL's norm names, module/hook names, block and
attention call signatures, root weights, text input without a decoder input, generate keywords.

Numbers are compared with the HF model of the same tiny checkpoint (fp32, atol 1e-4).
"""

from __future__ import annotations

import pytest
import torch

from encoderlens import HookedEncoderDecoder
from tests.conftest import save_tiny
from tests.seq2seq_helpers import make_hf, padded_seq2seq_batch, t5_tokenizer

ATOL = 1e-4


@pytest.fixture(scope="module")
def t5():
    hf = make_hf("t5")
    return HookedEncoderDecoder.from_pretrained(hf_model=hf), hf


def _hf_out(module, run):
    got = {}
    h = module.register_forward_hook(lambda m, i, o: got.setdefault("x", o))
    try:
        run()
    finally:
        h.remove()
    return got["x"]


def test_decoder_norms_have_tl_names_and_meanings(t5):
    model, hf = t5
    dec0, enc0 = model.decoder[0], model.encoder[0]
    # decoder: ln1 self-attention, ln2 cross-attention, ln3 MLP; encoder: ln1, ln2 (MLP), no ln3
    assert torch.equal(dec0.ln2.w, hf.decoder.block[0].layer[1].layer_norm.weight)
    assert torch.equal(dec0.ln3.w, hf.decoder.block[0].layer[2].layer_norm.weight)
    assert torch.equal(enc0.ln2.w, hf.encoder.block[0].layer[1].layer_norm.weight)
    assert not hasattr(enc0, "ln3") and dec0.mlp_norm_name == "ln3" and enc0.mlp_norm_name == "ln2"
    src, src_mask, tgt, tgt_mask = padded_seq2seq_batch(first_token=0)
    _, cache = model.run_with_cache(src, tgt, one_zero_attention_mask=src_mask, decoder_attention_mask=tgt_mask)

    def run():
        with torch.no_grad():
            hf(input_ids=src, attention_mask=src_mask, decoder_input_ids=tgt, decoder_attention_mask=tgt_mask)

    hf_cross_norm = _hf_out(hf.decoder.block[1].layer[1].layer_norm, run)
    ours = cache["decoder.1.ln2.hook_normalized"] * model.decoder[1].ln2.w  # TL's name, an alias
    assert (ours - hf_cross_norm).abs().max() < ATOL
    hf_mlp_norm = _hf_out(hf.decoder.block[1].layer[2].layer_norm, run)
    assert (cache["decoder.blocks.1.ln3.hook_normalized"] * model.decoder[1].ln3.w - hf_mlp_norm).abs().max() < ATOL
    # apply_ln_to_stack(mlp_input=True) divides by the MLP norm's scale: the parts sum to ln3's input normalised
    parts = cache.decoder.get_full_resid_decomposition(layer=1, mlp_input=True, expand_neurons=False)
    normed = cache.decoder.apply_ln_to_stack(parts, layer=1, mlp_input=True)
    assert (normed.sum(0) - cache["decoder.blocks.1.ln3.hook_normalized"]).abs().max() < ATOL
    assert cache.decoder["scale", 1, "ln3"].shape[-1] == 1
    with pytest.raises(ValueError, match="now 'ln2'"):
        cache.decoder["scale", 1, "ln_cross"]


def test_bart_decoder_norm_names():
    hf = make_hf("bart")
    model = HookedEncoderDecoder.from_pretrained(hf_model=hf)
    layer = hf.model.decoder.layers[0]
    assert torch.equal(model.decoder[0].ln2.w, layer.encoder_attn_layer_norm.weight)
    assert torch.equal(model.decoder[0].ln3.w, layer.final_layer_norm.weight)
    assert torch.equal(model.encoder[0].ln2.w, hf.model.encoder.layers[0].final_layer_norm.weight)
    with pytest.raises(ValueError, match="use model.encoder.W_Q"):
        model.W_Q  # 3 encoder heads, 2 decoder heads: no common stack
    with pytest.raises(NotImplementedError, match="one learned position table per stack"):
        model.W_pos


def test_tl_hook_names_resolve_everywhere(t5):
    model, _ = t5
    src, src_mask, tgt, _ = padded_seq2seq_batch(first_token=0)
    names = ["hook_embed", "encoder.1.attn.hook_v", "decoder.0.cross_attn.hook_k", "decoder_final_ln.hook_normalized"]
    _, cache = model.run_with_cache(src, tgt, one_zero_attention_mask=src_mask, names_filter=names)
    assert sorted(cache.keys()) == sorted(
        ["encoder.hook_embed", "encoder.blocks.1.attn.hook_v", "decoder.blocks.0.cross_attn.hook_k",
         "decoder.ln_final.hook_normalized"]
    )  # fmt: skip
    for n in names:
        assert n in cache and cache[n] is cache[model.canonical_hook_name(n)]
    # callables and globs see TL's names too
    _, c2 = model.run_with_cache(src, tgt, names_filter=lambda n: n.startswith("encoder.0."))
    assert c2.keys() and all(k.startswith("encoder.blocks.0.") for k in c2)
    seen = []
    model.run_with_hooks(src, tgt, fwd_hooks=[("encoder.*.attn.hook_pattern", lambda x, hook: seen.append(hook.name))])
    assert seen == [f"encoder.blocks.{i}.attn.hook_pattern" for i in range(len(model.encoder))]
    # a hook through the alias acts exactly as through the canonical name
    zero = lambda x, hook: torch.zeros_like(x)  # noqa: E731
    a = model.run_with_hooks(src, tgt, fwd_hooks=[("decoder.1.hook_mlp_out", zero)])
    b = model.run_with_hooks(src, tgt, fwd_hooks=[("decoder.blocks.1.hook_mlp_out", zero)])
    assert torch.equal(a, b) and not torch.equal(a, model(src, tgt))
    with pytest.raises(ValueError, match="unknown hook name"):
        model.run_with_hooks(src, tgt, fwd_hooks=[("encoder.9.attn.hook_v", zero)])


def test_blocks_and_attention_called_as_in_tl_match_hf(t5):
    model, hf = t5
    ids = torch.tensor([[5, 17, 33, 8, 61, 2, 1]])
    dec_ids = torch.tensor([[0, 14, 9, 70]])
    with torch.no_grad():
        x = model.embed(ids)
        bias = model.encoder[0].attn.compute_relative_attention_bias(ids.shape[1], ids.shape[1])
        assert torch.equal(model.encoder[0].attn.rel_pos_bias.weight, model.encoder.position_bias.W_rel)
        assert (
            model.encoder[0].attn.has_relative_attention_bias and not model.encoder[1].attn.has_relative_attention_bias
        )
        for block in model.encoder:
            x = block(resid_pre=x, position_bias=bias)
        enc = model.encoder_final_ln(x)
        hf_enc = hf.encoder(ids).last_hidden_state
        assert (enc - hf_enc).abs().max() < ATOL
        y = model.embed(dec_ids)
        dbias = model.decoder[0].attn.compute_relative_attention_bias(dec_ids.shape[1], dec_ids.shape[1])
        for block in model.decoder:
            y = block(y, encoder_hidden_states=hf_enc, position_bias=dbias)
        hf_dec = hf.decoder(dec_ids, encoder_hidden_states=hf_enc).last_hidden_state
        assert (model.decoder_final_ln(y) - hf_dec).abs().max() < ATOL
        # a decoder self-attention called alone is causal (as HF 5's with SDPA, which sets is_causal when no
        # mask is given; its eager path needs the causal mask passed); attn(x, x, x) is attn(x)
        e = hf.decoder.embed_tokens(ids)
        ours = model.decoder[1].attn(e, e, e)
        n = ids.shape[1]
        causal = torch.full((n, n), torch.finfo(e.dtype).min).triu(1)[None, None]
        theirs = hf.decoder.block[1].layer[0].SelfAttention(e, mask=causal, cache_position=torch.arange(n))[0]
        assert (ours - theirs).abs().max() < ATOL
        assert torch.equal(ours, model.decoder[1].attn(e))
        future = e.clone()
        future[:, -1] += 1.0
        assert torch.allclose(model.decoder[1].attn(future)[:, :-1], ours[:, :-1], atol=1e-6)
        # cross-attention: query from the decoder, keys and values from the encoder
        d = hf.decoder.embed_tokens(dec_ids)
        cross = model.decoder[0].cross_attn(d, hf_enc, hf_enc)
        hf_cross = hf.decoder.block[0].layer[1].EncDecAttention(d, key_value_states=hf_enc)[0]
        assert (cross - hf_cross).abs().max() < ATOL
        # separate key and value inputs: values from another tensor change the output
        assert not torch.allclose(model.decoder[0].cross_attn(d, hf_enc, hf_enc * 2), cross)
    with pytest.raises(TypeError):
        model.encoder[1].attn(e, e, e, None)  # TL's 4th positional (a KV cache entry) is keyword-only here


def test_root_weights_unembed_and_labels(t5):
    model, hf = t5
    n_enc, n_dec = len(model.encoder), len(model.decoder)
    assert model.W_Q.shape[0] == n_enc + n_dec
    assert torch.equal(model.W_Q, torch.cat([model.encoder.W_Q, model.decoder.W_Q]))
    assert torch.equal(model.W_in, torch.cat([model.encoder.W_in, model.decoder.W_in]))
    assert model.OV.shape[:2] == (n_enc + n_dec, model.cfg.encoder.n_heads)
    labels = model.all_head_labels()
    assert labels[0] == "EL0H0" and labels[-1] == f"DL{n_dec - 1}H{model.cfg.decoder.n_heads - 1}"
    with pytest.raises(NotImplementedError, match="relative position"):
        model.W_pos
    h = torch.randn(2, 5, model.cfg.d_model)
    with torch.no_grad():
        assert (model.unembed(h) - hf.lm_head(h)).abs().max() < ATOL  # raw map, no T5 rescale
        assert torch.allclose(model.lm_head(h), model.unembed(h * model.lm_head.cfg.scale), atol=1e-5)
    assert model.unembed.W_U.shape == (model.cfg.d_model, model.cfg.d_vocab)


@pytest.fixture(scope="module")
def t5_text(tmp_path_factory):
    hf = make_hf("t5")
    path = save_tiny(hf, tmp_path_factory.mktemp("t5text"), tokenizer=t5_tokenizer())
    return HookedEncoderDecoder.from_pretrained(path), hf


def test_text_without_decoder_input_runs_the_start_token(t5_text):
    model, hf = t5_text
    texts = ["the cat sat on a mat", "a dog ran"]
    tokens, mask = model.to_tokens(texts)  # TL's pair
    assert tokens.shape == mask.shape and mask[1].sum() < mask[0].sum()
    start = torch.zeros(2, 1, dtype=torch.long)
    with torch.no_grad():
        ref = hf(input_ids=tokens, attention_mask=mask, decoder_input_ids=start).logits
    assert (model(texts) - ref).abs().max() < ATOL
    assert (model(texts[0]) - ref[:1]).abs().max() < ATOL
    _, cache = model.run_with_cache(texts)
    assert cache["decoder.0.hook_resid_post"].shape[:2] == (2, 1)
    with pytest.raises(ValueError, match="decoder_input"):
        model(tokens, one_zero_attention_mask=mask)  # ids: no silent decoder input


def test_generate_accepts_tl_keywords(t5_text):
    model, _ = t5_text
    prompt = "the cat sat"
    greedy = model.generate(prompt, max_new_tokens=4, verbose=False, return_type="tensor")
    assert torch.equal(greedy, model.generate(prompt, max_new_tokens=4, return_type="tokens"))
    with pytest.raises(ValueError, match="sampling only"):
        model.generate(prompt, max_new_tokens=4, freq_penalty=1.0)
    with pytest.raises(TypeError, match="use_past_kv_cache"):
        model.generate(prompt, max_new_tokens=4, use_past_kv_cache=True)
    # a huge frequency penalty forbids repeats among the sampled tokens
    out = model.generate(
        prompt, max_new_tokens=8, do_sample=True, freq_penalty=1e4, seed=0, stop_at_eos=False, return_type="tokens"
    )
    row = out[0].tolist()
    assert len(set(row)) == len(row)
