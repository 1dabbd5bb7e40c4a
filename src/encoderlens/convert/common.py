"""Helpers shared by converters: HF ``nn.Linear`` layout -> ours, and one HF layer -> one block."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from jaxtyping import Float
from torch import Tensor

from encoderlens.convert.registry import WeightReader


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


def take_linear(r: WeightReader, out: dict[str, Tensor], src: str, dst: str, bias: bool = True) -> None:
    """HF ``nn.Linear`` ``src`` -> ``{dst}.W`` style pair: ``dst`` holds a ``{}`` for ``W`` / ``b``."""
    out[dst.format("W")] = linear_weight(r.take(src + ".weight"))
    if bias:
        out[dst.format("b")] = r.take(src + ".bias")


def take_norm(r: WeightReader, out: dict[str, Tensor], src: str, dst: str, bias: bool = True) -> None:
    """HF LayerNorm ``src`` -> ``{dst}.w`` / ``{dst}.b``."""
    out[dst + ".w"] = r.take(src + ".weight")
    if bias:
        out[dst + ".b"] = r.take(src + ".bias")


def take_heads_in(r: WeightReader, out: dict[str, Tensor], src: str, dst: str, n_heads: int) -> None:
    """HF Q/K/V-style projection ``src`` -> per-head ``dst.format('W')`` and ``dst.format('b')``."""
    out[dst.format("W")] = head_in_weight(r.take(src + ".weight"), n_heads)
    out[dst.format("b")] = head_bias(r.take(src + ".bias"), n_heads)


@dataclass(frozen=True)
class LayerNames:
    """HF module names (relative to one layer) of a transformer layer with biased linears and LayerNorms.

    ``ln1`` is the norm around attention and ``ln2`` the one around the MLP, before or after their
    sub-layer as the stack's ``norm_position`` says. The defaults are BERT's; other layouts rename them.
    """

    q: str = "attention.self.query"
    k: str = "attention.self.key"
    v: str = "attention.self.value"
    o: str = "attention.output.dense"
    ln1: str = "attention.output.LayerNorm"
    mlp_in: str = "intermediate.dense"
    mlp_out: str = "output.dense"
    ln2: str = "output.LayerNorm"


BERT_LAYER_NAMES = LayerNames()


def take_layer(
    r: WeightReader,
    out: dict[str, Tensor],
    src: str,
    dst: str,
    n_heads: int,
    names: LayerNames = BERT_LAYER_NAMES,
    extra_attn: Mapping[str, str] | None = None,
) -> None:
    """Convert one HF layer at ``src`` (ends with ``.``) into ``dst`` (``blocks.{i}.``).

    Args:
        extra_attn: More per-head input projections of the attention, ours -> HF module
            (DeBERTa's ``{"K_pos": "attention.self.pos_key_proj"}`` -> ``attn.W_K_pos`` / ``attn.b_K_pos``).
    """
    for ours, theirs in (("Q", names.q), ("K", names.k), ("V", names.v), *(extra_attn or {}).items()):
        take_heads_in(r, out, src + theirs, dst + "attn.{}_" + ours, n_heads)
    out[dst + "attn.W_O"] = head_out_weight(r.take(src + names.o + ".weight"), n_heads)
    out[dst + "attn.b_O"] = r.take(src + names.o + ".bias")
    take_norm(r, out, src + names.ln1, dst + "ln1")
    take_linear(r, out, src + names.mlp_in, dst + "mlp.{}_in")
    take_linear(r, out, src + names.mlp_out, dst + "mlp.{}_out")
    take_norm(r, out, src + names.ln2, dst + "ln2")
