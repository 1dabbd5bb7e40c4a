"""T5 family parity against HF: logits, every encoder/decoder residual, self- and cross-attention patterns.

Variants: T5 v1.0 (relu, tied head with d_model**-0.5 scaling), T5 v1.1 / Flan (gated-gelu, untied head),
mT5. Padded batches on both sides, odd sizes (d_model 36, d_kv 13, d_ff 37, 3 encoder / 2 decoder
layers), 8 buckets with max_distance 20 and sequences longer than 20 so the log-spaced and last buckets
are used.
"""

from __future__ import annotations

import pytest
import torch
from transformers import MT5Config, MT5EncoderModel, T5EncoderModel, T5Model
from transformers.models.t5.modeling_t5 import T5Attention

import encoderlens
from encoderlens import HookedEncoder, HookedEncoderDecoder
from encoderlens.components.position import relative_position_bucket
from tests.conftest import masked_max_diff, pattern_max_diff, randomize_norms, save_tiny
from tests.seq2seq_helpers import MAX_DISTANCE, N_BUCKETS, make_hf, padded_seq2seq_batch, t5_config

ATOL = 1e-4


def compare_stack(cache, prefix, hidden, attentions, mask, n_layers, final):
    """resid_pre of every block vs HF hidden_states[i]; the final norm output vs the last one; patterns."""
    assert len(hidden) == n_layers + 1
    for i in range(n_layers):
        assert masked_max_diff(cache[f"{prefix}.blocks.{i}.hook_resid_pre"], hidden[i], mask) < ATOL, (prefix, i)
        assert pattern_max_diff(cache[f"{prefix}.blocks.{i}.attn.hook_pattern"], attentions[i], mask) < ATOL, i
    for i in range(n_layers - 1):
        assert masked_max_diff(cache[f"{prefix}.blocks.{i}.hook_resid_post"], hidden[i + 1], mask) < ATOL, i
    assert masked_max_diff(cache[f"{prefix}.hook_final_norm"], hidden[n_layers], mask) < ATOL
    if final is not None:
        assert masked_max_diff(cache[f"{prefix}.hook_final_norm"], final, mask) < ATOL


@pytest.mark.parametrize(
    "kind,via",
    # a saved folder drops tied copies; an HF model object's state dict keeps them (checked equal, then accepted)
    [("t5", "folder"), ("t5", "hf_model"), ("t5_gated", "folder"), ("t5_gated", "hf_model"), ("mt5", "folder")],
)
def test_t5_parity_every_layer(tmp_path, kind, via):
    hf = make_hf(kind)
    model = (
        HookedEncoderDecoder.from_pretrained(save_tiny(hf, tmp_path))
        if via == "folder"
        else HookedEncoderDecoder.from_pretrained(hf_model=hf)
    )
    tied = kind == "t5"
    assert model.cfg.unembed.tied is tied
    assert model.cfg.unembed.scale == (36**-0.5 if tied else 1.0)
    assert model.cfg.n_decoder_layers == 2 and model.cfg.n_layers == 3
    src, src_mask, tgt, tgt_mask = padded_seq2seq_batch(first_token=0)
    with torch.no_grad():
        out = hf(
            input_ids=src,
            attention_mask=src_mask,
            decoder_input_ids=tgt,
            decoder_attention_mask=tgt_mask,
            output_hidden_states=True,
            output_attentions=True,
        )
        res, cache = model.run_with_cache(
            src, tgt, return_type="all", one_zero_attention_mask=src_mask, decoder_attention_mask=tgt_mask
        )
        fast = model(src, tgt, one_zero_attention_mask=src_mask, decoder_attention_mask=tgt_mask)
    assert masked_max_diff(res.logits, out.logits, tgt_mask) < ATOL
    # the SDPA path (nothing hooked) gives the same logits as the explicit-pattern path
    assert masked_max_diff(fast, out.logits, tgt_mask) < ATOL
    compare_stack(
        cache, "encoder", out.encoder_hidden_states, out.encoder_attentions, src_mask, 3, out.encoder_last_hidden_state
    )
    # HF's decoder_hidden_states[-1] is the decoder's final-norm output (what the head reads)
    compare_stack(cache, "decoder", out.decoder_hidden_states, out.decoder_attentions, tgt_mask, 2, None)
    for i in range(2):
        # cross-attention: decoder queries over encoder keys (padded encoder keys get ~0 in both)
        assert (
            pattern_max_diff(cache[f"decoder.blocks.{i}.cross_attn.hook_pattern"], out.cross_attentions[i], tgt_mask)
            < ATOL
        )
    assert cache["decoder.blocks.0.cross_attn.hook_pattern"].shape == (3, 3, 23, 25)
    assert cache["decoder.blocks.1.hook_resid_mid_cross"].shape == (3, 23, 36)


def test_far_buckets_are_exercised():
    """The parity batch reaches the log-spaced and the last bucket in both directions (encoder) and the past."""
    hf = make_hf("t5")
    model = HookedEncoderDecoder.from_pretrained(hf_model=hf)
    enc = model.encoder.position_bias.buckets(25, 25)
    dec = model.decoder.position_bias.buckets(23, 23)
    # bidirectional: 4 buckets per side; "after the query at distance 0" (bucket 4) cannot occur
    assert set(enc.unique().tolist()) == set(range(N_BUCKETS)) - {N_BUCKETS // 2}
    assert set(dec.unique().tolist()) == set(range(N_BUCKETS))
    # unidirectional decoder: future keys share bucket 0 with distance 0
    assert bool((dec.triu(1) == 0).all())


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("buckets,max_distance", [(8, 20), (32, 128), (6, 9)])
def test_bucket_function_matches_hf(bidirectional, buckets, max_distance):
    rel = torch.arange(-300, 301)[None, :]
    ours = relative_position_bucket(rel, bidirectional, buckets, max_distance)
    theirs = T5Attention._relative_position_bucket(rel, bidirectional, buckets, max_distance)
    assert torch.equal(ours, theirs)


def test_position_bias_hook_is_shared_by_all_layers():
    """The bias is computed once per stack forward; editing it at its hook shifts the scores it feeds."""
    model = HookedEncoderDecoder.from_pretrained(hf_model=make_hf("t5"))
    src, src_mask, tgt, tgt_mask = padded_seq2seq_batch(first_token=0)
    calls = []

    def shift(b, hook):
        calls.append(hook.name)
        return b + 1.5

    _, clean = model.run_with_cache(src, tgt, one_zero_attention_mask=src_mask, decoder_attention_mask=tgt_mask)
    with model.hooks(fwd_hooks=[("*.hook_position_bias", shift)]):
        _, edited = model.run_with_cache(src, tgt, one_zero_attention_mask=src_mask, decoder_attention_mask=tgt_mask)
    assert calls == ["encoder.hook_position_bias", "decoder.hook_position_bias"]
    assert clean["decoder.hook_position_bias"].shape == (1, 3, 23, 23)
    assert clean["encoder.hook_position_bias"].shape == (1, 3, 25, 25)
    a, b = clean["encoder.blocks.0.attn.hook_attn_scores"], edited["encoder.blocks.0.attn.hook_attn_scores"]
    allowed = a > -1e30
    assert torch.allclose((b - a)[allowed], torch.tensor(1.5), atol=1e-5)
    # every layer adds the one (edited) bias: scores - q.k is that bias wherever attention is allowed
    for i in range(3):
        q, k = edited[f"encoder.blocks.{i}.attn.hook_q"], edited[f"encoder.blocks.{i}.attn.hook_k"]
        scores = edited[f"encoder.blocks.{i}.attn.hook_attn_scores"]
        rest = scores - torch.einsum("bqhd,bkhd->bhqk", q, k)
        bias = (clean["encoder.hook_position_bias"] + 1.5).expand_as(rest)
        assert torch.allclose(rest[allowed], bias[allowed], atol=1e-4), i
    # cross-attention has no position bias
    c0 = clean["decoder.blocks.0.cross_attn.hook_attn_scores"]
    assert not torch.equal(c0, edited["decoder.blocks.0.cross_attn.hook_attn_scores"])  # encoder output changed


def test_t5_model_without_head(tmp_path):
    torch.manual_seed(0)
    hf = T5Model(t5_config(feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-2)).eval()
    randomize_norms(hf)
    model = encoderlens.from_pretrained(save_tiny(hf, tmp_path))  # the family follows the checkpoint
    assert isinstance(model, HookedEncoderDecoder)
    assert model.lm_head is None
    src, src_mask, tgt, tgt_mask = padded_seq2seq_batch(first_token=0)
    with torch.no_grad():
        theirs = hf(input_ids=src, attention_mask=src_mask, decoder_input_ids=tgt, decoder_attention_mask=tgt_mask)
        ours = model(src, tgt, one_zero_attention_mask=src_mask, decoder_attention_mask=tgt_mask)
    assert masked_max_diff(ours, theirs.last_hidden_state, tgt_mask) < ATOL
    with pytest.raises(ValueError, match="decoder_output"):
        model(src, tgt, return_type="logits")
    with pytest.raises(AttributeError, match="no LM head"):
        _ = model.W_U


@pytest.mark.parametrize("mt5", [False, True])
def test_t5_encoder_model_is_encoder_only(tmp_path, mt5):
    torch.manual_seed(0)
    hf = (
        MT5EncoderModel(t5_config(MT5Config, layer_norm_epsilon=1e-2))
        if mt5
        else T5EncoderModel(t5_config(layer_norm_epsilon=1e-2))
    ).eval()
    randomize_norms(hf)
    model = HookedEncoderDecoder.from_pretrained(save_tiny(hf, tmp_path))
    assert model.decoder is None and model.streams == ("encoder",)
    src, src_mask, _, _ = padded_seq2seq_batch()
    with torch.no_grad():
        theirs = hf(input_ids=src, attention_mask=src_mask, output_hidden_states=True)
        ours, cache = model.run_with_cache(src, one_zero_attention_mask=src_mask)
    assert masked_max_diff(ours, theirs.last_hidden_state, src_mask) < ATOL
    # one stream: short keys resolve to the encoder without .encoder
    assert masked_max_diff(cache["resid_pre", 2], theirs.hidden_states[2], src_mask) < ATOL
    resid = cache.decompose_resid()
    assert torch.allclose(resid.sum(0), cache["encoder.blocks.2.hook_resid_post"], atol=1e-5)
    with pytest.raises(ValueError, match="encoder-only"):
        model.generate(src)
    with pytest.raises(ValueError, match="encoder-only"):
        model(src, return_type="logits")


def test_converter_rejects_unsupported_feed_forward(tmp_path):
    hf = make_hf("t5")
    hf.config.feed_forward_proj = "gated-silu"
    with pytest.raises(ValueError, match="feed_forward_proj='gated-silu'.*relu, gated-gelu"):
        HookedEncoderDecoder.from_pretrained(hf_model=hf)


def test_converter_checks_tied_duplicates_and_leftovers():
    hf = make_hf("t5")
    # the HF model object's state dict carries the tied copies: they are checked equal, then accepted
    model = HookedEncoderDecoder.from_pretrained(hf_model=hf)
    assert model.cfg.unembed.tied
    sd = dict(hf.state_dict())
    sd["encoder.embed_tokens.weight"] = sd["encoder.embed_tokens.weight"] + 1.0

    class Fake:
        config = hf.config

        def state_dict(self):
            return sd

    with pytest.raises(ValueError, match="encoder.embed_tokens.weight different from shared.weight"):
        HookedEncoderDecoder.from_pretrained(hf_model=Fake())
    sd = dict(hf.state_dict())
    sd["encoder.block.0.layer.0.SelfAttention.extra.weight"] = torch.zeros(2)
    with pytest.raises(ValueError, match="unused.*SelfAttention.extra"):
        HookedEncoderDecoder.from_pretrained(hf_model=Fake())


def test_stacked_weights_for_each_attention():
    hf = make_hf("t5_gated")
    model = HookedEncoderDecoder.from_pretrained(hf_model=hf)
    assert model.encoder.W_Q.shape == (3, 3, 36, 13)
    assert model.decoder.W_Q.shape == (2, 3, 36, 13)
    assert model.decoder.cross.W_K.shape == (2, 3, 36, 13)
    assert model.decoder.W_gate.shape == (2, 36, 37)
    w = hf.decoder.block[1].layer[1].EncDecAttention.k.weight  # (head_index * d_head, d_model)
    assert torch.equal(model.decoder.cross.W_K[1, 2], w[26:39].T)
    w = hf.decoder.block[0].layer[0].SelfAttention.q.weight
    assert torch.equal(model.decoder.W_Q[0, 1], w[13:26].T)
    ov = model.decoder.cross.OV
    assert ov.shape == (2, 3, 36, 36)
    assert torch.allclose(ov[1, 0].AB, model.decoder.cross.W_V[1, 0] @ model.decoder.cross.W_O[1, 0], atol=1e-6)
    assert model.encoder.QK.shape == (3, 3, 36, 36)
    with pytest.raises(AttributeError, match="no cross-attention"):
        _ = model.encoder.cross
    assert torch.equal(model.W_U.T, hf.lm_head.weight)
    assert model.decoder.cross.all_head_labels()[:2] == ["L0H0", "L0H1"]


def test_relative_attention_max_distance_is_honoured():
    """Changing only max_distance changes the buckets and hence the outputs, identically in both libraries."""
    hf = make_hf("t5")
    hf.config.relative_attention_max_distance = MAX_DISTANCE + 20
    for module in hf.modules():
        if isinstance(module, T5Attention):
            module.relative_attention_max_distance = MAX_DISTANCE + 20
    model = HookedEncoderDecoder.from_pretrained(hf_model=hf)
    assert model.cfg.decoder.relative_position.max_distance == MAX_DISTANCE + 20
    src, src_mask, tgt, tgt_mask = padded_seq2seq_batch(first_token=0)
    with torch.no_grad():
        theirs = hf(input_ids=src, attention_mask=src_mask, decoder_input_ids=tgt, decoder_attention_mask=tgt_mask)
        ours = model(src, tgt, one_zero_attention_mask=src_mask, decoder_attention_mask=tgt_mask)
    assert masked_max_diff(ours, theirs.logits, tgt_mask) < ATOL


def test_wrong_family_class_is_refused(tmp_path):
    with pytest.raises(ValueError, match="encoder_decoder model, not a HookedEncoder"):
        HookedEncoder.from_pretrained(save_tiny(make_hf("t5"), tmp_path))
