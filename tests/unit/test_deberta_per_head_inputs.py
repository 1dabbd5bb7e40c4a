"""DeBERTa per-head attention inputs (``hook_q/k/v_input``): exact when not edited, and an edit of one head's input
reaches exactly that head's q / k / v, including its c2p / p2c position terms."""

from __future__ import annotations

import pytest
import torch
from transformers import DebertaV2ForMaskedLM

from encoderlens import HookedEncoder
from tests.conftest import randomize_norms
from tests.parity.test_deberta_parity import CASES, padded_batch, tiny_config

IDS = ["v3-legacy", "v3", "v3-separate", "v2", "c2p-buckets", "p2c-shared", "no-relative"]
LAYER, HEAD = 1, 1


def load(kw: dict) -> HookedEncoder:
    torch.manual_seed(0)
    hf = DebertaV2ForMaskedLM(tiny_config(**dict(kw, num_hidden_layers=2))).eval()
    randomize_norms(hf)
    return HookedEncoder.from_pretrained(hf_model=hf)


def inputs(model: HookedEncoder, corrupt: bool = False) -> tuple[torch.Tensor, dict]:
    tokens, mask, tt = padded_batch()
    if corrupt:
        tokens = tokens.clone()
        tokens[:, 3] = 7
        tokens[mask == 0] = 0
    kw = {"one_zero_attention_mask": mask}
    if model.embed.token_type_embed is not None:
        kw["token_type_ids"] = tt
    return tokens, kw


def identity(x, hook):
    return x


SPLIT = [f"blocks.{i}.hook_{a}_input" for i in range(2) for a in "qkv"]
WATCH = {f"blocks.{i}.attn.hook_{t}" for i in range(2) for t in ("pattern", "c2c_scores", "c2p_scores", "p2c_scores")}


@pytest.mark.parametrize("kw", [kw for _, kw in CASES], ids=IDS)
def test_per_head_inputs_unedited_equal_the_normal_run(kw):
    model = load(kw)
    tokens, ikw = inputs(model)
    with torch.no_grad():
        ref_logits, ref = model.run_with_cache(tokens, **ikw, names_filter=WATCH.__contains__)
        model.reset_hooks()
        for name in SPLIT:
            model.add_hook(name, identity)
        try:
            logits, cache = model.run_with_cache(tokens, **ikw, names_filter=WATCH.__contains__)
            fast = model(tokens, **ikw)  # the SDPA path with per-head inputs
        finally:
            model.reset_hooks()
    torch.testing.assert_close(logits, ref_logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(fast, ref_logits, atol=1e-5, rtol=0)
    names = set(ref.keys())
    assert set(cache.keys()) == names == WATCH & set(model.hook_dict)
    for name in names:
        torch.testing.assert_close(cache[name], ref[name], atol=1e-6, rtol=0)


def head_patch(value: torch.Tensor, head: int):
    def fn(x, hook):
        x = x.clone()
        x[:, :, head] = value[:, :, head]
        return x

    return fn


#: the attention variants (the MLM-head and no-relative-attention cases do not change the attention)
EDIT = {i: kw for i, (_, kw) in zip(IDS, CASES) if i not in ("v3-legacy", "no-relative")}


@pytest.mark.parametrize("kw", list(EDIT.values()), ids=list(EDIT))
def test_patching_one_heads_input_equals_patching_that_heads_projection(kw):
    """Head h's q / k / v input from the corrupted run == head h's q / k / v (hook_q/k/v) from the corrupted run.

    Post-LN: the block's attention reads ``resid_pre`` directly, so the reference is the corrupted run's projected
    q / k / v of that head, written after the projection; everything downstream (c2c, c2p from q, p2c from k) must
    then agree, and the other heads of the layer must not move.
    """
    model = load(kw)
    tokens, ikw = inputs(model)
    cor, _ = inputs(model, corrupt=True)
    resid, pattern = f"blocks.{LAYER}.hook_resid_pre", f"blocks.{LAYER}.attn.hook_pattern"
    projs = {leaf: f"blocks.{LAYER}.attn.hook_{leaf}" for leaf in "qkv"}
    with torch.no_grad():
        _, cc = model.run_with_cache(cor, **ikw, names_filter={resid, *projs.values()}.__contains__)
        clean_logits, clean = model.run_with_cache(tokens, **ikw, names_filter={pattern}.__contains__)
    per_head = cc[resid].unsqueeze(2).expand(-1, -1, model.cfg.n_heads, -1)
    for leaf, proj in projs.items():
        with torch.no_grad():
            with model.hooks(fwd_hooks=[(f"blocks.{LAYER}.hook_{leaf}_input", head_patch(per_head, HEAD))]):
                got, got_cache = model.run_with_cache(tokens, **ikw, names_filter={pattern}.__contains__)
            with model.hooks(fwd_hooks=[(proj, head_patch(cc[proj], HEAD))]):
                want, want_cache = model.run_with_cache(tokens, **ikw, names_filter={pattern}.__contains__)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got_cache[pattern], want_cache[pattern], atol=1e-6, rtol=0)
        moved = (got_cache[pattern] - clean[pattern]).abs().amax((0, 2, 3))
        others = [h for h in range(model.cfg.n_heads) if h != HEAD]
        assert moved[others].max() == 0, leaf
        if leaf != "v":
            assert moved[HEAD] > 1e-3, leaf
        assert (got - clean_logits).abs().max() > 1e-3, leaf
