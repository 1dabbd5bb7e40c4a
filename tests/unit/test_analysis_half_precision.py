"""The analysis tools on a bfloat16 model: they run, and agree with the float32 model to bf16 precision."""

from __future__ import annotations

import torch

from encoderlens.analysis import attribute_residual, decompose, direct_logit_attribution, logit_diff, patch_residual
from tests.unit.analysis_helpers import padded_tokens, pre_ln_encoder


def close(half: torch.Tensor, full: torch.Tensor, rel: float = 0.05) -> bool:
    """Within ``rel`` of the float32 result's largest magnitude (bf16 keeps 8 bits: 2**-8 per op)."""
    return bool((half.float() - full.float()).abs().max() <= rel * full.float().abs().max() + 1e-3)


def test_patching_attribution_and_dla_in_bf16_match_fp32():
    full = pre_ln_encoder()
    half = pre_ln_encoder().to(torch.bfloat16)
    tokens, mask = padded_tokens()
    corrupt = tokens.clone()
    corrupt[:, 2] = 7
    kw = {"one_zero_attention_mask": mask}
    metric = logit_diff(3, 10, 11)
    for fn in (patch_residual, attribute_residual):
        a = fn(half, tokens, corrupt, metric, normalize=False, input_kwargs=kw)
        b = fn(full, tokens, corrupt, metric, normalize=False, input_kwargs=kw)
        assert a.values.shape == b.values.shape and torch.isfinite(a.values.float()).all()
        assert close(a.values, b.values), fn.__name__
    a = direct_logit_attribution(half, tokens, 10, position=3)
    b = direct_logit_attribution(full, tokens, 10, position=3)
    assert a.values.dtype == torch.bfloat16 and close(a.values, b.values)
    d_half, d_full = decompose(half, tokens, heads=True), decompose(full, tokens, heads=True)
    assert close(d_half.components, d_full.components)
