"""Slow, obvious references for the analysis tools: one hooked forward per patch, loops for head scores.

They use only the models' public hooks (``run_with_cache`` / ``run_with_hooks`` on the raw inputs) and
the real lengths of each item, never the analysis code under test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

Index = tuple[Any, ...]


def clean_cache(
    model: Any, args: Sequence[Any], kwargs: dict[str, Any], names: Sequence[str]
) -> dict[str, torch.Tensor]:
    """The activations at ``names`` of one plain forward."""
    store: dict[str, torch.Tensor] = {}

    def save(x: torch.Tensor, hook: Any) -> None:
        store[hook.name] = x.detach().clone()

    with torch.no_grad():
        model.run_with_hooks(*args, fwd_hooks=[(n, save) for n in names], **kwargs)
    return store


def patched_metric(
    model: Any,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    name: str,
    index: Index,
    source: torch.Tensor,
    metric: Callable[[torch.Tensor], torch.Tensor],
) -> float:
    """``metric`` of a forward on ``args`` where ``act[:, *index]`` at hook ``name`` is replaced by ``source``'s."""

    def put(x: torch.Tensor, hook: Any) -> torch.Tensor:
        x = x.clone()
        x[(slice(None), *index)] = source[(slice(None), *index)]
        return x

    with torch.no_grad():
        return float(metric(model.run_with_hooks(*args, fwd_hooks=[(name, put)], **kwargs)))


def head_score_reference(
    patterns: torch.Tensor,
    detector: str,
    q_lens: Sequence[int],
    k_lens: Sequence[int],
    cross: bool = False,
    window: int = 2,
) -> torch.Tensor:
    """A detector's ``(layer, head)`` scores by loops over items and real queries (see analysis/heads.py's table).

    ``patterns`` is ``(layer, batch, head, q, k)``; item ``b`` has real queries ``0..q_lens[b]-1`` and real keys
    ``0..k_lens[b]-1``. Scores average the per-query target mass over every (item, query) with a target.
    """
    n_layers, _, n_heads = patterns.shape[:3]
    out = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    for layer in range(n_layers):
        for h in range(n_heads):
            total, count = 0.0, 0
            for b, (nq, nk) in enumerate(zip(q_lens, k_lens)):
                for q in range(nq):
                    row = patterns[layer, b, h, q, :nk].double()
                    if detector == "entropy":
                        if nk < 2:
                            continue
                        pr = row / row.sum()
                        value = -sum(float(v) * math.log(float(v)) for v in pr if v > 0) / math.log(nk)
                    elif detector == "mean_distance":
                        value = sum(float(row[k]) * abs(q - k) for k in range(nk))
                    else:
                        keys = _targets(detector, q, nk, cross, window)
                        if not keys:
                            continue
                        value = sum(float(row[k]) for k in keys)
                    total, count = total + value, count + 1
            out[layer, h] = total / count if count else math.nan
    return out


def _targets(detector: str, q: int, nk: int, cross: bool, window: int) -> list[int]:
    if detector == "previous_token":
        return [q - 1] if 0 <= q - 1 < nk else []
    if detector == "next_token":
        return [q + 1] if q + 1 < nk else []
    if detector == "self":
        return [q] if q < nk else []
    if detector == "local_window":
        return [k for k in range(nk) if abs(k - q) <= window]
    if detector == "first_token":
        return [0] if cross or q != 0 else []
    if detector == "last_token":
        return [nk - 1] if cross or q != nk - 1 else []
    raise ValueError(detector)
