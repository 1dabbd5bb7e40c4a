"""ActivationCache with TransformerLens's meanings: slices, negative layers, short keys, per-head/neuron results."""

from __future__ import annotations

import pytest
import torch

from tests.unit.analysis_helpers import linear_head_encoder, padded_tokens


@pytest.fixture(scope="module")
def linear():
    m = linear_head_encoder(seed=4)
    tokens, mask = padded_tokens()
    with torch.no_grad():
        _, cache = m.run_with_cache(tokens, one_zero_attention_mask=mask, return_type="embeddings")
    return m, tokens, cache


def test_logit_attrs_batch_slice_on_a_stack_without_pos_axis(linear):
    """The bug: batch_slice sliced the component axis of a (component, batch, d) stack."""
    _, tokens, cache = linear
    full = cache.logit_attrs(cache.accumulated_resid(), 7)  # (component, batch, pos)
    last = cache.accumulated_resid(pos_slice=-1)  # (component, batch, d_model): no position axis
    one = cache.logit_attrs(last, 7, pos_slice=-1, batch_slice=0)
    assert one.shape == (last.shape[0],)
    torch.testing.assert_close(one, full[:, 0, -1])
    # with a position axis: the same numbers, whatever the slice spelling
    kept = cache.accumulated_resid(pos_slice=(2, 5))
    torch.testing.assert_close(cache.logit_attrs(kept, 7, pos_slice=(2, 5), batch_slice=[1]), full[:, 1:2, 2:5])
    torch.testing.assert_close(cache.logit_attrs(kept, 7, pos_slice=slice(2, 5)), full[:, :, 2:5])


def test_apply_ln_to_stack_slices_the_scale_as_transformerlens(linear):
    _, _, cache = linear
    stack = cache.accumulated_resid()
    full = cache.apply_ln_to_stack(stack, layer=-1)
    torch.testing.assert_close(full, cache.apply_ln_to_stack(stack))  # -1 is the final norm
    last = cache.apply_ln_to_stack(stack[:, :, -1], layer=-1, pos_slice=-1)
    torch.testing.assert_close(last, full[:, :, -1])
    item = cache.apply_ln_to_stack(stack[:, :, 3], pos_slice=3, batch_slice=1)
    torch.testing.assert_close(item, full[:, 1, 3])
    with pytest.raises(ValueError, match="pos_slice"):
        cache.apply_ln_to_stack(stack[:, :, -1])  # the stack was cut, the scale was not: refused


def test_negative_layers_and_short_keys(linear):
    m, _, cache = linear
    n = m.cfg.n_layers
    assert torch.equal(cache["k", -1], cache[f"blocks.{n - 1}.attn.hook_k"])
    assert torch.equal(cache["full_embed"], cache["hook_full_embed"])  # TL short key
    assert torch.equal(cache["pattern", -2], cache["pattern", n - 2])


def test_compute_head_results_and_neuron_results(linear):
    m, _, cache = linear
    cache = cache.apply_slice_to_batch_dim([0, 1])
    cache.compute_head_results()
    res = cache["result", 1]
    assert res.shape == (2, 9, m.cfg.n_heads, m.cfg.d_model)
    torch.testing.assert_close(res.sum(-2) + m.blocks[1].attn.b_O, cache["attn_out", 1], atol=1e-5, rtol=0)
    neurons = cache.get_neuron_results(-1, neuron_slice=(0, 4), pos_slice=2)
    post = cache["post", m.cfg.n_layers - 1][:, 2, :4]
    torch.testing.assert_close(neurons, post[..., None] * m.blocks[-1].mlp.W_out[:4])
    stack, labels = cache.stack_neuron_results(2, return_labels=True, incl_remainder=True)
    assert labels[0] == "L0N0" and labels[-1] == "remainder" and stack.shape[1:] == (2, 9, m.cfg.d_model)
    torch.testing.assert_close(stack.sum(0), cache["resid_pre", 2], atol=1e-5, rtol=0)  # with the remainder
    d_mlp = m.blocks[0].mlp.W_out.shape[0]
    layer1 = stack[d_mlp : 2 * d_mlp].sum(0) + m.blocks[1].mlp.b_out
    torch.testing.assert_close(layer1, cache["mlp_out", 1], atol=1e-5, rtol=0)
    single = cache.apply_slice_to_batch_dim(0)
    assert not single.has_batch_dim and single["resid_pre", 0].shape == (9, m.cfg.d_model)


def test_toggle_autodiff_restores(linear):
    _, _, cache = linear
    before = torch.is_grad_enabled()
    with pytest.warns(UserWarning, match="autograd"):
        cache.toggle_autodiff(False)
    assert not torch.is_grad_enabled()
    torch.set_grad_enabled(before)
