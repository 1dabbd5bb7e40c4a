"""Hook machinery: edits take effect, hooks are always removed, names are checked, caching options work."""

from __future__ import annotations

import pytest
import torch

from encoderlens import get_act_name

TEXTS = ["the cat sat on the mat", "a dog ran"]


def test_zero_ablating_one_head_matches_manual_computation(tiny_mlm):
    model, _, _ = tiny_mlm
    layer, head = 1, 2
    batch = model.tokenize(TEXTS)
    kw = dict(one_zero_attention_mask=batch.attention_mask, return_type="embeddings")
    with torch.no_grad():
        _, cache = model.run_with_cache(batch.tokens, **kw)

        def ablate(z, hook):
            z = z.clone()
            z[:, :, head] = 0.0
            return z

        ablated = model.run_with_hooks(batch.tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", ablate)], **kw)
        # manual: remove the head's contribution from attn_out, then run the rest of the model by hand
        z = cache["z", layer]
        head_out = z[:, :, head] @ model.blocks[layer].attn.W_O[head]
        new_attn_out = cache["attn_out", layer] - head_out
        manual = model.run_with_hooks(
            batch.tokens, fwd_hooks=[(f"blocks.{layer}.hook_attn_out", lambda x, hook: new_attn_out)], **kw
        )
        clean = model(batch.tokens, **kw)
    mask = batch.attention_mask.bool()
    assert (ablated - clean)[mask].abs().max() > 1e-3  # the edit took effect
    assert (ablated - manual)[mask].abs().max() < 1e-5


def test_hook_edit_on_embeddings_propagates(tiny_mlm):
    model, _, _ = tiny_mlm
    with torch.no_grad():
        clean = model("the cat sat")
        edited = model.run_with_hooks("the cat sat", fwd_hooks=[("embed.hook_embed", lambda x, hook: x * 0)])
    assert (clean - edited).abs().max() > 1e-3


def test_hooks_removed_when_forward_raises(tiny_mlm):
    model, _, _ = tiny_mlm
    calls = []

    def record(x, hook):
        calls.append(hook.name)

    with pytest.raises(ValueError):
        # the hook is attached, then the forward fails on bad input
        model.run_with_hooks(torch.tensor([[1, 2, 500]]), fwd_hooks=[("blocks.0.hook_resid_pre", record)])
    assert model.active_hook_names() == []

    def boom(x, hook):
        raise RuntimeError("hook failure")

    with pytest.raises(RuntimeError, match="hook failure"):
        model.run_with_hooks("the cat", fwd_hooks=[("blocks.1.attn.hook_pattern", boom)])
    assert model.active_hook_names() == []
    with pytest.raises(RuntimeError):
        with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", record)]):
            raise RuntimeError("user code failed")
    assert model.active_hook_names() == []


def test_misspelled_hook_name_suggests_closest(tiny_mlm):
    model, _, _ = tiny_mlm
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.hook_pattern"):
        model.run_with_hooks("the cat", fwd_hooks=[("blocks.0.attn.hook_patern", lambda x, hook: x)])
    with pytest.raises(ValueError, match="did you mean"):
        model.run_with_cache("the cat", names_filter=["blocks.0.hook_resid_psot"])


def test_hook_must_return_tensor_of_same_shape(tiny_mlm):
    model, _, _ = tiny_mlm
    with pytest.raises(ValueError, match="shape"):
        model.run_with_hooks("the cat", fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: x[:, :1])])
    with pytest.raises(TypeError, match="Tensor"):
        model.run_with_hooks("the cat", fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: 3)])


def test_glob_and_filter_targets_and_permanent_hooks(tiny_mlm):
    model, _, _ = tiny_mlm
    seen: list[str] = []
    model.run_with_hooks("the cat", fwd_hooks=[("blocks.*.attn.hook_pattern", lambda x, hook: seen.append(hook.name))])
    assert seen == [f"blocks.{i}.attn.hook_pattern" for i in range(3)]
    seen.clear()
    model.add_hook(lambda n: n.endswith("hook_resid_post"), lambda x, hook: seen.append(hook.name), is_permanent=True)
    model.reset_hooks()
    model("the cat")
    assert len(seen) == 3  # permanent hooks survive reset_hooks()
    model.reset_hooks(including_permanent=True)
    seen.clear()
    model("the cat")
    assert seen == []


def test_run_with_cache_filters_device_and_batch_dim(tiny_mlm):
    model, _, _ = tiny_mlm
    _, cache = model.run_with_cache("the cat sat", names_filter="blocks.0.attn.hook_pattern")
    assert list(cache.keys()) == ["blocks.0.attn.hook_pattern"]
    _, cache = model.run_with_cache("the cat sat", names_filter=lambda n: n.endswith("hook_z"), device="cpu")
    assert len(cache) == 3 and all(k.endswith("hook_z") for k in cache)
    _, cache = model.run_with_cache("the cat sat", remove_batch_dim=True)
    assert cache["pattern", 0].ndim == 3
    _, d = model.run_with_cache("the cat sat", return_cache_object=False)
    assert isinstance(d, dict) and "embed.hook_embed" in d
    # only what is asked is cached
    _, small = model.run_with_cache("the cat sat", names_filter=["embed.hook_embed"])
    assert small.nbytes() < cache.nbytes()


def test_backward_hooks_and_incl_bwd(tiny_mlm):
    model, _, _ = tiny_mlm
    _, cache = model.run_with_cache("the cat sat", incl_bwd=True, names_filter=lambda n: "resid" in n)
    assert "blocks.0.hook_resid_pre_grad" in cache
    assert cache["blocks.0.hook_resid_pre_grad"].abs().sum() > 0
    model.zero_grad()
    grads = []
    with model.hooks(bwd_hooks=[("embed.hook_embed", lambda g, hook: grads.append(g))]):
        model("the cat").sum().backward()
    assert len(grads) == 1 and grads[0].shape[-1] == model.cfg.d_model
    assert model.active_hook_names() == []


def test_get_act_name():
    assert get_act_name("pattern", 3) == "blocks.3.attn.hook_pattern"
    assert get_act_name("scale", 1, "ln2") == "blocks.1.ln2.hook_scale"
    assert get_act_name("z", 0, "cross_attn", stream="decoder") == "decoder.blocks.0.cross_attn.hook_z"
    assert get_act_name("embed") == "hook_embed"
    with pytest.raises(ValueError, match="layer index"):
        get_act_name("pattern")
    with pytest.raises(ValueError, match="did you mean"):
        get_act_name("patern", 0)
