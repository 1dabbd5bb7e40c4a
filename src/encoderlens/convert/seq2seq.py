"""Pieces shared by the encoder-decoder converters (T5 / mT5, BART / mBART).

Both keep one token embedding (``shared.weight``) that the encoder, the decoder and a tied LM head
use; HF checkpoints may carry copies of it, which are checked, not silently dropped.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from encoderlens.convert.common import linear_weight
from encoderlens.convert.registry import WeightReader


def arch_name(hf: Any) -> str:
    """The checkpoint's first HF architecture, else its model type (for messages and the config)."""
    names = getattr(hf, "architectures", None) or []
    return str(names[0]) if names else str(hf.model_type)


def eos_ids(hf: Any) -> tuple[int, ...]:
    """``eos_token_id`` of an HF config (an int, a list or None) as a tuple."""
    eos = getattr(hf, "eos_token_id", None)
    if eos is None:
        return ()
    return (int(eos),) if isinstance(eos, int) else tuple(int(e) for e in eos)


def take_tied(r: WeightReader, key: str, shared: Tensor, arch: str) -> None:
    """Consume a copy of the shared embedding (``encoder.embed_tokens.weight``...); raise if it differs."""
    t = r.take_optional(key)
    if t is not None and not t.equal(shared):
        raise ValueError(
            f"{arch} checkpoint has {key} different from shared.weight; untied input embeddings are not supported "
            "(encoderlens shares one token embedding between encoder and decoder, as the HF model does)"
        )


def take_lm_head(r: WeightReader, out: dict[str, Tensor], shared: Tensor) -> bool:
    """Take ``lm_head.weight``: tied (absent or equal to ``shared``) or its own matrix. Returns ``tied``."""
    lm = r.take_optional("lm_head.weight")
    tied = lm is None or lm.equal(shared)
    if lm is not None and not tied:
        out["lm_head.W_U_untied"] = linear_weight(lm)
    return tied
