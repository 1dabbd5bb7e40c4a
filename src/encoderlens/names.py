"""Hook names: short names -> full hook names, and which axis of each hook's activation is what.

This is the one table of hook-name knowledge; the cache, harvest and the analysis views read it
instead of matching hook-name suffixes themselves.

Axes of a hooked activation (batch is always axis 0):

==============================================================  ====================================
hook leaf                                                       axes
==============================================================  ====================================
``hook_pattern``, ``hook_attn_scores``, ``hook_c2c_scores``,    ``(batch, head, pos, key_pos)``
``hook_c2p_scores``, ``hook_p2c_scores``, ``hook_position_bias``
``hook_q``, ``hook_k``, ``hook_v``, ``hook_z``, ``hook_result``  ``(batch, pos, head, d_head)``
anything else (residual streams, MLP, norms, embeddings)         ``(batch, pos, ...)``
==============================================================  ====================================
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable, Sequence
from typing import Union

#: Hook leaves whose activation is ``(batch, head, query_pos, key_pos)``.
PAIRWISE_HOOKS: tuple[str, ...] = (
    "hook_pattern",
    "hook_attn_scores",
    "hook_c2c_scores",
    "hook_c2p_scores",
    "hook_p2c_scores",
    "hook_position_bias",
)
#: Hook leaves whose activation is ``(batch, pos, head, d_head)``.
PER_HEAD_HOOKS: tuple[str, ...] = (
    "hook_q",
    "hook_k",
    "hook_v",
    "hook_z",
    "hook_result",
    "hook_q_input",
    "hook_k_input",
    "hook_v_input",
    "hook_cross_q_input",
    "hook_cross_k_input",
    "hook_cross_v_input",
)


def hook_leaf(hook_name: str) -> str:
    """The last dotted component of a hook name: ``"blocks.0.attn.hook_z"`` -> ``"hook_z"``."""
    return hook_name.rsplit(".", 1)[-1]


def hook_axes(hook_name: str) -> dict[str, int]:
    """Which dimension of a hook's activation is what (batch is always 0).

    Returns:
        ``{"pos": 1}`` for token/frame-aligned activations; ``{"head": 2, "pos": 1}`` for per-head
        activations (``hook_q``, ``hook_z``...); ``{"head": 1, "pos": 2, "key_pos": 3}`` for
        attention scores and patterns.

    Example:
        >>> hook_axes("blocks.0.attn.hook_pattern")
        {'head': 1, 'pos': 2, 'key_pos': 3}
        >>> hook_axes("blocks.0.hook_resid_post")
        {'pos': 1}
    """
    leaf = hook_leaf(hook_name)
    if leaf in PAIRWISE_HOOKS:
        return {"head": 1, "pos": 2, "key_pos": 3}
    if leaf in PER_HEAD_HOOKS:
        return {"pos": 1, "head": 2}
    return {"pos": 1}


def is_pairwise(hook_name: str) -> bool:
    """Whether the activation has two position axes (query and key), e.g. ``hook_pattern``."""
    return "key_pos" in hook_axes(hook_name)


_ACT_ALIASES: dict[str, str] = {
    "embed": "hook_embed",
    "pos_embed": "hook_pos_embed",
    "token_type_embed": "hook_token_type_embed",
    "full_embed": "hook_full_embed",
    "resid_pre": "blocks.{i}.hook_resid_pre",
    "resid_mid": "blocks.{i}.hook_resid_mid",
    "resid_mid_cross": "blocks.{i}.hook_resid_mid_cross",
    "resid_post": "blocks.{i}.hook_resid_post",
    "normalized_resid_mid": "blocks.{i}.hook_normalized_resid_mid",
    "normalized_resid_mid_cross": "blocks.{i}.hook_normalized_resid_mid_cross",
    "normalized_resid_post": "blocks.{i}.hook_normalized_resid_post",
    "attn_out": "blocks.{i}.hook_attn_out",
    "cross_attn_out": "blocks.{i}.hook_cross_attn_out",
    "mlp_out": "blocks.{i}.hook_mlp_out",
    "q": "blocks.{i}.{attn}.hook_q",
    "k": "blocks.{i}.{attn}.hook_k",
    "v": "blocks.{i}.{attn}.hook_v",
    "z": "blocks.{i}.{attn}.hook_z",
    "result": "blocks.{i}.{attn}.hook_result",
    "attn_scores": "blocks.{i}.{attn}.hook_attn_scores",
    "scores": "blocks.{i}.{attn}.hook_attn_scores",
    "pattern": "blocks.{i}.{attn}.hook_pattern",
    "rot_q": "blocks.{i}.{attn}.hook_rot_q",
    "rot_k": "blocks.{i}.{attn}.hook_rot_k",
    "c2c_scores": "blocks.{i}.{attn}.hook_c2c_scores",
    "c2p_scores": "blocks.{i}.{attn}.hook_c2p_scores",
    "p2c_scores": "blocks.{i}.{attn}.hook_p2c_scores",
    "attn": "blocks.{i}.{attn}.hook_pattern",
    "pre": "blocks.{i}.mlp.hook_pre",
    "pre_linear": "blocks.{i}.mlp.hook_pre_linear",
    "post": "blocks.{i}.mlp.hook_post",
    "mlp_pre": "blocks.{i}.mlp.hook_pre",
    "mlp_post": "blocks.{i}.mlp.hook_post",
    "scale": "blocks.{i}.{ln}.hook_scale",
    "normalized": "blocks.{i}.{ln}.hook_normalized",
}


def get_act_name(
    name: str,
    layer: int | None = None,
    layer_type: str | None = None,
    stream: str | None = None,
) -> str:
    """Expand a short activation name to a full hook name.

    Args:
        name: Short name (``"pattern"``, ``"resid_post"``, ``"z"``...) or a full hook name.
        layer: Block index for per-block activations.
        layer_type: For attention hooks: ``"attn"`` (default) or ``"cross_attn"``; for norm hooks:
            ``"ln1"``, ``"ln2"``, ``"ln3"`` (or ``"1"``/``"2"``/``"3"``). As in TransformerLens, decoder
            blocks (cross-attention) have ``ln1`` (self-attention), ``ln2`` (cross-attention) and ``ln3``
            (MLP); other blocks ``ln1`` (attention) and ``ln2`` (MLP).
        stream: Prefix for encoder-decoders: ``"encoder"`` or ``"decoder"``.

    Example:
        >>> get_act_name("pattern", 3)
        'blocks.3.attn.hook_pattern'
        >>> get_act_name("pattern", 0, "cross_attn", stream="decoder")
        'decoder.blocks.0.cross_attn.hook_pattern'
    """
    prefix = f"{stream}." if stream else ""
    if "." in name or name.startswith("hook_"):
        return prefix + name if stream and not name.startswith(prefix) else name
    template = _ACT_ALIASES.get(name)
    if template is None:
        m = re.fullmatch(r"(ln\d|ln_final|final_norm)_?(scale|normalized)?", name)
        if m:
            raise ValueError(f"use get_act_name({m.group(2) or 'scale'!r}, layer, {m.group(1)!r}) for norm hooks")
        close = difflib.get_close_matches(name, list(_ACT_ALIASES), n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown activation short name {name!r}{hint}")
    if "{i}" in template:
        if layer is None:
            raise ValueError(f"activation {name!r} is per block: pass a layer index, e.g. ({name!r}, 0)")
        attn = "attn"
        ln = "ln1"
        if layer_type is not None:
            if layer_type in ("attn", "cross_attn"):
                attn = layer_type
            elif layer_type in ("ln1", "ln2", "ln3"):
                ln = layer_type
            elif layer_type in ("1", "2", "3"):
                ln = f"ln{layer_type}"
            elif layer_type == "ln_cross":
                raise ValueError(
                    "layer_type 'ln_cross' is now 'ln2' (TransformerLens's name for a decoder block's "
                    "cross-attention norm); the decoder's MLP norm is 'ln3'"
                )
            else:
                raise ValueError(f"layer_type must be 'attn', 'cross_attn', 'ln1', 'ln2' or 'ln3', got {layer_type!r}")
        return prefix + template.format(i=layer, attn=attn, ln=ln)
    return prefix + template


#: What ``names_filter`` / ``fwd_hooks`` names accept: a hook name or glob, a list of those, a predicate, or
#: None (every hook point but the opt-in ones).
NameFilter = Union[str, Sequence[str], Callable[[str], bool], None]


#: Hook points that ``names_filter=None`` ("cache everything") leaves out, because hooking them makes
#: the model compute something extra: ``hook_result`` (every head's output) is ``n_heads`` times the
#: size of the residual stream, as are the per-head attention inputs (``hook_q_input``...,
#: TransformerLens's ``use_split_qkv_input``); ``hook_mlp_in`` copies the MLP input. Name them (a name, a
#: list or a callable filter) to cache them.
OPT_IN_HOOKS: tuple[str, ...] = (
    "hook_result",
    "hook_q_input",
    "hook_k_input",
    "hook_v_input",
    "hook_cross_q_input",
    "hook_cross_k_input",
    "hook_cross_v_input",
    "hook_mlp_in",
)


def _is_glob(name: str) -> bool:
    return any(ch in name for ch in "*?[")


def _name_matcher(names_filter: NameFilter) -> Callable[[str], bool]:
    """A predicate on hook names: None (all but :data:`OPT_IN_HOOKS`), a name or glob, a list of those, a callable."""
    if names_filter is None:
        return lambda name: not name.endswith(OPT_IN_HOOKS)
    if isinstance(names_filter, str):
        names_filter = [names_filter]
    elif callable(names_filter):
        return names_filter
    if isinstance(names_filter, Sequence) and all(isinstance(n, str) for n in names_filter):
        exact = {n for n in names_filter if not _is_glob(n)}
        globs = [n for n in names_filter if _is_glob(n)]
        if not globs:
            return lambda name: name in exact
        return lambda name: name in exact or any(fnmatch.fnmatchcase(name, g) for g in globs)
    raise TypeError(
        "names_filter must be None, a hook name or glob, a list of those or a callable, "
        f"got {type(names_filter).__name__}"
    )
