"""The helpers of TransformerLens's ``transformer_lens.utils`` that mean the same here.

``from encoderlens import utils`` then ``utils.get_act_name("pattern", 0)`` or ``utils.transpose(W)``, as
TransformerLens code writes them. TransformerLens's tokenisation, loss and notebook helpers are not here:
models tokenise themselves (``model.to_tokens``) and return what TransformerLens's ``return_type`` asks for.

Example:
    >>> utils.transpose(torch.zeros(4, 2, 3)).shape
    torch.Size([4, 3, 2])
"""

from __future__ import annotations

from jaxtyping import Shaped
from torch import Tensor

from encoderlens.names import get_act_name

__all__ = ["get_act_name", "transpose"]


def transpose(tensor: Shaped[Tensor, "*leading a b"]) -> Shaped[Tensor, "*leading b a"]:
    """Swap the last two dimensions, whatever the leading ones (TransformerLens's ``utils.transpose``).

    Example:
        >>> transpose(torch.arange(6).view(2, 3)).tolist()
        [[0, 3], [1, 4], [2, 5]]
    """
    return tensor.transpose(-2, -1)
