"""Hook names: which dimension of a hook's activation is what.

(Minimal version; the full hook-name table lands with the ``core`` branch. Same semantics.)
"""

from __future__ import annotations


def hook_axes(hook_name: str) -> dict[str, int]:
    """Which dimension of a hook's activation is what (batch is always 0).

    Returns:
        A dict with ``"pos"`` (query position), and where they exist ``"head"`` and ``"key_pos"``.

    Example:
        >>> hook_axes("blocks.0.attn.hook_pattern")
        {'head': 1, 'pos': 2, 'key_pos': 3}
        >>> hook_axes("blocks.0.attn.hook_z")
        {'pos': 1, 'head': 2}
    """
    leaf = hook_name.rsplit(".", 1)[-1]
    if leaf in ("hook_pattern", "hook_attn_scores"):
        return {"head": 1, "pos": 2, "key_pos": 3}
    if leaf in ("hook_q", "hook_k", "hook_v", "hook_z", "hook_result"):
        return {"pos": 1, "head": 2}
    return {"pos": 1}
