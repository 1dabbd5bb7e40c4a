"""One meaning for ``pos_slice`` / ``batch_slice`` arguments, as TransformerLens's ``Slice``.

Accepted everywhere a slice argument is: None (everything), an int (that index; the axis is
dropped), a Python ``slice``, a tuple (``slice(*tuple)``), a list / 1-D tensor of indices, or any
object with ``.apply(tensor, dim=...)`` (TransformerLens's ``Slice``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def apply_slice(t: Tensor, s: Any, dim: int) -> Tensor:
    """Apply a slice argument ``s`` to axis ``dim`` of ``t``.

    Example:
        >>> apply_slice(torch.arange(6).view(2, 3), (1, None), dim=1).tolist()
        [[1, 2], [4, 5]]
    """
    if s is None:
        return t
    if hasattr(s, "apply") and not isinstance(s, (Tensor, list, tuple)):
        return s.apply(t, dim=dim)
    if isinstance(s, bool) or not isinstance(s, (int, slice, tuple, list, Tensor)):
        raise TypeError(f"a slice argument is None, an int, a slice, a tuple or a list of indices; got {s!r}")
    if isinstance(s, int):
        return t.select(dim, s)
    if isinstance(s, tuple):
        s = slice(*s)
    if isinstance(s, slice):
        idx: list[Any] = [slice(None)] * t.ndim
        idx[dim] = s
        return t[tuple(idx)]
    index = torch.as_tensor(s, device=t.device, dtype=torch.long)
    if index.ndim == 0:
        return t.select(dim, int(index))
    return t.index_select(dim, index)


def drops_axis(s: Any) -> bool:
    """Whether the slice argument removes its axis (an integer index)."""
    if hasattr(s, "mode"):
        return bool(s.mode == "int")
    return isinstance(s, int) and not isinstance(s, bool) or (isinstance(s, Tensor) and s.ndim == 0)
