"""Every ActivationCache helper against a brute-force reference: tensors grabbed with plain hooks, summed by hand.

Pre-LN (with a final norm) and post-LN stacks, a padded batch of two, with and without position slices and
with the batch axis removed.
"""

from __future__ import annotations

import pytest
import torch

from tests.unit.analysis_helpers import linear_head_encoder, padded_tokens, tiny_mlm

ATOL = 1e-5


@pytest.fixture(scope="module")
def pre():
    return linear_head_encoder()


@pytest.fixture(scope="module")
def post():
    return tiny_mlm()


def grab(model, tokens, mask):
    """Every hook's activation, captured with forward hooks of our own (no cache helper involved)."""
    store = {}

    def keep(x, hook):
        store[hook.name] = x.detach().clone()

    names = list(model.hook_dict)
    with torch.no_grad():
        model.run_with_hooks(
            tokens, one_zero_attention_mask=mask, return_type=None, fwd_hooks=[(n, keep) for n in names]
        )
    return store


def cached(model, tokens, mask, **kw):
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, one_zero_attention_mask=mask, return_type=None, **kw)
    return cache


def ln_reference(x, eps):
    """LayerNorm without its affine, by hand."""
    x = x - x.mean(-1, keepdim=True)
    return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()


@pytest.mark.parametrize("which", ["pre", "post"])
def test_accumulated_resid_and_head_results(which, request):
    model = request.getfixturevalue(which)
    tokens, mask = padded_tokens()
    ref = grab(model, tokens, mask)
    cache = cached(model, tokens, mask, names_filter=lambda n: True)  # opt-in hook_result too
    n = model.cfg.n_layers
    acc, labels = cache.accumulated_resid(incl_mid=True, return_labels=True)
    want = []
    for i in range(n):
        want += [ref[f"blocks.{i}.hook_resid_pre"], ref[f"blocks.{i}.hook_resid_mid"]]
    want.append(ref[f"blocks.{n - 1}.hook_resid_post"])
    assert labels[-1] == "final_post" and len(labels) == len(want)
    torch.testing.assert_close(acc, torch.stack(want), atol=ATOL, rtol=0)
    torch.testing.assert_close(
        cache.accumulated_resid(layer=2, pos_slice=3),
        torch.stack([ref[f"blocks.{i}.hook_resid_pre"][:, 3] for i in range(2)]),
    )
    heads = cache.stack_head_results()
    H = model.cfg.n_heads
    for i in range(n):
        result = ref[f"blocks.{i}.attn.hook_result"]  # (batch, pos, head, d_model), computed by the model
        torch.testing.assert_close(heads[i * H : (i + 1) * H], result.permute(2, 0, 1, 3), atol=ATOL, rtol=0)
        b_O = model.blocks[i].attn.b_O
        total = heads[i * H : (i + 1) * H].sum(0) + (b_O if b_O is not None else 0)
        torch.testing.assert_close(total, ref[f"blocks.{i}.hook_attn_out"], atol=ATOL, rtol=0)
    sliced = cache.stack_head_results(layer=1, pos_slice=slice(1, 4))
    torch.testing.assert_close(sliced, heads[:H, :, 1:4], atol=ATOL, rtol=0)
    stacked = cache.stack_activation("pattern")
    torch.testing.assert_close(stacked, torch.stack([ref[f"blocks.{i}.attn.hook_pattern"] for i in range(n)]))


def test_pre_ln_decompositions_sum_to_the_stream(pre):
    tokens, mask = padded_tokens()
    ref = grab(pre, tokens, mask)
    cache = cached(pre, tokens, mask)
    n = pre.cfg.n_layers
    for layer in (1, 2, None):
        target = ref[f"blocks.{layer}.hook_resid_pre"] if layer is not None else ref[f"blocks.{n - 1}.hook_resid_post"]
        comps, labels = cache.decompose_resid(layer=layer, return_labels=True)
        k = n if layer is None else layer
        assert len(labels) == len(pre.stream_spec(None).embed_hooks) + 2 * k
        torch.testing.assert_close(comps.sum(0), target, atol=ATOL, rtol=0)
        i = labels.index(f"{k - 1}_mlp_out")
        torch.testing.assert_close(comps[i], ref[f"blocks.{k - 1}.hook_mlp_out"])
        full = cache.get_full_resid_decomposition(layer=layer)
        torch.testing.assert_close(full.sum(0), target, atol=1e-4, rtol=0)
        unexpanded = cache.get_full_resid_decomposition(layer=layer, expand_neurons=False, pos_slice=[0, 5])
        torch.testing.assert_close(unexpanded.sum(0), target[:, [0, 5]], atol=1e-4, rtol=0)
    # the input of block 1's MLP: every component up to and including block 1's attention
    mid = cache.get_full_resid_decomposition(layer=1, mlp_input=True)
    torch.testing.assert_close(mid.sum(0), ref["blocks.1.hook_resid_mid"], atol=1e-4, rtol=0)
    heads = cache.stack_head_results(layer=2, incl_remainder=True)
    torch.testing.assert_close(heads.sum(0), ref["blocks.2.hook_resid_pre"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("no_batch", [False, True])
def test_apply_ln_to_stack_uses_the_right_norm(pre, no_batch):
    tokens, mask = padded_tokens()
    if no_batch:
        tokens, mask = tokens[1:], mask[1:]
    ref = grab(pre, tokens, mask)
    cache = cached(pre, tokens, mask, remove_batch_dim=no_batch)
    squeeze = (lambda t: t[0]) if no_batch else (lambda t: t)
    eps = pre.cfg.stack.norm.eps
    n = pre.cfg.n_layers
    # final norm
    comps = cache.decompose_resid()
    normed = cache.apply_ln_to_stack(comps).sum(0)
    torch.testing.assert_close(
        normed, squeeze(ln_reference(ref[f"blocks.{n - 1}.hook_resid_post"], eps)), atol=1e-4, rtol=0
    )
    # block 1's attention input (ln1 reads resid_pre) and MLP input (ln2 reads resid_mid)
    comps = cache.decompose_resid(layer=1)
    torch.testing.assert_close(
        cache.apply_ln_to_stack(comps, layer=1).sum(0),
        squeeze(ln_reference(ref["blocks.1.hook_resid_pre"], eps)),
        atol=1e-4,
        rtol=0,
    )
    mid = cache.get_full_resid_decomposition(layer=1, mlp_input=True, expand_neurons=False)
    got = cache.apply_ln_to_stack(mid, layer=1, mlp_input=True).sum(0)
    torch.testing.assert_close(got, squeeze(ln_reference(ref["blocks.1.hook_resid_mid"], eps)), atol=1e-4, rtol=0)
    torch.testing.assert_close(got, squeeze(ref["blocks.1.ln2.hook_normalized"]), atol=1e-4, rtol=0)
    # position slice: the scale is sliced with the stack
    sl = cache.apply_ln_to_stack(mid[..., 2:5, :], layer=1, mlp_input=True, pos_slice=slice(2, 5)).sum(0)
    torch.testing.assert_close(sl, got[..., 2:5, :], atol=1e-5, rtol=0)


def test_post_ln_stream_refuses_decompositions(post):
    tokens, mask = padded_tokens()
    cache = cached(post, tokens, mask)
    for call in (
        cache.decompose_resid,
        cache.get_full_resid_decomposition,
        lambda: cache.apply_ln_to_stack(torch.zeros(1)),
    ):
        with pytest.raises(ValueError, match="post-LN"):
            call()


def test_logit_attrs_against_the_unembedding(pre):
    tokens, mask = padded_tokens()
    ref = grab(pre, tokens, mask)
    cache = cached(pre, tokens, mask)
    W_U, _ = pre.stream_spec(None).unembed
    n = pre.cfg.n_layers
    comps = cache.apply_ln_to_stack(cache.decompose_resid())
    good = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 13]] * 2)
    bad = torch.tensor([[20, 21, 22, 23, 24, 25, 26, 27, 28]] * 2)
    normed = ln_reference(ref[f"blocks.{n - 1}.hook_resid_post"], pre.cfg.stack.norm.eps)
    full_logits = normed @ W_U
    want = full_logits.gather(-1, good[..., None])[..., 0] - full_logits.gather(-1, bad[..., None])[..., 0]
    got = cache.logit_attrs(comps, good, incorrect_tokens=bad)
    assert got.shape == (comps.shape[0], 2, 9)
    torch.testing.assert_close(got.sum(0), want, atol=1e-4, rtol=0)
    only_good = cache.logit_attrs(comps, good).sum(0)
    torch.testing.assert_close(only_good, full_logits.gather(-1, good[..., None])[..., 0], atol=1e-4, rtol=0)
    # one token for every position, and a position slice
    one = cache.logit_attrs(comps, 5, incorrect_tokens=20, pos_slice=4)
    torch.testing.assert_close(one.sum(0), (normed[:, 4] @ (W_U[:, 5] - W_U[:, 20])), atol=1e-4, rtol=0)
