"""ModernBERT parity against HF: every residual, every attention pattern, logits; padded batches, odd sizes.

The sequences (23) are longer than the local window (local_attention=6: keys within 3 positions), and
layers alternate global / local (global_attn_every_n_layers=2), so sliding-window masking, both rope
thetas and the missing block-0 attention norm are all exercised.
"""

from __future__ import annotations

import pytest
import torch
from transformers import ModernBertConfig, ModernBertForMaskedLM, ModernBertModel

from encoderlens import HookedEncoder
from encoderlens.convert.modernbert import convert
from tests.conftest import masked_max_diff, pattern_max_diff, randomize_norms, save_tiny

ATOL = 1e-4
WINDOW = 3  # local_attention // 2


def tiny_config(**kw) -> ModernBertConfig:
    base = dict(
        vocab_size=99,
        hidden_size=36,
        num_hidden_layers=5,
        num_attention_heads=3,
        intermediate_size=37,
        max_position_embeddings=64,
        local_attention=2 * WINDOW,
        global_attn_every_n_layers=2,
        global_rope_theta=1000.0,
        local_rope_theta=50.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        cls_token_id=1,
        sep_token_id=2,
        initializer_range=0.25,  # sharp attention patterns, so a position or mask error shows
        attn_implementation="eager",
    )
    base.update(kw)
    return ModernBertConfig(**base)


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(5, 99, (3, 23), generator=g)
    mask = torch.ones_like(tokens)
    mask[1, 17:] = 0
    mask[2, 5:] = 0
    tokens[mask == 0] = 0
    return tokens, mask


def load_pair(tmp_path, hf_cls=ModernBertForMaskedLM, **kw):
    hf = hf_cls(tiny_config(**kw)).eval()
    randomize_norms(hf)
    return hf, HookedEncoder.from_pretrained(save_tiny(hf, tmp_path))


@pytest.mark.parametrize(
    "hf_cls,kw",
    [
        (ModernBertModel, {}),
        (ModernBertForMaskedLM, {}),
        (ModernBertForMaskedLM, dict(norm_bias=True, attention_bias=True, hidden_activation="gelu_new")),
        (ModernBertForMaskedLM, dict(tie_word_embeddings=False, classifier_bias=True, classifier_activation="silu")),
        (ModernBertForMaskedLM, dict(decoder_bias=False, global_attn_every_n_layers=3)),
    ],
)
def test_modernbert_parity_every_layer(tmp_path, hf_cls, kw):
    hf, model = load_pair(tmp_path, hf_cls, **kw)
    assert model.blocks[0].ln1 is None and model.blocks[1].ln1 is not None
    tokens, mask = padded_batch()
    with torch.no_grad():
        out = hf(input_ids=tokens, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        all_out, cache = model.run_with_cache(tokens, return_type="all", one_zero_attention_mask=mask)
    n = model.cfg.n_layers
    hidden = out.hidden_states
    assert len(hidden) == n + 1
    assert masked_max_diff(cache["hook_full_embed"], hidden[0], mask) < ATOL
    for i in range(n):
        assert masked_max_diff(cache["resid_pre", i], hidden[i], mask) < ATOL, i
        assert pattern_max_diff(cache["pattern", i], out.attentions[i], mask) < ATOL, i
        if i < n - 1:
            assert masked_max_diff(cache["resid_post", i], hidden[i + 1], mask) < ATOL, i
    # HF's last hidden state is after the final norm
    assert masked_max_diff(all_out.embeddings, hidden[n], mask) < ATOL
    assert masked_max_diff(model.ln_final(cache["resid_post", n - 1]), hidden[n], mask) < ATOL
    if hf_cls is ModernBertModel:
        assert all_out.logits is None
    else:
        assert masked_max_diff(all_out.logits, out.logits, mask) < ATOL


def test_local_layers_see_only_the_window(tmp_path):
    _, model = load_pair(tmp_path)
    tokens, mask = padded_batch()
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, one_zero_attention_mask=mask, names_filter=lambda n: "pattern" in n)
    dist = (torch.arange(23)[:, None] - torch.arange(23)[None, :]).abs()
    far = (dist > WINDOW)[None, None]
    rows = mask.bool()[:, None, :, None]
    for i in range(model.cfg.n_layers):
        pattern = cache["pattern", i]
        beyond = pattern.masked_fill(~(far & rows), 0).abs().max().item()
        if model.blocks[i].attn.cfg.local_window is None:  # global layers: far keys get weight
            assert beyond > 1e-3, i
        else:
            assert model.blocks[i].attn.cfg.local_window == WINDOW
            assert beyond == 0.0, i
    assert [b.attn.cfg.local_window for b in model.blocks] == [None, WINDOW, None, WINDOW, None]
    assert [b.attn.cfg.rotary.base for b in model.blocks] == [1000.0, 50.0, 1000.0, 50.0, 1000.0]


def test_fast_path_equals_explicit_path(tmp_path):
    """SDPA (no pattern hooks) and the explicit softmax path agree, window and padding included."""
    _, model = load_pair(tmp_path)
    tokens, mask = padded_batch()
    with torch.no_grad():
        fast = model(tokens, one_zero_attention_mask=mask)
        slow = model.run_with_hooks(
            tokens,
            one_zero_attention_mask=mask,
            fwd_hooks=[(lambda n: n.endswith("hook_pattern"), lambda x, hook: None)],
        )
    assert torch.isfinite(fast).all() and torch.isfinite(slow).all()
    assert masked_max_diff(fast, slow, mask) < 1e-5


def test_cache_decomposition_is_exact(tmp_path):
    """Pre-LN with a final norm: embeddings + attn/mlp outputs sum to the final residual, and the cached
    final-norm scale turns that sum into HF's last hidden state."""
    hf, model = load_pair(tmp_path, norm_bias=True)
    tokens, mask = padded_batch()
    with torch.no_grad():
        theirs = hf(input_ids=tokens, attention_mask=mask).logits
        logits, cache = model.run_with_cache(tokens, one_zero_attention_mask=mask)
        final = cache["resid_post", model.cfg.n_layers - 1]
        parts, labels = cache.decompose_resid(return_labels=True)
        assert labels[0] == "full_embed" and labels[-1] == "4_mlp_out" and len(labels) == 1 + 2 * 5
        assert (parts.sum(0) - final).abs().max() < 1e-5
        for layer in range(model.cfg.n_layers):
            assert (cache.decompose_resid(layer=layer).sum(0) - cache["resid_pre", layer]).abs().max() < 1e-5
        heads = cache.stack_head_results(incl_remainder=True)
        assert heads.shape[0] == 5 * 3 + 1
        assert (heads.sum(0) - final).abs().max() < 1e-5
        normed = cache.apply_ln_to_stack(parts).sum(0) * model.ln_final.w + model.ln_final.b
        assert masked_max_diff(normed, model.ln_final(final), mask) < 1e-5
        assert masked_max_diff(model.mlm_head.logits(normed), theirs, mask) < ATOL
        full = cache.get_full_resid_decomposition(expand_neurons=False)
        assert (full.sum(0) - final).abs().max() < 1e-5
    assert masked_max_diff(logits, theirs, mask) < ATOL


def test_rotary_hooks_take_effect(tmp_path):
    _, model = load_pair(tmp_path)
    tokens, mask = padded_batch()
    with torch.no_grad():
        base, cache = model.run_with_cache(tokens, one_zero_attention_mask=mask)
        q, rot_q = cache["q", 1], cache["rot_q", 1]
        # position 0 is not rotated; later positions are, and rotation keeps each vector's norm
        assert torch.equal(rot_q[:, 0], q[:, 0])
        assert (rot_q[:, 1:] - q[:, 1:]).abs().max() > 1e-3
        assert (rot_q.norm(dim=-1) - q.norm(dim=-1)).abs().max() < 1e-5
        assert cache["rot_k", 1].shape == cache["k", 1].shape

        def zero(x, hook):
            return torch.zeros_like(x)

        hook = [("blocks.2.attn.hook_rot_k", zero)]
        hooked = model.run_with_hooks(tokens, one_zero_attention_mask=mask, fwd_hooks=hook)
        with model.hooks(fwd_hooks=hook):
            _, hcache = model.run_with_cache(
                tokens, one_zero_attention_mask=mask, names_filter="blocks.2.attn.hook_pattern"
            )
    # zero keys: every real query spreads uniformly over the real keys (block 2 is global)
    pattern = hcache["pattern", 2]
    lengths = mask.sum(1)
    for b in range(3):
        n = int(lengths[b])
        assert (pattern[b, :, :n, :n] - 1.0 / n).abs().max() < 1e-6
    assert masked_max_diff(hooked, base, mask) > 1e-3


def test_converter_rejects_unsupported_settings(tmp_path):
    hf = ModernBertModel(tiny_config(mlp_bias=True)).eval()
    with pytest.raises(ValueError, match="mlp_bias"):
        HookedEncoder.from_pretrained(save_tiny(hf, tmp_path))


def test_converter_rejects_leftover_weights():
    hf = ModernBertForMaskedLM(tiny_config()).eval()
    sd = {**hf.state_dict(), "model.layers.0.attn.extra_proj.weight": torch.zeros(3)}
    with pytest.raises(ValueError, match="extra_proj"):
        convert(hf.config, sd)


def test_older_transformers_config_fields():
    """transformers < 5 configs carry global_attn_every_n_layers and global/local_rope_theta instead of
    layer_types and rope_parameters; both spellings map to the same settings."""
    from types import SimpleNamespace

    from encoderlens.convert.modernbert import _layer_types, _rope_theta

    old = SimpleNamespace(
        num_hidden_layers=5, global_attn_every_n_layers=2, global_rope_theta=1000.0, local_rope_theta=50.0
    )
    assert _layer_types(old) == _layer_types(tiny_config())
    new = tiny_config()
    for t in ("full_attention", "sliding_attention"):
        assert _rope_theta(old, t) == _rope_theta(new, t)


def test_partial_rotary_and_config_checks():
    from encoderlens.components.rotary import apply_rotary
    from encoderlens.config import AttentionConfig, MLPConfig, NormConfig, RotaryConfig, StackConfig

    x = torch.randn(2, 7, 3, 12)
    pos = torch.arange(7)
    part = apply_rotary(x, pos, RotaryConfig(base=100.0, dim=4))
    assert torch.equal(part[..., 4:], x[..., 4:])
    assert torch.allclose(part[..., :4], apply_rotary(x[..., :4], pos, RotaryConfig(base=100.0)))
    with pytest.raises(ValueError, match="rotary dim"):
        AttentionConfig(n_heads=3, d_head=12, rotary=RotaryConfig(base=100.0, dim=14))
    attn = AttentionConfig(n_heads=3, d_head=12)
    kw = dict(n_layers=2, d_model=36, attn=attn, mlp=MLPConfig(37, "gelu"), norm=NormConfig())
    with pytest.raises(ValueError, match="one per block"):
        StackConfig(**kw, norm_position="pre", layer_attn=(attn,))
    with pytest.raises(ValueError, match="must match attn"):
        StackConfig(**kw, norm_position="pre", layer_attn=(attn, AttentionConfig(n_heads=4, d_head=9)))
    with pytest.raises(ValueError, match="pre-LN"):
        StackConfig(**kw, norm_position="post", first_block_attn_norm=False)
