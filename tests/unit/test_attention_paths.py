"""Attention fast paths: SDPA vs explicit softmax, fused vs separate q/k/v, and the cached fused weights.

Every path is also compared with a plain einsum reference built from the per-head weights, so a
mistake shared by both paths cannot pass.
"""

from __future__ import annotations

import pytest
import torch

from encoderlens.components.attention import Attention, KVCache, build_additive_mask
from encoderlens.config import AttentionConfig

ATOL = 1e-5


def make_attn(d_model: int = 20, kv_d: int | None = None, qkv_bias: bool = True, causal: bool = False) -> Attention:
    cfg = AttentionConfig(n_heads=3, d_head=7, causal=causal, qkv_bias=qkv_bias)
    attn = Attention(d_model, cfg, kv_d_model=kv_d)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return attn.eval()


def reference(attn: Attention, x, kv, bias):
    """Attention from the per-head weights by einsum, no shared code with the component."""
    kv = x if kv is None else kv

    def proj(t, W, b):
        out = torch.einsum("bpd,hde->bphe", t, W)
        return out + b if b is not None else out

    q, k, v = proj(x, attn.W_Q, attn.b_Q), proj(kv, attn.W_K, attn.b_K), proj(kv, attn.W_V, attn.b_V)
    scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * attn.cfg.attn_scale
    if bias is not None:
        scores = scores + bias
    z = torch.einsum("bhqk,bkhe->bqhe", scores.softmax(-1), v)
    out = torch.einsum("bqhe,hem->bqm", z, attn.W_O)
    return out + attn.b_O if attn.b_O is not None else out


def run_paths(attn: Attention, x, kv, mask, pos_bias):
    """Output of every path: SDPA + fused/separate projections, explicit pattern, all hooks."""
    outs = {}
    with torch.no_grad():
        outs["fast"] = attn(x, kv, additive_mask=mask, position_bias=pos_bias)
        for name in ("hook_pattern", "hook_q", "hook_k", "hook_result"):
            hp = getattr(attn, name)
            hp.add_hook(lambda t, hook: None)
            outs[name] = attn(x, kv, additive_mask=mask, position_bias=pos_bias)
            hp.remove_hooks()
        for hp in (attn.hook_pattern, attn.hook_q, attn.hook_v, attn.hook_result):
            hp.add_hook(lambda t, hook: None)
        outs["all_hooks"] = attn(x, kv, additive_mask=mask, position_bias=pos_bias)
        for hp in (attn.hook_pattern, attn.hook_q, attn.hook_v, attn.hook_result):
            hp.remove_hooks()
    return outs


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_cross_attention_with_position_bias_and_padding_all_paths_agree(qkv_bias):
    torch.manual_seed(0)
    attn = make_attn(d_model=20, kv_d=13, qkv_bias=qkv_bias)  # kv side of another width: no fused qkv
    x, kv = torch.randn(2, 5, 20), torch.randn(2, 9, 13)
    key_mask = torch.ones(2, 9, dtype=torch.bool)
    key_mask[1, 6:] = False
    mask = build_additive_mask(key_mask, 5, 9, causal=False, dtype=x.dtype, device=x.device)
    pos_bias = torch.randn(1, 3, 5, 9)
    ref = reference(attn, x, kv, mask + pos_bias)
    for name, out in run_paths(attn, x, kv, mask, pos_bias).items():
        assert (out - ref).abs().max() < ATOL, name


def test_cross_attention_same_width_uses_kv_slice_of_fused_weights():
    attn = make_attn(d_model=20, kv_d=20)
    x, kv = torch.randn(2, 4, 20), torch.randn(2, 6, 20)
    key_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    mask = build_additive_mask(key_mask, 4, 6, causal=False, dtype=x.dtype, device=x.device)
    ref = reference(attn, x, kv, mask)
    for name, out in run_paths(attn, x, kv, mask, None).items():
        assert (out - ref).abs().max() < ATOL, name


def test_causal_self_attention_fused_path_and_kv_cache_decoding_agree():
    attn = make_attn(d_model=20, causal=True)
    x = torch.randn(2, 6, 20)
    mask = build_additive_mask(None, 6, 6, causal=True, dtype=x.dtype, device=x.device)
    pos_bias = torch.randn(1, 3, 6, 6)
    ref = reference(attn, x, None, mask + pos_bias)
    for name, out in run_paths(attn, x, None, mask, pos_bias).items():
        assert (out - ref).abs().max() < ATOL, name
    # one position at a time through a growing KV cache (first step stores views of the fused output)
    for hooked in (False, True):
        if hooked:
            attn.hook_pattern.add_hook(lambda t, hook: None)
        cache = KVCache()
        steps = []
        with torch.no_grad():
            for t in range(6):
                m = build_additive_mask(None, 1, t + 1, causal=True, dtype=x.dtype, device=x.device, past_len=t)
                steps.append(
                    attn(
                        x[:, t : t + 1],
                        additive_mask=m,
                        position_bias=pos_bias[:, :, t : t + 1, : t + 1],
                        kv_cache=cache,
                    )
                )
        attn.hook_pattern.remove_hooks()
        assert (torch.cat(steps, 1) - ref).abs().max() < ATOL, hooked


def test_static_cross_attention_cache_reuses_keys():
    attn = make_attn(d_model=20, kv_d=13)
    x, kv = torch.randn(2, 3, 20), torch.randn(2, 5, 13)
    cache = KVCache(static=True)
    with torch.no_grad():
        first = attn(x, kv, kv_cache=cache)
        again = attn(x, kv * 0, kv_cache=cache)  # kv input ignored once cached
    assert torch.equal(first, again)
    assert (first - reference(attn, x, kv, None)).abs().max() < ATOL


def test_gradients_reach_per_head_weights_through_the_fused_path():
    attn = make_attn(d_model=20)
    x = torch.randn(2, 4, 20)
    attn(x).pow(2).sum().backward()
    fused_grads = {n: p.grad.clone() for n, p in attn.named_parameters()}
    attn.zero_grad()
    x_ref = x.clone()
    reference(attn, x_ref, None, None).pow(2).sum().backward()
    for n, p in attn.named_parameters():
        assert (fused_grads[n] - p.grad).abs().max() < 1e-4, n
    assert "_flat_cache" not in attn.__dict__  # nothing cached while gradients were needed


def test_in_place_weight_edits_invalidate_the_fused_weight_cache():
    attn = make_attn(d_model=20)
    x = torch.randn(2, 4, 20)
    with torch.no_grad():
        before = attn(x)
        assert "_flat_cache" in attn.__dict__
        attn.W_Q[1] *= -2.0  # in place, under no_grad: the version counter moves
        after_q = attn(x)
        attn.b_V.add_(0.5)
        after_bv = attn(x)
        attn.W_K.copy_(torch.randn_like(attn.W_K))
        after_k = attn(x)
    assert (after_q - before).abs().max() > 1e-3
    assert (after_bv - after_q).abs().max() > 1e-3
    assert (after_k - after_bv).abs().max() > 1e-3
    assert (after_k - reference(attn, x, None, None)).abs().max() < ATOL


def test_writes_through_data_need_clear_weight_cache():
    attn = make_attn(d_model=20)
    x = torch.randn(2, 4, 20)
    with torch.no_grad():
        attn(x)
        attn.W_V.data[0] = 0.0  # .data bypasses the version counter (documented)
        attn.clear_weight_cache()
        out = attn(x)
    assert (out - reference(attn, x, None, None)).abs().max() < ATOL


def test_replacing_parameters_and_dtype_changes_rebuild_the_cache():
    attn = make_attn(d_model=20)
    x = torch.randn(2, 4, 20)
    with torch.no_grad():
        attn(x)
        sd = {k: v * 0.5 for k, v in attn.state_dict().items()}
        attn.load_state_dict(sd, assign=True)  # new Parameter objects
        out = attn(x)
        assert (out - reference(attn, x, None, None)).abs().max() < ATOL
        attn.double()
        out64 = attn(x.double())
    assert out64.dtype == torch.float64
    assert (out64 - reference(attn, x.double(), None, None)).abs().max() < 1e-10


def test_model_weight_edit_after_forward_changes_next_forward(tiny_mlm):
    model, _, _ = tiny_mlm
    batch = model.tokenize(["the cat sat on the mat", "a dog"])
    kw = dict(one_zero_attention_mask=batch.attention_mask, return_type="embeddings")
    with torch.inference_mode():
        clean = model(batch.tokens, **kw)
    with torch.no_grad():
        model.blocks[1].attn.W_V[0] += 1.0  # as a user editing a head's weights would
    with torch.inference_mode():
        edited = model(batch.tokens, **kw)
        # the explicit path (v hooked: separate projections) sees the same edited weights
        slow = model.run_with_hooks(batch.tokens, fwd_hooks=[("blocks.1.attn.hook_v", lambda v, hook: None)], **kw)
    mask = batch.attention_mask.bool()
    assert (edited - clean)[mask].abs().max() > 1e-3
    assert (edited - slow)[mask].abs().max() < ATOL
    model.clear_weight_caches()
    assert all("_flat_cache" not in b.attn.__dict__ for b in model.blocks)


def test_copies_do_not_share_the_fused_weight_cache():
    import copy
    import pickle

    attn = make_attn(d_model=20)
    x = torch.randn(2, 4, 20)
    with torch.no_grad():
        attn(x)
        for clone in (copy.deepcopy(attn), pickle.loads(pickle.dumps(attn))):
            assert "_flat_cache" not in clone.__dict__
            clone.W_Q.mul_(0.5)
            assert (clone(x) - reference(clone, x, None, None)).abs().max() < ATOL
        assert (attn(x) - reference(attn, x, None, None)).abs().max() < ATOL


def test_inference_mode_forward_does_not_poison_later_autograd(tiny_mlm):
    """A harvest-style forward under inference_mode, then gradients w.r.t. activations of a frozen model."""
    model, _, _ = tiny_mlm
    batch = model.tokenize(["the cat sat on the mat", "a dog"])
    kw = dict(one_zero_attention_mask=batch.attention_mask, return_type="embeddings")
    with torch.inference_mode():
        ref = model(batch.tokens, **kw)
    model.requires_grad_(False)
    try:
        grads = {}

        def track(x, hook):
            x = x.detach().requires_grad_(True)
            grads["x"] = x
            return x

        out = model.run_with_hooks(batch.tokens, fwd_hooks=[("hook_full_embed", track)], **kw)
        out.sum().backward()
        assert grads["x"].grad is not None and grads["x"].grad.abs().sum() > 0
        assert (out.detach() - ref).abs().max() < ATOL
        # and back in inference mode the (rebuilt or kept) cache still serves the same result
        with torch.inference_mode():
            assert (model(batch.tokens, **kw) - ref).abs().max() < ATOL
        out2 = model.run_with_hooks(batch.tokens, fwd_hooks=[("hook_full_embed", track)], **kw)
        out2.sum().backward()
    finally:
        model.requires_grad_(True)


def test_unpadded_host_mask_builds_no_mask() -> None:
    """No padding: no additive mask (SDPA may then take any kernel, and no zero mask is read per layer)."""
    from encoderlens.components.attention import build_additive_mask

    ones = torch.ones(2, 5, dtype=torch.bool)
    assert build_additive_mask(ones, 5, 5, False, torch.float32, torch.device("cpu")) is None
    causal = build_additive_mask(ones, 5, 5, True, torch.float32, torch.device("cpu"))
    assert causal is not None and causal.shape == (1, 1, 5, 5)
    assert torch.equal(causal, build_additive_mask(None, 5, 5, True, torch.float32, torch.device("cpu")))
    padded = ones.clone()
    padded[1, 3:] = False
    mask = build_additive_mask(padded, 5, 5, False, torch.float32, torch.device("cpu"))
    assert mask is not None and mask.shape == (2, 1, 1, 5) and bool((mask[1, 0, 0, 3:] < -1e30).all())
    # a device mask is never read on the host (that would synchronise): kept as given
    on_meta = build_additive_mask(ones.to("meta"), 5, 5, False, torch.float32, torch.device("meta"))
    assert on_meta is not None and on_meta.device.type == "meta"
