"""Small tensor helpers shared by converters (HF ``nn.Linear`` layout -> per-head layout)."""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor


def linear_weight(w: Float[Tensor, "d_out d_in"]) -> Float[Tensor, "d_in d_out"]:
    """HF ``nn.Linear.weight`` is ``(out, in)``; we store ``(in, out)`` so that ``x @ W`` applies it."""
    return w.T.contiguous()


def head_in_weight(w: Float[Tensor, "hd d_in"], n_heads: int) -> Float[Tensor, "head_index d_in d_head"]:
    """Q/K/V projection ``(n_heads * d_head, d_in)`` -> ``(n_heads, d_in, d_head)``."""
    d_in = w.shape[1]
    return w.T.reshape(d_in, n_heads, -1).permute(1, 0, 2).contiguous()


def head_bias(b: Float[Tensor, " hd"], n_heads: int) -> Float[Tensor, "head_index d_head"]:
    return b.reshape(n_heads, -1).contiguous()


def head_out_weight(w: Float[Tensor, "d_model hd"], n_heads: int) -> Float[Tensor, "head_index d_head d_model"]:
    """Output projection ``(d_model, n_heads * d_head)`` -> ``(n_heads, d_head, d_model)``."""
    d_model = w.shape[0]
    return w.T.reshape(n_heads, -1, d_model).contiguous()
