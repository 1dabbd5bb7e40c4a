"""Prepared inputs for the analysis toolkit: thin, family-agnostic wrappers over the model contract.

Every family turns its inputs into a :class:`~encoderlens.models.contract.Prepared` batch itself
(``model.prepare_input``) and runs it (``model.run_prepared`` / ``model.run_prepared_with_cache``); see
:class:`~encoderlens.models.base.HookedModel` and ``docs/architecture.md``. This module only keeps the
functional spellings (``prepare(model, input)``) and re-exports the contract's types.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from encoderlens.hooks import NameFilter
from encoderlens.models.base import HookedModel
from encoderlens.models.contract import Prepared, Readout, StreamName

__all__ = ["Prepared", "Readout", "StreamName", "prepare", "run", "run_with_cache"]


def prepare(model: HookedModel, input: Any, **options: Any) -> Prepared:
    """``model.prepare_input(input, **options)``: user input -> :class:`Prepared` (one passes through).

    Options are the family's: ``one_zero_attention_mask``, ``token_type_ids`` (text encoders, with token
    ids); ``decoder_input``, ``decoder_attention_mask`` (encoder-decoders); ``sampling_rate`` and other
    audio options (speech encoders).

    Example:
        >>> p = prepare(model, ["The cat sat.", "A dog."])
        >>> p.mask(None).shape, p.position_labels(None, item=1)
    """
    if not isinstance(model, HookedModel):
        raise TypeError(
            f"the analysis toolkit works on encoderlens models; got {type(model).__name__}. "
            "Load one with encoderlens.from_pretrained(...)"
        )
    return model.prepare_input(input, **options)


def run(
    model: HookedModel,
    prepared: Prepared,
    return_type: str | None = None,
    fwd_hooks: Sequence[tuple[Any, Callable[..., Any]]] = (),
    bwd_hooks: Sequence[tuple[Any, Callable[..., Any]]] = (),
) -> Any:
    """``model.run_prepared``: run a prepared input with temporary hooks."""
    return model.run_prepared(prepared, return_type, fwd_hooks=fwd_hooks, bwd_hooks=bwd_hooks)


def run_with_cache(
    model: HookedModel,
    prepared: Prepared,
    names_filter: NameFilter = None,
    return_type: str | None = None,
    **cache_options: Any,
) -> tuple[Any, Any]:
    """``model.run_prepared_with_cache``: ``(output, ActivationCache)`` of a prepared input."""
    return model.run_prepared_with_cache(prepared, names_filter, return_type, **cache_options)
