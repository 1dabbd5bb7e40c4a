"""Text inputs: strings, sentence pairs or token tensors -> tokens, attention mask, token types.

Length policy: strings longer than the model's position table are truncated by the tokenizer with a
warning; token tensors longer than it raise a ``ValueError`` (we never cut tensors you built).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
from jaxtyping import Int
from torch import Tensor

TextInput = Union[str, tuple[str, str], Sequence[str], Sequence[tuple[str, str]], Tensor, Sequence[int]]


@dataclass
class TextBatch:
    """A tokenised batch.

    Attributes:
        tokens: Token ids.
        attention_mask: 1 for real tokens, 0 for padding.
        token_type_ids: Segment ids (sentence pairs), or None.
    """

    tokens: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    token_type_ids: Int[Tensor, "batch pos"] | None


def _is_pair(x: Any) -> bool:
    return isinstance(x, tuple) and len(x) == 2 and all(isinstance(s, str) for s in x)


def tokenize(
    tokenizer: Any,
    text: str | tuple[str, str] | Sequence[str] | Sequence[tuple[str, str]],
    max_length: int | None = None,
    add_special_tokens: bool = True,
) -> TextBatch:
    """Tokenise strings or sentence pairs with padding (right) and, if needed, truncation with a warning."""
    if tokenizer is None:
        raise ValueError(
            "got text but this model has no tokenizer; pass token ids (a LongTensor of shape (batch, pos)) "
            "or load a checkpoint folder that contains tokenizer files"
        )
    if isinstance(text, str) or _is_pair(text):
        items: list[Any] = [text]
    else:
        items = list(text)
    if not items:
        raise ValueError("got an empty list of texts; pass at least one string")
    pairs = [_is_pair(t) for t in items]
    if any(pairs) and not all(pairs):
        raise ValueError("mixed single texts and (text_a, text_b) pairs in one batch; pass one kind per call")
    if not all(pairs) and not all(isinstance(t, str) for t in items):
        bad = next(type(t).__name__ for t in items if not isinstance(t, str))
        raise TypeError(f"expected strings or (str, str) pairs, got an item of type {bad}")
    first = [t[0] for t in items] if all(pairs) else items
    second = [t[1] for t in items] if all(pairs) else None
    kwargs: dict[str, Any] = {
        "padding": True,
        "return_tensors": "pt",
        "add_special_tokens": add_special_tokens,
    }
    if max_length is not None:
        full = tokenizer(first, second, add_special_tokens=add_special_tokens)["input_ids"]
        longest = max(len(ids) for ids in full)
        if longest > max_length:
            warnings.warn(
                f"input of {longest} tokens exceeds the model's {max_length} positions; truncating to {max_length}",
                stacklevel=3,
            )
            kwargs.update(truncation=True, max_length=max_length)
    enc = tokenizer(first, second, **kwargs)
    tt = enc.get("token_type_ids")
    return TextBatch(enc["input_ids"], enc["attention_mask"], tt if second is not None or tt is not None else None)


def as_token_tensor(tokens: Tensor | Sequence[int] | Sequence[Sequence[int]]) -> Int[Tensor, "batch pos"]:
    """Validate token ids and give them a batch dimension."""
    if not isinstance(tokens, Tensor):
        if len(tokens) == 0:
            raise ValueError("got an empty input; pass at least one text or a non-empty sequence of token ids")
        try:
            tokens = torch.tensor(tokens)
        except (TypeError, ValueError) as e:
            raise TypeError(
                "expected token ids as a LongTensor or a (nested) list of ints of equal lengths; "
                f"could not build a tensor ({e})"
            ) from None
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool or tokens.is_complex():
        raise TypeError(
            f"token ids must be an integer tensor, got dtype {tokens.dtype}; use tokens.long() "
            "(or pass strings to tokenize them)"
        )
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2:
        raise ValueError(f"token ids must have shape (pos,) or (batch, pos), got {tuple(tokens.shape)}")
    if tokens.shape[1] == 0:
        raise ValueError("got token ids with zero positions; pass at least one token")
    return tokens.long()


def check_tokens(tokens: Tensor, d_vocab: int, max_positions: int | None) -> None:
    """Raise on ids outside ``[0, d_vocab)`` or sequences longer than the position table."""
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= d_vocab:
        raise ValueError(
            f"token ids must lie in [0, {d_vocab}) for this model's vocabulary, got min {lo}, max {hi}; "
            "were these tokens made by another tokenizer?"
        )
    if max_positions is not None and tokens.shape[1] > max_positions:
        raise ValueError(
            f"sequence of {tokens.shape[1]} tokens exceeds the model's {max_positions} positions; "
            f"pass tokens[:, :{max_positions}] (strings are truncated automatically, with a warning)"
        )


def check_mask(mask: Any, shape: torch.Size, what: str = "one_zero_attention_mask") -> Tensor:
    """Validate a 0/1 (or bool) mask of the token shape; returns it as a long tensor."""
    if not isinstance(mask, Tensor):
        try:
            mask = torch.tensor(mask)
        except (TypeError, ValueError):
            raise TypeError(f"{what} must be a tensor of 0/1 values of shape {tuple(shape)}") from None
    if mask.ndim == 1 and len(shape) == 2 and shape[0] == 1:
        mask = mask[None]
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(
            f"{what} must have the tokens' shape {tuple(shape)}, got {tuple(mask.shape)}; "
            "build it with the same padding as the tokens (1 = real token, 0 = padding)"
        )
    if mask.dtype.is_floating_point:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"{what} must hold only 0 and 1 (1 = attend), got other values")
    elif mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{what} must hold only 0 and 1 (1 = attend), got other values")
    if not bool(mask.bool().any(dim=-1).all()):
        raise ValueError(f"{what} has a row with no attended position; every sequence needs at least one token")
    return mask.long()


def check_token_types(token_type_ids: Any, shape: torch.Size, n_token_types: int) -> Tensor:
    """Validate segment ids."""
    if n_token_types == 0:
        raise ValueError("this model has no token-type (segment) embeddings; do not pass token_type_ids")
    tt = as_token_tensor(token_type_ids) if not isinstance(token_type_ids, Tensor) or token_type_ids.ndim else None
    if tt is None:
        raise ValueError(f"token_type_ids must have shape {tuple(shape)}")
    if tuple(tt.shape) != tuple(shape):
        raise ValueError(f"token_type_ids must have the tokens' shape {tuple(shape)}, got {tuple(tt.shape)}")
    if int(tt.min()) < 0 or int(tt.max()) >= n_token_types:
        raise ValueError(f"token_type_ids must lie in [0, {n_token_types}), got max {int(tt.max())}")
    return tt
