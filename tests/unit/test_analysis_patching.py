"""Activation patching on tiny random BERTs: values checked against hand-made hooked runs."""

from __future__ import annotations

import pytest
import torch

from encoderlens.analysis import (
    Target,
    ablate_edges,
    check_compatible,
    edge_attribution,
    embedding_noise_hook,
    log_prob,
    logit_diff,
    patch_attn_layers,
    patch_heads,
    patch_mlp,
    patch_residual,
    prepare,
    run_patches,
)
from tests.conftest import raises_input_error
from tests.unit.analysis_helpers import padded_tokens, tiny_mlm

METRIC_POS, GOOD, BAD = 4, 10, 11


@pytest.fixture(scope="module")
def model():
    return tiny_mlm()


@pytest.fixture(scope="module")
def pair():
    tokens, mask = padded_tokens()
    corrupt = tokens.clone()
    corrupt[:, 2] = 7  # same padding, one token swapped in both items
    return tokens, corrupt, mask


def _metric_value(model, tokens, mask, hooks=()):
    with torch.no_grad():
        logits = model.run_with_hooks(tokens, one_zero_attention_mask=mask, fwd_hooks=list(hooks))
    return float(logit_diff(METRIC_POS, GOOD, BAD)(logits))


def _cache(model, tokens, mask):
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, one_zero_attention_mask=mask)
    return cache


def test_residual_patching_matches_manual_runs(model, pair):
    clean, corrupt, mask = pair
    metric = logit_diff(METRIC_POS, GOOD, BAD)
    res = patch_residual(model, clean, corrupt, metric, normalize=False, input_kwargs={"one_zero_attention_mask": mask})
    assert res.axes == ("layer", "pos") and res.shape == (3, 9)
    assert res.labels["layer"] == ["L0", "L1", "L2"]
    clean_cache = _cache(model, clean, mask)
    m_clean = _metric_value(model, clean, mask)
    m_corrupt = _metric_value(model, corrupt, mask)
    assert res.meta["metric_clean"] == pytest.approx(m_clean, abs=1e-6)
    assert res.meta["metric_corrupt"] == pytest.approx(m_corrupt, abs=1e-6)
    for layer, pos in [(0, 2), (1, 2), (2, 4), (1, 0)]:
        name = f"blocks.{layer}.hook_resid_pre"

        def put(x, hook, pos=pos, name=name):
            x = x.clone()
            x[:, pos] = clean_cache[name][:, pos]
            return x

        manual = _metric_value(model, corrupt, mask, [(name, put)])
        assert res.values[layer, pos].item() == pytest.approx(manual, abs=1e-5), (layer, pos)


def test_normalised_residual_patching_has_exact_anchors(model, pair):
    clean, corrupt, mask = pair
    res = patch_residual(
        model, clean, corrupt, logit_diff(METRIC_POS, GOOD, BAD), input_kwargs={"one_zero_attention_mask": mask}
    )
    # layer 0 input: only the swapped position differs, so patching it restores the clean run exactly
    assert res.values[0, 2].item() == pytest.approx(1.0, abs=1e-5)
    others = torch.cat([res.values[0, :2], res.values[0, 3:]])
    assert others.abs().max().item() < 1e-5
    assert res.labels["pos"][2] == "2"  # token ids only: position labels


def test_noising_is_the_mirror_of_denoising(model, pair):
    clean, corrupt, mask = pair
    metric = logit_diff(METRIC_POS, GOOD, BAD)
    kw = {"input_kwargs": {"one_zero_attention_mask": mask}}
    noise = patch_residual(model, clean, corrupt, metric, direction="noise", layers=[0], **kw)
    assert noise.values[0, 2].item() == pytest.approx(1.0, abs=1e-5)  # patching the corrupted token destroys it all
    with raises_input_error(ValueError, "direction", param="direction"):
        patch_residual(model, clean, corrupt, metric, direction="sideways", **kw)


def test_chunked_runs_equal_one_run_per_target(model, pair):
    clean, corrupt, mask = pair
    metric = logit_diff(METRIC_POS, GOOD, BAD)
    kw = {"input_kwargs": {"one_zero_attention_mask": mask}, "normalize": False}
    a = patch_heads(model, clean, corrupt, metric, chunk_size=1, **kw)
    b = patch_heads(model, clean, corrupt, metric, chunk_size=5, **kw)
    torch.testing.assert_close(a.values, b.values, atol=1e-5, rtol=0)


def test_head_patching_z_and_pattern_match_manual(model, pair):
    clean, corrupt, mask = pair
    metric = logit_diff(METRIC_POS, GOOD, BAD)
    kw = {"input_kwargs": {"one_zero_attention_mask": mask}, "normalize": False}
    clean_cache = _cache(model, clean, mask)
    z = patch_heads(model, clean, corrupt, metric, act="z", **kw)
    pat = patch_heads(model, clean, corrupt, metric, act="pattern", **kw)
    assert z.axes == ("layer", "head") and z.shape == (3, 3)

    def put_z(x, hook):
        x = x.clone()
        x[:, :, 1] = clean_cache["blocks.1.attn.hook_z"][:, :, 1]
        return x

    def put_pattern(x, hook):
        x = x.clone()
        x[:, 2] = clean_cache["blocks.2.attn.hook_pattern"][:, 2]
        return x

    assert z.values[1, 1].item() == pytest.approx(
        _metric_value(model, corrupt, mask, [("blocks.1.attn.hook_z", put_z)]), abs=1e-5
    )
    manual = _metric_value(model, corrupt, mask, [("blocks.2.attn.hook_pattern", put_pattern)])
    assert pat.values[2, 2].item() == pytest.approx(manual, abs=1e-5)
    by_pos = patch_heads(model, clean, corrupt, metric, act="z", by_pos=True, layers=[0], **kw)
    assert by_pos.axes == ("layer", "head", "pos") and by_pos.shape == (1, 3, 9)
    with torch.no_grad():  # hook_result is opt-in: cache every hook
        _, full_cache = model.run_with_cache(clean, one_zero_attention_mask=mask, names_filter=lambda n: True)
    for act in ("q", "k", "v", "result"):
        r = patch_heads(model, clean, corrupt, metric, act=act, layers=[2], **kw)
        assert r.shape == (1, 3)
        name = f"blocks.2.attn.hook_{act}"
        for h in range(3):

            def put(x, hook, h=h, name=name):
                x = x.clone()
                x[:, :, h] = full_cache[name][:, :, h]  # (batch, pos, head, ...)
                return x

            manual = _metric_value(model, corrupt, mask, [(name, put)])
            assert r.values[0, h].item() == pytest.approx(manual, abs=1e-5), (act, h)
        assert r.values.std() > 0  # heads differ: the manual runs patch one head each


def test_mlp_and_attention_layer_patching(model, pair):
    clean, corrupt, mask = pair
    metric = logit_diff(METRIC_POS, GOOD, BAD)
    kw = {"input_kwargs": {"one_zero_attention_mask": mask}, "normalize": False}
    clean_cache = _cache(model, clean, mask)
    mlp = patch_mlp(model, clean, corrupt, metric, **kw)
    attn = patch_attn_layers(model, clean, corrupt, metric, **kw)
    assert mlp.axes == ("layer",) and attn.shape == (3,)
    manual = _metric_value(
        model, corrupt, mask, [("blocks.1.hook_mlp_out", lambda x, hook: clean_cache["blocks.1.hook_mlp_out"])]
    )
    assert mlp.values[1].item() == pytest.approx(manual, abs=1e-5)
    by_pos = patch_mlp(model, clean, corrupt, metric, by_pos=True, **kw)
    assert by_pos.axes == ("layer", "pos")


def test_per_item_metric_adds_item_axis(model, pair):
    clean, corrupt, mask = pair
    metric = logit_diff(METRIC_POS, GOOD, BAD, reduce="none")
    res = patch_residual(
        model, clean, corrupt, metric, layers=[0, 2], positions=[1, 2], input_kwargs={"one_zero_attention_mask": mask}
    )
    assert res.axes == ("layer", "pos", "item") and res.shape == (2, 2, 2)
    assert res.values[0, 1].tolist() == pytest.approx([1.0, 1.0], abs=1e-5)


def test_padded_positions_do_not_leak(model, pair):
    """Patching a padded position of item 1 cannot change item 1 (its keys there are masked)."""
    clean, corrupt, mask = pair
    metric = logit_diff(METRIC_POS, GOOD, BAD, reduce="none")
    res = patch_residual(
        model, clean, corrupt, metric, normalize=False, positions=[7], input_kwargs={"one_zero_attention_mask": mask}
    )
    m_corrupt = res.meta["metric_corrupt"][1]
    assert res.values[:, 0, 1].tolist() == pytest.approx([m_corrupt] * 3, abs=1e-5)


def test_corruption_by_hooks(model, pair):
    clean, _, mask = pair
    hook = embedding_noise_hook(0.5, positions=[2])
    res = patch_residual(
        model,
        clean,
        None,
        logit_diff(METRIC_POS, GOOD, BAD),
        corrupt_hooks=[hook],
        layers=[0],
        input_kwargs={"one_zero_attention_mask": mask},
    )
    # the noise is on position 2 only: patching the clean embedding stream there restores everything
    assert res.values[0, 2].item() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="corrupt_hooks"):
        patch_residual(model, clean, None, logit_diff(METRIC_POS, GOOD, BAD))


def test_incompatible_inputs_are_explained(model, pair):
    clean, corrupt, mask = pair
    metric = logit_diff(METRIC_POS, GOOD, BAD)
    with pytest.raises(ValueError, match="different shapes"):
        patch_residual(model, clean, corrupt[:, :8], metric)
    other_mask = mask.clone()
    other_mask[0, 8] = 0
    a = prepare(model, clean, one_zero_attention_mask=mask)
    b = prepare(model, corrupt, one_zero_attention_mask=other_mask)
    with pytest.raises(ValueError, match=r"different padding .*items \[0\]"):
        check_compatible(a, b)
    with pytest.raises(ValueError, match="items"):
        check_compatible(a, prepare(model, corrupt[:1]))
    same = torch.full_like(clean, 5)
    with pytest.raises(ValueError, match="same on the clean"):
        patch_mlp(model, same, same.clone(), metric)


def test_bad_arguments(model, pair):
    clean, corrupt, _ = pair
    metric = logit_diff(METRIC_POS, GOOD, BAD)
    with pytest.raises(ValueError, match="hook must be one of"):
        patch_residual(model, clean, corrupt, metric, hook="resid_middle")
    with pytest.raises(ValueError, match="act must be one of"):
        patch_heads(model, clean, corrupt, metric, act="zz")
    with pytest.raises(ValueError, match="cross-attention"):
        patch_heads(model, clean, corrupt, metric, attn="cross_attn")
    with pytest.raises(ValueError, match="layer 7 out of range"):
        patch_residual(model, clean, corrupt, metric, layers=[7])
    with pytest.raises(ValueError, match="one value per batch item"):
        patch_mlp(model, clean, corrupt, lambda logits: logits[:, 0, :3])
    with pytest.raises(TypeError, match="tensor or a float"):
        patch_mlp(model, clean, corrupt, lambda logits: "high")
    with pytest.raises(ValueError, match="position must be an int or one per batch item"):
        patch_mlp(model, clean, corrupt, logit_diff([1, 2, 3], GOOD))
    p = prepare(model, clean)
    with pytest.raises(ValueError, match="no source activation"):
        run_patches(model, p, {}, [Target("blocks.0.hook_mlp_out")], metric)
    with pytest.raises(ValueError, match="chunk_size"):
        run_patches(model, p, {}, [], metric, chunk_size=0)


def test_nearly_equal_clean_and_corrupted_metrics_warn(model, pair):
    import warnings

    clean, corrupt, mask = pair
    kw = {"input_kwargs": {"one_zero_attention_mask": mask}, "layers": [0]}
    ld = logit_diff(METRIC_POS, GOOD, BAD)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clear clean/corrupted gap: no warning
        patch_residual(model, clean, corrupt, ld, **kw)

    def offset(logits):  # a tiny effect on an offset: the difference is mostly float rounding
        return 1.0 + 1e-3 * ld(logits)

    with pytest.warns(
        UserWarning, match=r"nearly equal: normalised scores divide by their difference .*normalize=False"
    ):
        patch_residual(model, clean, corrupt, offset, **kw)

    # the case: a small clean/corrupted gap next to patched values far outside it (scores of +-122)
    from dataclasses import replace

    from encoderlens.analysis.patching_core import normalise, setup_runs

    base, src = torch.tensor(2.00), torch.tensor(2.05)
    setup = setup_runs(model, clean, corrupt, ld, ["blocks.0.hook_resid_pre"], input_kwargs=kw["input_kwargs"])
    setup = replace(setup, metric_base=base, metric_source=src, metric_clean=src, metric_corrupt=base)
    with pytest.warns(UserWarning, match=r"reach 122"):
        out = normalise(torch.tensor([2.0, 2.05, 8.1]), setup, True)
    assert out.tolist() == pytest.approx([0.0, 1.0, 122.0], rel=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        patch_residual(model, clean, corrupt, offset, normalize=False, **kw)


def test_a_metric_position_on_padding_or_outside_is_refused(model, pair):
    clean, corrupt, mask = pair  # item 1 has 6 real tokens of 9
    kw = {"one_zero_attention_mask": mask}
    # position -1 (or 7) read item 1's padding logits: its "effect" was a number of no output
    for bad in (logit_diff(-1, GOOD, BAD), logit_diff([4, 7], GOOD, BAD), log_prob(8, GOOD)):
        with pytest.raises(ValueError, match="is padding in batch item 1, which has 6 real positions"):
            patch_residual(model, clean, corrupt, bad, layers=[0], input_kwargs=kw)
    with pytest.raises(ValueError, match="outside the 9 positions"):
        patch_residual(model, clean, corrupt, logit_diff(9, GOOD, BAD), layers=[0], input_kwargs=kw)
    with pytest.raises(ValueError, match="is padding in batch item 1"):
        edge_attribution(model, clean, corrupt, logit_diff(-1, GOOD, BAD), input_kwargs=kw)
    with pytest.raises(ValueError, match="is padding in batch item 1"):
        ablate_edges(model, clean, corrupt, logit_diff(-1, GOOD, BAD), [[]], input_kwargs=kw)
    # each item's last real position is fine
    last = mask.sum(1) - 1
    res = patch_residual(model, clean, corrupt, logit_diff(last, GOOD, BAD), layers=[0], input_kwargs=kw)
    assert res.values.shape == (1, 9)
