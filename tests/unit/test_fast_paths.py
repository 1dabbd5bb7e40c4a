"""Overheads removed from the forward and the cache (issue 15), each pinned by a test that failed before."""

from __future__ import annotations

import pytest
import torch

from encoderlens import HookedEncoderDecoder
from tests.conftest import raises_input_error
from tests.seq2seq_helpers import make_hf, padded_seq2seq_batch


def test_run_with_cache_does_not_fold_the_unembedding(monkeypatch):
    """The folded unembedding (a pass over the vocabulary matrix) is built only when read, not per forward."""
    model = HookedEncoderDecoder.from_pretrained(hf_model=make_hf("t5"))
    src, src_mask, tgt, tgt_mask = padded_seq2seq_batch(first_token=model.cfg.decoder_start_token_id)
    expected = model.folded_unembed()

    def refuse() -> None:
        raise AssertionError("folded_unembed was computed")

    monkeypatch.setattr(model, "folded_unembed", refuse)
    with torch.inference_mode():
        _, cache = model.run_with_cache(src, tgt, one_zero_attention_mask=src_mask, decoder_attention_mask=tgt_mask)
    assert len(cache) > 0
    spec = model.stream_spec("decoder")
    with pytest.raises(AssertionError, match="folded_unembed was computed"):
        spec.unembed  # noqa: B018  (read: now it is built)
    monkeypatch.undo()
    W_U, b_U = model.stream_spec("decoder").unembed
    torch.testing.assert_close(W_U, expected[0], rtol=0, atol=0)
    torch.testing.assert_close(b_U, expected[1], rtol=0, atol=0)


def _identity(x, hook):
    return x


def _count_calls(monkeypatch, name: str) -> list[int]:
    calls = [0]
    real = getattr(torch, name)

    def spy(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, name, spy)
    return calls


def test_cached_layernorm_uses_the_fused_kernel_and_equals_the_step_by_step_path(tiny_mlm, monkeypatch):
    """A cache only reads hook_scale / hook_normalized: one fused LayerNorm pass, same values as the explicit path."""
    model, _, _ = tiny_mlm
    tokens = torch.randint(5, 99, (2, 9))
    mask = torch.ones_like(tokens)
    mask[1, 6:] = 0
    ln_hooks = [n for n in model.hook_names() if n.endswith(("hook_scale", "hook_normalized"))]
    n_norms = len(ln_hooks) // 2
    kw = dict(one_zero_attention_mask=mask, return_type="logits")
    calls = _count_calls(monkeypatch, "native_layer_norm")
    with torch.inference_mode():
        fused_out, fused = model.run_with_cache(tokens, **kw)
        assert calls[0] == n_norms  # every norm took the fused path
        # an (identity) editing hook on each norm forces the step-by-step path, whose edits flow on
        with model.hooks(fwd_hooks=[(n, _identity) for n in ln_hooks]):
            explicit_out, explicit = model.run_with_cache(tokens, **kw)
        assert calls[0] == n_norms
        plain = model(tokens, **kw)
    assert set(fused.keys()) == set(explicit.keys())
    for name in sorted(fused.keys()):
        torch.testing.assert_close(fused[name], explicit[name], atol=1e-5, rtol=1e-5, msg=name)
    torch.testing.assert_close(fused_out, explicit_out, atol=1e-4, rtol=0)
    torch.testing.assert_close(fused_out, plain, atol=1e-4, rtol=0)


def test_editing_a_cached_norm_scale_still_changes_the_output(tiny_mlm):
    """With the cache's read-only hooks present, a user's hook that edits hook_scale still takes effect."""
    model, _, _ = tiny_mlm
    tokens = torch.randint(5, 99, (2, 9))

    def double(x, hook):
        return x * 2

    with torch.inference_mode():
        plain = model(tokens, return_type="embeddings")
        with model.hooks(fwd_hooks=[("blocks.1.ln2.hook_scale", double)]):
            edited, cache = model.run_with_cache(tokens, return_type="embeddings")
    assert (edited - plain).abs().max() > 1e-2
    # the cache holds the edited scale (hooks run in order: the user's edit, then the cache reads it)
    x = cache["blocks.1.hook_resid_post"]
    expected = 2 * (x.var(-1, unbiased=False, keepdim=True) + model.blocks[1].ln2.eps).sqrt()
    torch.testing.assert_close(cache["blocks.1.ln2.hook_scale"], expected, atol=1e-5, rtol=1e-5)


def test_read_only_hook_ignores_what_its_function_returns():
    from encoderlens.hooks import HookPoint, ReadOnlyHook

    hp = HookPoint()
    seen = []
    hp.add_hook(ReadOnlyHook(lambda x, hook: seen.append(x) or x * 0))
    assert not hp.may_edit()
    out = hp(torch.ones(3))
    assert out.tolist() == [1.0, 1.0, 1.0] and len(seen) == 1
    hp.add_hook(lambda x, hook: None)
    assert hp.may_edit()
    with raises_input_error(TypeError, "wraps a callable", param="fn"):
        ReadOnlyHook(3)  # type: ignore[arg-type]


def test_cached_channel_norm_uses_the_fused_kernel_and_equals_the_step_by_step_path(monkeypatch):
    """The speech front end's group norm (the model's largest activation): fused when only read, same values."""
    from encoderlens.components.audio_frontend import ChannelNorm
    from encoderlens.hooks import ReadOnlyHook

    norm = ChannelNorm(5, 1e-5)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        norm.w.copy_(torch.randn(5, generator=g))
        norm.b.copy_(torch.randn(5, generator=g))
    x = torch.randn(2, 5, 31, generator=g) * 3 + 1
    expected = torch.nn.functional.group_norm(x, 5, norm.w, norm.b, norm.eps)

    def run(hook_wrapper):
        seen = {}
        for leaf in ("hook_scale", "hook_normalized"):
            getattr(norm, leaf).add_hook(hook_wrapper(lambda t, hook, leaf=leaf: seen.__setitem__(leaf, t)))
        try:
            return norm(x), seen
        finally:
            norm.hook_scale.remove_hooks()
            norm.hook_normalized.remove_hooks()

    calls = _count_calls(monkeypatch, "native_group_norm")
    with torch.no_grad():
        fused, fused_seen = run(ReadOnlyHook)
        assert calls[0] == 1
        explicit, explicit_seen = run(lambda fn: fn)  # a plain hook may edit: the step-by-step path
        assert calls[0] == 1
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(explicit, expected, atol=1e-5, rtol=0)
    assert fused_seen["hook_scale"].shape == explicit_seen["hook_scale"].shape == (2, 1, 5)
    for leaf in ("hook_scale", "hook_normalized"):
        torch.testing.assert_close(fused_seen[leaf], explicit_seen[leaf], atol=1e-5, rtol=1e-5)


def test_offloaded_cache_keeps_nothing_on_the_model_device(tiny_mlm):
    """run_with_cache(device=...) copies each tensor as it is produced; no activation outlives its layer."""
    import gc
    import weakref

    model, _, _ = tiny_mlm
    tokens = torch.randint(5, 99, (2, 9))
    refs = []
    ptrs = {}

    def watch(x, hook):
        refs.append(weakref.ref(x))
        ptrs[hook.name] = x.data_ptr()

    with torch.inference_mode(), model.hooks(fwd_hooks=[(lambda n: n.endswith(("hook_resid_post", "hook_q")), watch)]):
        _, offloaded = model.run_with_cache(tokens, device="meta", return_type="embeddings")
        gc.collect()
        assert refs and all(r() is None for r in refs)  # every watched activation was released
        assert all(t.device.type == "meta" for t in offloaded.values())
        # on the model's own device nothing is copied: the cache holds the activations themselves
        _, kept = model.run_with_cache(tokens, device="cpu", return_type="embeddings")
    assert ptrs and all(kept[name].data_ptr() == ptr for name, ptr in ptrs.items())
    q, k = kept["blocks.0.attn.hook_q"], kept["blocks.0.attn.hook_k"]
    assert q.untyped_storage().data_ptr() == k.untyped_storage().data_ptr()  # views of one q|k|v buffer


def test_copy_to_returns_the_tensor_itself_on_its_own_device():
    from encoderlens.hooks import copy_to, wait_for_copies

    t = torch.ones(3)
    pending: set[torch.device] = set()
    assert copy_to(t, torch.device("cpu"), pending) is t and not pending
    moved = copy_to(t, torch.device("meta"), pending)
    assert moved.device.type == "meta" and not pending
    wait_for_copies(pending)  # nothing queued: returns at once


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_conv_activations_run_in_place_only_on_buffers_nothing_else_holds(norm, tmp_path):
    """The front end's activations overwrite fresh buffers in a plain run; a cached raw conv output stays intact."""
    import numpy as np
    from transformers import HubertConfig, HubertForCTC

    from encoderlens import HookedAudioEncoder
    from tests.parity.test_audio_parity import randomize_all, save_checkpoint, tiny_kwargs

    hf = HubertForCTC(HubertConfig(**tiny_kwargs(num_hidden_layers=1, feat_extract_norm=norm))).eval()
    randomize_all(hf)
    model = HookedAudioEncoder.from_pretrained(save_checkpoint(hf, tmp_path, return_attention_mask=False)[0])
    waves = [(0.3 * np.random.default_rng(0).standard_normal(n)).astype(np.float32) for n in (400, 330)]
    batch = model.prepare(waves)
    in_place = [0]
    for layer in model.frontend.conv:
        real = layer.act_inplace

        def spy(x, real=real):
            in_place[0] += 1
            return real(x)

        layer.act_inplace = spy
    with torch.no_grad():
        plain = model(batch)
    assert in_place[0] == len(model.frontend.conv)  # no hooks: every conv layer's activation in place
    in_place[0] = 0
    with torch.no_grad():
        _, cache = model.run_with_cache(batch)
    # cached raw conv outputs: the second layer (no norm with "group") must not be overwritten by the activation
    assert in_place[0] == (1 if norm == "group" else len(model.frontend.conv))
    _, graph_cache = model.run_with_cache(batch)  # grad mode: never in place
    for name in cache:
        torch.testing.assert_close(cache[name], graph_cache[name].detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(plain, model(batch).detach(), atol=1e-6, rtol=0)


def test_inplace_activations_equal_their_functions():
    from encoderlens.components.mlp import get_activation, get_inplace_activation

    x = torch.randn(3, 50) * 4
    for name in ("gelu", "relu", "silu", "swish"):
        act = get_inplace_activation(name)
        assert act is not None
        y = x.clone()
        assert act(y) is not None
        torch.testing.assert_close(y, get_activation(name)(x), atol=0, rtol=0)
    assert get_inplace_activation("gelu_new") is None  # no in-place form: the caller uses the function
    with pytest.raises(ValueError, match="unknown activation"):
        get_inplace_activation("gleu")


def test_mlp_activation_runs_in_place_unless_hook_pre_is_hooked(tiny_mlm):
    """A plain run writes the MLP's activation over its fresh pre-activation; a cached hook_pre keeps its value."""
    model, _, _ = tiny_mlm
    tokens = torch.randint(5, 99, (2, 7))
    in_place = [0]
    for block in model.blocks:
        real = block.mlp.act_inplace

        def spy(x, real=real):
            in_place[0] += 1
            return real(x)

        block.mlp.act_inplace = spy
    with torch.no_grad():
        plain = model(tokens, return_type="logits")
        assert in_place[0] == model.cfg.n_layers
        in_place[0] = 0
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("mlp.hook_pre"))
    assert in_place[0] == 0
    _, graph_cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("mlp.hook_pre"))
    for name in cache:  # what the cache holds is the pre-activation, not the activation written over it
        torch.testing.assert_close(cache[name], graph_cache[name].detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(plain, model(tokens, return_type="logits").detach(), atol=1e-6, rtol=0)
