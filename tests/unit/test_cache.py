"""ActivationCache: short keys, residual algebra on post-LN (BERT) and pre-LN stacks, clear errors."""

from __future__ import annotations

import pytest
import torch

from encoderlens import HookedEncoder
from encoderlens.cache import CacheKeyError
from encoderlens.config import AttentionConfig, EmbeddingConfig, EncoderConfig, MLPConfig, NormConfig, StackConfig

TEXTS = ["the cat sat on the mat", "a dog ran"]


def pre_ln_encoder(kind: str = "layernorm") -> HookedEncoder:
    """A random pre-LN encoder with a final norm and no embedding norm (like ModernBERT without RoPE)."""
    norm = NormConfig(kind, eps=1e-6)  # type: ignore[arg-type]
    cfg = EncoderConfig(
        architecture="test",
        model_type="test",
        embed=EmbeddingConfig(d_vocab=50, n_ctx=30, n_token_types=2),
        stack=StackConfig(
            n_layers=3,
            d_model=36,
            attn=AttentionConfig(n_heads=3, d_head=12),
            mlp=MLPConfig(d_mlp=37, act_fn="gelu"),
            norm=norm,
            norm_position="pre",
            final_norm=True,
        ),
    )
    model = HookedEncoder(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def token_batch():
    tokens = torch.tensor([[2, 7, 9, 11, 13, 3], [2, 5, 6, 3, 0, 0]])
    mask = (tokens != 0).long()
    return tokens, mask


def test_short_keys_and_dict_api(tiny_mlm):
    model, _, _ = tiny_mlm
    _, cache = model.run_with_cache(TEXTS)
    assert cache["pattern", 1] is cache["blocks.1.attn.hook_pattern"]
    assert cache["scale", 0, "ln2"].shape[-1] == 1
    assert ("q", 0) in cache and "nonsense" not in cache
    assert len(list(cache.items())) == len(cache)
    with pytest.raises(CacheKeyError, match="did you mean"):
        cache["blocks.0.attn.hook_patern"]
    with pytest.raises(KeyError):
        cache["nothing"]
    with pytest.raises(ValueError, match="batch size 1"):
        cache.remove_batch_dim()
    assert "MiB" in cache.size_report()


def test_post_ln_accumulated_resid_and_head_results(tiny_mlm):
    model, _, _ = tiny_mlm
    batch = model.tokenize(TEXTS)
    with torch.no_grad():
        out, cache = model.run_with_cache(
            batch.tokens, one_zero_attention_mask=batch.attention_mask, return_type="embeddings"
        )
    resid, labels = cache.accumulated_resid(return_labels=True)
    assert labels == ["0_pre", "1_pre", "2_pre", "final_post"]
    assert torch.equal(resid[-1], out)
    assert torch.equal(resid[1], cache["normalized_resid_post", 0])
    # TransformerLens's post-LN names: resid_post is the sum entering ln2, whose output is the stream
    assert not torch.allclose(cache["resid_post", 0], resid[1])
    heads, head_labels = cache.stack_head_results(return_labels=True)
    assert heads.shape == (3 * 3, *out.shape) and head_labels[4] == "L1H1"
    for layer in range(3):
        summed = heads[3 * layer : 3 * layer + 3].sum(0) + model.blocks[layer].attn.b_O
        assert torch.allclose(summed, cache["attn_out", layer], atol=1e-5)
    assert cache.stack_activation("pattern").shape[:2] == (3, 2)
    assert torch.allclose(cache.accumulated_resid(layer=2, pos_slice=0), resid[:2, :, 0])


def test_post_ln_decompositions_explain_why_they_do_not_apply(tiny_mlm):
    model, _, _ = tiny_mlm
    _, cache = model.run_with_cache(TEXTS)
    for call in (
        lambda: cache.decompose_resid(),
        lambda: cache.get_full_resid_decomposition(),
        lambda: cache.apply_ln_to_stack(cache.accumulated_resid()),
        lambda: cache.stack_head_results(incl_remainder=True),
    ):
        with pytest.raises(ValueError, match="post-LN"):
            call()
    with pytest.raises(ValueError, match="not linear|MLM head"):
        cache.logit_attrs(cache.accumulated_resid(), tokens=3)


def test_filtered_cache_gives_value_error_not_keyerror(tiny_mlm):
    model, _, _ = tiny_mlm
    _, cache = model.run_with_cache(TEXTS, names_filter="blocks.0.attn.hook_pattern")
    with pytest.raises(ValueError, match="names_filter"):
        cache.accumulated_resid()
    with pytest.raises(ValueError, match="names_filter"):
        cache.stack_head_results()


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_pre_ln_decompositions_are_exact(kind):
    model = pre_ln_encoder(kind)
    tokens, mask = token_batch()
    with torch.no_grad():
        out, cache = model.run_with_cache(tokens, one_zero_attention_mask=mask, return_type="embeddings")
    final_resid = cache["resid_post", 2]
    # final output = final norm of the last residual
    assert torch.allclose(model.ln_final(final_resid), out, atol=1e-5)

    comps, labels = cache.decompose_resid(return_labels=True)
    assert labels[:3] == ["embed", "pos_embed", "token_type_embed"] and labels[-1] == "2_mlp_out"
    assert torch.allclose(comps.sum(0), final_resid, atol=1e-4)
    mid = cache.decompose_resid(layer=2)
    assert torch.allclose(mid.sum(0), cache["resid_pre", 2], atol=1e-4)

    heads = cache.stack_head_results(incl_remainder=True)
    assert torch.allclose(heads.sum(0), final_resid, atol=1e-4)

    full, full_labels = cache.get_full_resid_decomposition(return_labels=True)
    assert "L0N36" in full_labels and full_labels[-1] == "bias"
    assert torch.allclose(full.sum(0), final_resid, atol=1e-4)
    full_mid = cache.get_full_resid_decomposition(layer=1, mlp_input=True, expand_neurons=False)
    assert torch.allclose(full_mid.sum(0), cache["resid_mid", 1], atol=1e-4)

    # the final norm's scale applied to the components sums to the normalised output (before its weight)
    normed = cache.apply_ln_to_stack(comps)
    w = model.ln_final.w
    b = model.ln_final.b if kind == "layernorm" else 0.0
    assert torch.allclose(normed.sum(0) * w + b, out, atol=1e-4)
    # accumulated_resid(apply_ln=True) last entry is exactly the normalised output
    acc = cache.accumulated_resid(apply_ln=True)
    assert torch.allclose(acc[-1] * w + b, out, atol=1e-4)
