"""Text inputs: strings, sentence pairs, token tensors or tokenizer output -> tokens, attention mask, token types.

:func:`text_batch` is the one place that decides what an input is, for every text entry point
(``HookedEncoder`` inputs, ``HookedEncoderDecoder`` source and decoder inputs):

- a string, a list of strings, or (where pairs are allowed) ``(text_a, text_b)`` pairs: tokenised;
- a tokenizer's output (``BatchEncoding`` or a dict with ``input_ids`` and optionally
  ``attention_mask`` / ``token_type_ids``): its ids, mask and segment ids are used;
- a :class:`TextBatch`: used as it is (validated);
- token ids (a tensor or nested lists of ints), with an optional 0/1 mask.

Length policy: strings longer than the model's position table are truncated by the tokenizer with a
warning; token tensors longer than it raise a ``ValueError`` (we never cut tensors you built).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
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
        kinds = {type(t).__name__ for t in tokens}
        if "str" in kinds and len(kinds) > 1:
            raise TypeError(
                f"input mixes strings with other items ({sorted(kinds)}); pass a list of strings, a list of "
                "(text_a, text_b) pairs, or token ids, not a mixture"
            )
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


#: Tokenizer-output keys that carry no model input (dropped); any other unknown key is refused.
_TOKENIZER_INFO_KEYS = frozenset({"special_tokens_mask", "offset_mapping", "length", "overflow_to_sample_mapping"})
_TOKENIZER_INPUT_KEYS = frozenset({"input_ids", "attention_mask", "token_type_ids"})


def is_text(x: Any, pairs: bool = True) -> bool:
    """Whether ``x`` is text: a string, a list/tuple of strings, or (with ``pairs``) sentence pairs."""
    if isinstance(x, str) or (pairs and _is_pair(x)):
        return True
    if not isinstance(x, (list, tuple)) or not x:
        return False
    return all(isinstance(t, str) for t in x) or (pairs and all(_is_pair(t) for t in x))


def is_tokenizer_output(x: Any) -> bool:
    """Whether ``x`` is a tokenizer's output: a ``BatchEncoding`` or a mapping with ``input_ids``."""
    return isinstance(x, Mapping) and "input_ids" in x


def _segment_ids(tt: Any, n_token_types: int) -> Any:
    # segment ids a tokenizer made are ignored by models without segment embeddings (as in HF:
    # DeBERTa-v3's tokenizer returns them for pairs, its type_vocab_size is 0)
    return tt if n_token_types > 0 else None


def warn_if_padded(tokens: Tensor, pad_token_id: int | None, mask_name: str = "one_zero_attention_mask") -> None:
    """Warn, as HF does, when token ids without a mask start or end with the padding token.

    Such a batch runs unmasked: padded items then differ from the same item run alone.
    """
    if pad_token_id is None or tokens.ndim != 2 or tokens.shape[1] == 0:
        return
    if bool((tokens[:, [-1, 0]] == pad_token_id).any()):
        warnings.warn(
            f"the token ids contain the padding token ({pad_token_id}) but no {mask_name} was given, so padding "
            f"is attended to; pass {mask_name} (1 = real token) or the tokenizer's output",
            UserWarning,
            stacklevel=4,
        )


def text_batch(
    input: Any,
    attention_mask: Any = None,
    token_type_ids: Any = None,
    *,
    tokenizer: Any,
    d_vocab: int,
    max_positions: int | None,
    n_token_types: int = 0,
    pairs: bool = True,
    max_length: int | None = None,
    text_transform: Callable[[Any], Any] | None = None,
    what: str = "input",
    mask_name: str = "one_zero_attention_mask",
    warn_unmasked_padding: bool = True,
) -> TextBatch:
    """Turn any accepted text input into a validated :class:`TextBatch` (on the CPU or the input's device).

    Args:
        input: Text, sentence pairs (if ``pairs``), tokenizer output, a :class:`TextBatch` or token ids.
        attention_mask: 0/1 mask for token ids (text and tokenizer output carry their own).
        token_type_ids: Segment ids; override a tokenizer's. Validated against ``n_token_types``.
        tokenizer: HF tokenizer for text (None: text is refused with how to fix).
        d_vocab: Vocabulary size the ids must fit.
        max_positions: Position table size (token ids longer than it are refused), or None.
        n_token_types: Segment-embedding rows of the model (0: none; a tokenizer's segment ids are
            then ignored, as HF does, and explicit ones refused).
        pairs: Whether a ``(str, str)`` tuple is a sentence pair (text encoders) or a batch of two.
        max_length: Texts are truncated to this many tokens, with a warning (default ``max_positions``).
        text_transform: Applied to text before tokenisation (lower-casing).
        what: The argument's name, for messages.
        mask_name: The mask argument's name, for messages.
        warn_unmasked_padding: Warn (as HF) when token ids without a mask start or end with the padding
            token (off for decoder inputs, which start with it).

    Raises:
        TypeError: An input of no accepted kind. ValueError: A mask passed with text or tokenizer output,
            ids outside the vocabulary, too long, or an unknown tokenizer-output key.
    """
    tt_from_tokenizer: Any = None
    if input is None:
        raise TypeError(f"{what} is None; pass a string, a list of strings, tokenizer output or token ids")
    carries_mask = isinstance(input, TextBatch) or is_tokenizer_output(input) or is_text(input, pairs)
    if carries_mask and attention_mask is not None:
        raise ValueError(
            f"{mask_name} is built from text automatically (and tokenizer output or a TextBatch carries its "
            f"own); pass {mask_name} with token ids only"
        )
    if isinstance(input, TextBatch):
        tokens = as_token_tensor(input.tokens)
        mask = check_mask(input.attention_mask, tokens.shape, mask_name)
        tt_from_tokenizer = input.token_type_ids
    elif is_tokenizer_output(input):
        unknown = sorted(set(input) - _TOKENIZER_INPUT_KEYS - _TOKENIZER_INFO_KEYS)
        if unknown:
            raise ValueError(
                f"{what} (tokenizer output) has keys {unknown} that this model does not take; "
                f"pass only {sorted(_TOKENIZER_INPUT_KEYS)}"
            )
        tokens = as_token_tensor(input["input_ids"])
        m = input.get("attention_mask")
        mask = torch.ones_like(tokens) if m is None else check_mask(m, tokens.shape, f"{what}['attention_mask']")
        tt_from_tokenizer = _segment_ids(input.get("token_type_ids"), n_token_types)
    elif is_text(input, pairs):
        text = text_transform(input) if text_transform is not None else input
        if not pairs and not isinstance(text, str):
            text = list(text)  # a tuple of strings is a batch where there are no sentence pairs
        limit = max_length if max_length is not None else max_positions
        batch = tokenize(tokenizer, text, max_length=limit)
        tokens, mask = batch.tokens, batch.attention_mask
        tt_from_tokenizer = _segment_ids(batch.token_type_ids, n_token_types)
    else:
        tokens = as_token_tensor(input)
        if attention_mask is None and warn_unmasked_padding:
            warn_if_padded(tokens, getattr(tokenizer, "pad_token_id", None), mask_name)
        mask = (
            torch.ones_like(tokens) if attention_mask is None else check_mask(attention_mask, tokens.shape, mask_name)
        )
    check_tokens(tokens, d_vocab, max_positions)
    tt = token_type_ids if token_type_ids is not None else tt_from_tokenizer
    if tt is not None:
        tt = check_token_types(tt, tokens.shape, n_token_types)
    return TextBatch(tokens, mask, tt)
