"""Rotary position embedding (RoPE) and sliding-window masks, used inside :class:`Attention`."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from encoderlens.config import RotaryConfig


def rotary_cos_sin(
    positions: Int[Tensor, " pos"], dim: int, base: float, dtype: torch.dtype
) -> tuple[Float[Tensor, "pos dim"], Float[Tensor, "pos dim"]]:
    """``cos`` and ``sin`` of the rotation angles ``position * base^(-2i/dim)``, halves repeated.

    Computed in fp32 as HF does, then cast to ``dtype``.
    """
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float, device=positions.device) / dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(
    x: Float[Tensor, "batch pos head_index d_head"],
    positions: Int[Tensor, " pos"],
    cfg: RotaryConfig,
) -> Float[Tensor, "batch pos head_index d_head"]:
    """Rotate the first ``cfg.dim`` dimensions of each head by its position (GPT-NeoX "rotate half" layout).

    Example:
        >>> q_rot = apply_rotary(q, torch.arange(q.shape[1]), RotaryConfig(base=10000.0))
    """
    dim = x.shape[-1] if cfg.dim is None else cfg.dim
    cos, sin = rotary_cos_sin(positions, dim, cfg.base, x.dtype)
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    rot, rest = (x, None) if dim == x.shape[-1] else (x[..., :dim], x[..., dim:])
    # fp32 arithmetic as HF (matters in half precision only)
    out = (rot.float() * cos + _rotate_half(rot.float()) * sin).to(x.dtype)
    return out if rest is None else torch.cat((out, rest), dim=-1)


def apply_local_window(
    additive_mask: Float[Tensor, "#batch #head_index #query_pos key_pos"] | None,
    window: int,
    query_len: int,
    key_len: int,
    past_len: int,
    dtype: torch.dtype,
    device: torch.device,
) -> Float[Tensor, "#batch #head_index query_pos key_pos"]:
    """Block keys farther than ``window`` positions from the query (``|i - j| > window``).

    Blocked entries are set to the dtype's minimum rather than added to, so a fully blocked row
    (a padded query far from every real key) stays finite: no NaN can leak through ``0 * NaN``.
    """
    q_idx = torch.arange(query_len, device=device)[:, None] + past_len
    k_idx = torch.arange(key_len, device=device)[None, :]
    inside = ((q_idx - k_idx).abs() <= window)[None, None]
    neg = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=device)
    if additive_mask is None:
        return torch.where(inside, torch.zeros((), dtype=dtype, device=device), neg)
    return torch.where(inside, additive_mask.to(dtype), neg)
