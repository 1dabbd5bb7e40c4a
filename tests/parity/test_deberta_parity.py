"""DeBERTa-v2/v3 parity against HF: every residual, every attention pattern, logits; padded batches, odd sizes.

Sequences (23) are longer than the bucket range (position_buckets=8: log buckets beyond distance 4)
and than max_relative_positions (16, or 6 without buckets), so bucketing and clamping are exercised.
"""

from __future__ import annotations

import pytest
import torch
from transformers import DebertaV2Config, DebertaV2ForMaskedLM, DebertaV2Model
from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position

from encoderlens import HookedEncoder
from encoderlens.components.attention_deberta import DisentangledAttention, log_bucket_position
from encoderlens.convert.deberta_v2 import convert
from tests.conftest import masked_max_diff, pattern_max_diff, randomize_norms, save_tiny

ATOL = 1e-4

#: DeBERTa-v3 style: log buckets, shared attention keys, normed relative embeddings, no absolute positions.
V3 = dict(
    relative_attention=True,
    position_buckets=8,
    max_relative_positions=16,
    pos_att_type=["p2c", "c2p"],
    norm_rel_ebd="layer_norm",
    share_att_key=True,
    position_biased_input=False,
    type_vocab_size=0,
)
#: DeBERTa-v2 style without buckets: separate position projections, absolute positions, token types.
V2 = dict(
    relative_attention=True,
    position_buckets=-1,
    max_relative_positions=6,
    pos_att_type="c2p|p2c",
    norm_rel_ebd="none",
    share_att_key=False,
    position_biased_input=True,
    type_vocab_size=2,
)


def tiny_config(**kw) -> DebertaV2Config:
    base = dict(
        vocab_size=99,
        hidden_size=36,
        num_hidden_layers=5,
        num_attention_heads=3,
        intermediate_size=37,
        max_position_embeddings=64,
        hidden_act="gelu",
        layer_norm_eps=1e-7,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=0.25,  # sharp attention patterns, so a position-term error shows
        attn_implementation="eager",
    )
    base.update(kw)
    return DebertaV2Config(**base)


def padded_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(5, 99, (3, 23), generator=g)
    mask = torch.ones_like(tokens)
    mask[1, 17:] = 0
    mask[2, 5:] = 0
    tokens[mask == 0] = 0
    tt = torch.zeros_like(tokens)
    tt[0, 12:] = 1
    tt[1, 8:17] = 1
    return tokens, mask, tt


def load_pair(tmp_path, hf_cls=DebertaV2ForMaskedLM, **kw):
    hf = hf_cls(tiny_config(**kw)).eval()
    randomize_norms(hf)
    return hf, HookedEncoder.from_pretrained(save_tiny(hf, tmp_path))


CASES = [
    (DebertaV2ForMaskedLM, dict(V3, legacy=True)),
    (DebertaV2ForMaskedLM, dict(V3, legacy=False, hidden_act="gelu_new")),
    (DebertaV2Model, dict(V3, share_att_key=False)),
    (DebertaV2ForMaskedLM, V2),
    (DebertaV2Model, dict(V2, pos_att_type=["c2p"], position_buckets=8, max_relative_positions=-1)),
    (DebertaV2Model, dict(V2, pos_att_type=["p2c"], share_att_key=True, norm_rel_ebd="layer_norm")),
    # no relative attention: plain attention, still scaled by sqrt(d_head * 3)
    (DebertaV2ForMaskedLM, dict(V2, relative_attention=False)),
]


@pytest.mark.parametrize("hf_cls,kw", CASES)
def test_deberta_parity_every_layer(tmp_path, hf_cls, kw):
    hf, model = load_pair(tmp_path, hf_cls, **kw)
    tokens, mask, tt = padded_batch()
    tt = tt if model.embed.token_type_embed is not None else None
    with torch.no_grad():
        out = hf(
            input_ids=tokens, attention_mask=mask, token_type_ids=tt, output_hidden_states=True, output_attentions=True
        )
        all_out, cache = model.run_with_cache(
            tokens, return_type="all", one_zero_attention_mask=mask, token_type_ids=tt
        )
        fast = model(tokens, return_type="all", one_zero_attention_mask=mask, token_type_ids=tt)
    n = model.cfg.n_layers
    hidden = out.hidden_states
    assert len(hidden) == n + 1
    # HF multiplies the embedding output by the mask: padded positions are exactly zero in both
    assert masked_max_diff(cache["hook_full_embed"], hidden[0], mask) < ATOL
    assert cache["hook_full_embed"][mask == 0].abs().max() == 0
    for i in range(n):
        assert masked_max_diff(cache["resid_pre", i], hidden[i], mask) < ATOL, i
        assert masked_max_diff(cache[model.stream_spec(None).resid_hook(i)], hidden[i + 1], mask) < ATOL, i
        assert pattern_max_diff(cache["pattern", i], out.attentions[i], mask) < ATOL, i
    assert (
        masked_max_diff(all_out.embeddings, out.last_hidden_state if hf_cls is DebertaV2Model else hidden[n], mask)
        < ATOL
    )
    # the SDPA path (no pattern hooks) gives the same answer
    assert masked_max_diff(fast.embeddings, all_out.embeddings, mask) < 1e-5
    if hf_cls is DebertaV2ForMaskedLM:
        assert masked_max_diff(all_out.logits, out.logits, mask) < ATOL
        assert masked_max_diff(fast.logits, out.logits, mask) < ATOL
    else:
        assert all_out.logits is None
    relative = kw["relative_attention"]
    assert isinstance(model.blocks[0].attn, DisentangledAttention) == relative
    assert (model.rel_embed is not None) == relative


def test_buckets_match_hf_and_compress():
    rel = torch.arange(-40, 41)[None, :]
    ours = log_bucket_position(rel, 8, 16)
    assert torch.equal(ours, make_log_bucket_position(rel, 8, 16).long())
    assert torch.equal(ours[0, 36:45], torch.arange(-4, 5))  # |d| <= 4 kept
    assert ours.abs().max() < 40  # far distances compressed


@pytest.mark.parametrize("kw", [V3, dict(V3, share_att_key=False), V2], ids=["v3", "v3-separate", "v2"])
def test_position_terms_match_hf(tmp_path, kw):
    """c2p + p2c against HF's own disentangled_attention_bias, every layer. (Row-constant parts of c2p,
    such as the key bias, cancel in the softmax, so the patterns alone would not show them.)"""
    hf, model = load_pair(tmp_path, DebertaV2Model, **kw)
    tokens, mask, tt = padded_batch()
    tt = tt if model.embed.token_type_embed is not None else None
    with torch.no_grad():
        out = hf(input_ids=tokens, attention_mask=mask, token_type_ids=tt, output_hidden_states=True)
        _, cache = model.run_with_cache(
            tokens, return_type="embeddings", one_zero_attention_mask=mask, token_type_ids=tt
        )
        enc = hf.encoder
        rel_pos = enc.get_rel_pos(out.hidden_states[0])
        rel_emb = enc.get_rel_embedding()
        for i, layer in enumerate(enc.layer):
            att = layer.attention.self
            x = out.hidden_states[i]
            q = att.transpose_for_scores(att.query_proj(x), att.num_attention_heads)
            k = att.transpose_for_scores(att.key_proj(x), att.num_attention_heads)
            theirs = att.disentangled_attention_bias(q, k, rel_pos, rel_emb, 3).view(3, 3, 23, 23)
            ours = cache["c2p_scores", i] + cache["p2c_scores", i]
            # padded positions differ (HF's padded queries attend everywhere): compare real pairs only
            real = (mask.bool()[:, None, :, None] & mask.bool()[:, None, None, :]).expand_as(ours)
            assert (ours - theirs)[real].abs().max() < ATOL, i


def test_score_terms_sum_and_position_hooks_take_effect(tmp_path):
    _, model = load_pair(tmp_path, **V3)
    tokens, mask, _ = padded_batch()
    rows = mask.bool()[:, None, :, None]
    keys = mask.bool()[:, None, None, :]
    with torch.no_grad():
        base, cache = model.run_with_cache(tokens, one_zero_attention_mask=mask)
        for i in range(model.cfg.n_layers):
            total = cache["c2c_scores", i] + cache["c2p_scores", i] + cache["p2c_scores", i]
            ok = rows & keys
            assert (total - cache["attn_scores", i]).masked_fill(~ok, 0).abs().max() < 1e-5, i
            assert cache["c2p_scores", i].abs().max() > 1e-2 and cache["p2c_scores", i].abs().max() > 1e-2
        table = cache["rel_embed.hook_rel_embed"]
        assert table.shape == (1, 16, 36)
        assert cache["blocks.0.attn.hook_pos_q"].shape == (1, 16, 3, 12)

        def zero(x, hook):
            return torch.zeros_like(x)

        hooks = [("blocks.1.attn.hook_c2p_scores", zero), ("blocks.1.attn.hook_p2c_scores", zero)]
        with model.hooks(fwd_hooks=hooks):
            hooked, hcache = model.run_with_cache(tokens, one_zero_attention_mask=mask)
        # without position terms the pattern is the softmax of content scores plus mask
        expected = torch.softmax(hcache["c2c_scores", 1] + (~keys).float() * torch.finfo(torch.float32).min, -1)
        assert pattern_max_diff(hcache["pattern", 1], expected, mask) < 1e-5
        assert masked_max_diff(hooked, base, mask) > 1e-2
        # a hook on the projected position keys also reaches the scores (fast path: no pattern hooks)
        edited = model.run_with_hooks(
            tokens, one_zero_attention_mask=mask, fwd_hooks=[("blocks.0.attn.hook_pos_k", zero)]
        )
        assert masked_max_diff(edited, base, mask) > 1e-2


def test_post_ln_cache_helpers(tmp_path):
    _, model = load_pair(tmp_path, **V3)
    tokens, mask, _ = padded_batch()
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, one_zero_attention_mask=mask, return_type="embeddings")
    resid = cache.accumulated_resid()
    assert resid.shape == (6, 3, 23, 36)
    heads = cache.stack_head_results(layer=1)
    attn_out = cache["attn_out", 0] - model.blocks[0].attn.b_O
    assert (heads.sum(0) - attn_out).abs().max() < 1e-5
    with pytest.raises(ValueError, match="post-LN"):
        cache.decompose_resid()


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(V3, conv_kernel_size=3), "conv_kernel_size"),
        (dict(V3, pos_att_type=["c2p", "p2p"]), "pos_att_type"),
        (dict(V3, embedding_size=20), "embedding_size"),
        (dict(V3, pos_att_type=[]), "pos_att_type"),
    ],
)
def test_converter_rejects_unsupported_settings(tmp_path, kw, match):
    hf = DebertaV2Model(tiny_config(**kw)).eval()
    with pytest.raises(ValueError, match=match):
        HookedEncoder.from_pretrained(hf_model=hf)


def test_converter_accounts_for_every_weight():
    hf = DebertaV2ForMaskedLM(tiny_config(**V3)).eval()
    sd = hf.state_dict()
    with pytest.raises(ValueError, match="extra_proj"):
        convert(hf.config, {**sd, "deberta.encoder.layer.0.attention.self.extra_proj.weight": torch.zeros(3)})
    # the replaced-token-detection head of v3 checkpoints is dropped, as HF does on load
    cfg, out = convert(hf.config, {**sd, "mask_predictions.classifier.weight": torch.zeros(1, 36)})
    assert cfg.mlm_head is not None and not any("mask_predictions" in k for k in out)
