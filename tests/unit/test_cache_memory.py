"""Cache memory: only what names_filter asks, offload as produced, honest sizes, opt-in hook_result."""

from __future__ import annotations

import torch

from encoderlens.hooks import OPT_IN_HOOKS

TEXTS = ["the cat sat on the mat", "a dog ran over the lazy fox"]


def _kw(model):
    batch = model.tokenize(TEXTS)
    return batch, dict(one_zero_attention_mask=batch.attention_mask, return_type="embeddings")


def test_cache_holds_exactly_the_filtered_names(tiny_mlm):
    model, _, _ = tiny_mlm
    batch, kw = _kw(model)
    wanted = ["blocks.0.hook_resid_post", "blocks.2.attn.hook_pattern", "blocks.1.mlp.hook_post"]
    with torch.inference_mode():
        _, cache = model.run_with_cache(batch.tokens, names_filter=wanted, **kw)
        _, by_fn = model.run_with_cache(batch.tokens, names_filter=lambda n: n.endswith("hook_q"), **kw)
    assert sorted(cache.keys()) == sorted(wanted)
    assert sorted(by_fn.keys()) == [f"blocks.{i}.attn.hook_q" for i in range(model.cfg.n_layers)]
    assert model.active_hook_names() == []


def test_default_cache_leaves_out_hook_result_but_head_results_still_work(tiny_mlm):
    model, _, _ = tiny_mlm
    batch, kw = _kw(model)
    kw["return_type"] = "logits"  # runs the MLM head too, so every hook point fires
    with torch.inference_mode():
        _, cache = model.run_with_cache(batch.tokens, **kw)
        _, res = model.run_with_cache(batch.tokens, names_filter=lambda n: n.endswith("hook_result"), **kw)
    expected = {n for n in model.hook_names() if not n.endswith(OPT_IN_HOOKS)}  # hook_result, split inputs...
    assert set(cache.keys()) == expected
    assert len(res) == model.cfg.n_layers
    # stack_head_results (from hook_z) equals the explicitly requested per-head results
    stacked = cache.stack_head_results()
    explicit = torch.cat([res["result", i].movedim(2, 0) for i in range(model.cfg.n_layers)])
    assert (stacked - explicit).abs().max() < 1e-5


def test_nbytes_counts_real_memory_of_cached_tensors(tiny_mlm):
    model, _, _ = tiny_mlm
    batch, kw = _kw(model)
    with torch.inference_mode():
        _, cache = model.run_with_cache(
            batch.tokens, names_filter=lambda n: n.endswith(("hook_q", "hook_k", "hook_v")), **kw
        )
        _, q_only = model.run_with_cache(batch.tokens, names_filter=lambda n: n.endswith("hook_q"), **kw)
    # all three cached: views of one fused q|k|v buffer, stored once and exactly covered by the views
    for i in range(model.cfg.n_layers):
        q, k, v = (cache[f"blocks.{i}.attn.hook_{x}"] for x in "qkv")
        assert q.untyped_storage().data_ptr() == k.untyped_storage().data_ptr() == v.untyped_storage().data_ptr()
        assert q.untyped_storage().nbytes() == sum(t.numel() * t.element_size() for t in (q, k, v))
    assert cache.nbytes() == sum(t.numel() * t.element_size() for t in cache.values())
    # q alone: its own memory (a view would keep k and v alive too)
    for name, t in q_only.items():
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size(), name
    assert q_only.nbytes() == sum(t.numel() * t.element_size() for t in q_only.values())
    report = cache.size_report()
    assert "blocks.0.attn.hook_q" in report and f"total: {len(cache)} tensors" in report


def test_nbytes_counts_a_kept_alive_buffer_once_and_whole():
    from encoderlens.cache import ActivationCache

    buf = torch.zeros(4, 10)
    cache = ActivationCache({"a": buf[:1], "b": buf[1:2]}, model=None)
    assert cache.nbytes() == buf.numel() * buf.element_size()
    assert ActivationCache({"a": buf[:1].clone()}, model=None).nbytes() == 10 * buf.element_size()


def test_device_moves_each_tensor_as_it_is_produced(tiny_mlm):
    model, _, _ = tiny_mlm
    batch, kw = _kw(model)
    seen = []

    def spy(x, hook):
        seen.append(x.device.type)

    # the meta device stands in for "cpu" on a GPU machine: the copy happens inside the hook
    with torch.inference_mode(), model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", spy)]):
        out, cache = model.run_with_cache(batch.tokens, names_filter=lambda n: "resid" in n, device="meta", **kw)
    assert out.device.type == "cpu" and seen == ["cpu"]
    assert len(cache) > 0 and all(t.device.type == "meta" for t in cache.values())
    assert cache.nbytes() == sum(t.numel() * t.element_size() for t in cache.values())
