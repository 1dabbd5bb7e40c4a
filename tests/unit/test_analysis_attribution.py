"""Attribution patching approximates real activation patching on a tiny random BERT."""

from __future__ import annotations

import pytest
import torch

from encoderlens.analysis import (
    attribute_attn_layers,
    attribute_heads,
    attribute_mlp,
    attribute_residual,
    embedding_noise_hook,
    logit_diff,
    patch_attn_layers,
    patch_heads,
    patch_mlp,
    patch_residual,
)
from tests.unit.analysis_helpers import padded_tokens, tiny_mlm


@pytest.fixture(scope="module")
def model():
    return tiny_mlm(seed=2, initializer_range=0.2)  # enough structure for nonzero head effects


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


def _setup(std: float):
    tokens, mask = padded_tokens()
    kw = {
        "corrupt_hooks": [embedding_noise_hook(std, seed=4)],
        "input_kwargs": {"one_zero_attention_mask": mask},
        "normalize": False,
    }
    return tokens, kw


PAIRS = [
    (patch_residual, attribute_residual, {}),
    (patch_residual, attribute_residual, {"hook": "mlp_out"}),
    (patch_heads, attribute_heads, {"act": "z"}),
    (patch_heads, attribute_heads, {"act": "pattern"}),
    (patch_heads, attribute_heads, {"act": "v", "by_pos": True}),
    (patch_mlp, attribute_mlp, {}),
    (patch_attn_layers, attribute_attn_layers, {}),
]


@pytest.mark.parametrize("patch_fn,attr_fn,extra", PAIRS, ids=lambda x: getattr(x, "__name__", str(x)))
def test_attribution_approximates_patching(model, patch_fn, attr_fn, extra):
    """Small perturbation (noise of 5% of the embeddings' scale): the linear estimate must track the real effects."""
    tokens, kw = _setup(0.01)
    metric = logit_diff(4, 10, 11)
    real = patch_fn(model, tokens, None, metric, **extra, **kw)
    est = attr_fn(model, tokens, None, metric, **extra, **kw)
    assert est.axes == real.axes and est.shape == real.shape and est.labels == real.labels
    base = real.meta["metric_corrupt"]
    effect_real, effect_est = real.values - base, est.values - base
    assert effect_real.abs().max() > 1e-5  # there is something to approximate
    assert _corr(effect_real, effect_est) > 0.9
    assert torch.allclose(effect_est, effect_real, atol=0.15 * float(effect_real.abs().max()))


def test_normalised_estimates_use_the_same_scale(model):
    tokens, kw = _setup(0.01)
    kw["normalize"] = True
    metric = logit_diff(4, 10, 11)
    real = patch_residual(model, tokens, None, metric, layers=[0], **kw)
    est = attribute_residual(model, tokens, None, metric, layers=[0], **kw)
    # all of layer 0's positions together carry the whole corruption: both sum to about 1
    assert real.values.sum().item() == pytest.approx(1.0, abs=0.15)
    assert est.values.sum().item() == pytest.approx(1.0, abs=0.15)


def test_token_swap_on_a_padded_batch(model):
    """A real token swap, per-item metric: estimates correlate with patching on the swapped position's stream."""
    tokens, mask = padded_tokens()
    corrupt = tokens.clone()
    corrupt[:, 2] = 7
    metric = logit_diff(4, 10, 11, reduce="none")
    kw = {"input_kwargs": {"one_zero_attention_mask": mask}, "normalize": False}
    real = patch_residual(model, tokens, corrupt, metric, **kw)
    est = attribute_residual(model, tokens, corrupt, metric, **kw)
    assert real.axes == est.axes == ("layer", "pos", "item")
    base = torch.tensor(real.meta["metric_corrupt"])
    # the swapped position: exact at layer 0? no (nonlinear) -- but strongly correlated over layers and items
    assert _corr(real.values - base, est.values - base) > 0.8
    # positions that are padding in item 1 cannot matter to item 1, in either method
    assert (est.values[:, 6:, 1] - base[1]).abs().max() < 1e-6


def test_metric_must_be_differentiable(model):
    tokens, kw = _setup(0.01)
    with pytest.raises(TypeError, match="differentiable"):
        attribute_mlp(model, tokens, None, lambda logits: logits.detach()[0, 4, 10], **kw)
