"""Shared parity checks for text encoders: every residual, every attention pattern, head outputs vs HF."""

from __future__ import annotations

from typing import Any

import torch

from encoderlens import HookedEncoder
from tests.conftest import masked_max_diff, pattern_max_diff, randomize_norms, save_tiny

ATOL = 1e-4


def padded_batch(
    pad_id: int = 0, vocab: int = 99, n_token_types: int = 0, left_pad_row: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Three sequences of lengths 23, 17, 5 (right-padded with ``pad_id``), optionally one left-padded row.

    Real tokens never equal ``pad_id`` (ids from 5 up, skipping it), so position schemes that count
    non-padding tokens see exactly the attended ones.
    """
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(5, vocab, (3, 23), generator=g)
    tokens[tokens == pad_id] = pad_id + 1 if pad_id + 1 < vocab else 5
    mask = torch.ones_like(tokens)
    mask[1, 17:] = 0
    if left_pad_row:
        mask[2, :18] = 0  # 5 real tokens at the end
    else:
        mask[2, 5:] = 0
    tokens[mask == 0] = pad_id
    tt = None
    if n_token_types:
        tt = torch.zeros_like(tokens)
        tt[0, 12:] = 1 % n_token_types
        tt[1, 8:17] = (n_token_types - 1) % n_token_types
    return tokens, mask, tt


def load_pair(hf_model: Any, tmp_path: Any, **kw: Any) -> tuple[Any, HookedEncoder]:
    """Randomise the HF model's norms and biases, save it, and load it back through our loader."""
    hf_model.eval()
    randomize_norms(hf_model)
    model = HookedEncoder.from_pretrained(save_tiny(hf_model, tmp_path), **kw)
    return hf_model, model


def run_both(
    hf: Any, model: HookedEncoder, tokens: torch.Tensor, mask: torch.Tensor, tt: torch.Tensor | None
) -> tuple[Any, Any, Any]:
    """HF forward with hidden states and attentions; ours with return_type='all' and a full cache."""
    hf_kw: dict[str, Any] = {"input_ids": tokens, "attention_mask": mask}
    our_kw: dict[str, Any] = {"one_zero_attention_mask": mask}
    if tt is not None:
        hf_kw["token_type_ids"] = tt
        our_kw["token_type_ids"] = tt
    with torch.no_grad():
        out = hf(**hf_kw, output_hidden_states=True, output_attentions=True)
        ours, cache = model.run_with_cache(tokens, return_type="all", **our_kw)
    return out, ours, cache


def assert_stream_parity(out: Any, cache: Any, model: HookedEncoder, mask: torch.Tensor) -> None:
    """Block-0 input, every block's input and output, and every attention pattern match HF."""
    hidden = out.hidden_states
    assert len(hidden) == model.cfg.n_layers + 1
    assert len(out.attentions) == model.cfg.n_layers
    assert masked_max_diff(cache["hook_full_embed"], hidden[0], mask) < ATOL
    for i in range(model.cfg.n_layers):
        assert masked_max_diff(cache["resid_pre", i], hidden[i], mask) < ATOL, i
        assert masked_max_diff(cache[model.stream_spec(None).resid_hook(i)], hidden[i + 1], mask) < ATOL, i
        assert pattern_max_diff(cache["pattern", i], out.attentions[i], mask) < ATOL, i


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()
