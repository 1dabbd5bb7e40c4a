"""The hook-name tables in encoderlens.names: short names, and each hook's axes against real activations."""

from __future__ import annotations

import pytest
import torch
from transformers import DebertaV2Config, DebertaV2Model

import encoderlens
from encoderlens import HookedEncoder
from encoderlens.names import get_act_name, hook_axes, is_pairwise


def test_get_act_name_is_one_function_reexported():
    assert encoderlens.get_act_name is get_act_name
    assert encoderlens.hooks.get_act_name is get_act_name
    assert get_act_name("pattern", 2) == "blocks.2.attn.hook_pattern"
    assert get_act_name("z", 0, "cross_attn", stream="decoder") == "decoder.blocks.0.cross_attn.hook_z"
    with pytest.raises(ValueError, match="did you mean 'pattern'"):
        get_act_name("patern", 0)


def _check_axes(model, cache, n_pos):
    n_heads = model.cfg.n_heads
    checked = 0
    for name, act in cache.items():
        axes = hook_axes(name)
        if act.ndim < 2 or act.shape[0] != 2:
            continue  # per-item or batch-broadcast tensors (relative embeddings) have no position axis
        assert act.shape[axes["pos"]] == n_pos, name
        if "head" in axes:
            assert act.shape[axes["head"]] == n_heads, name
        if "key_pos" in axes:
            assert act.shape[axes["key_pos"]] == n_pos and is_pairwise(name), name
        else:
            assert not is_pairwise(name), name
        checked += 1
    return checked


def test_axes_match_every_activation_of_a_text_encoder(tiny_mlm):
    model, _, _ = tiny_mlm
    tokens = torch.randint(5, 99, (2, 7))
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: True)
    assert "blocks.0.attn.hook_result" in cache  # the opt-in hook is covered too
    assert _check_axes(model, cache, 7) == len([k for k, v in cache.items() if v.ndim >= 2 and v.shape[0] == 2])


def test_axes_cover_deberta_disentangled_scores():
    cfg = DebertaV2Config(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=20,
        max_position_embeddings=32,
        relative_attention=True,
        pos_att_type=["c2p", "p2c"],
        position_buckets=4,
        max_relative_positions=8,
    )
    model = HookedEncoder.from_pretrained(hf_model=DebertaV2Model(cfg).eval())
    _, cache = model.run_with_cache(torch.randint(5, 50, (2, 6)), return_type="embeddings")
    assert {"blocks.0.attn.hook_c2p_scores", "blocks.0.attn.hook_p2c_scores"} <= set(cache.keys())
    assert _check_axes(model, cache, 6) > 0
