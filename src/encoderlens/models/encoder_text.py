"""Text in and out of a :class:`~encoderlens.models.encoder.HookedEncoder`: tokenising (through the one
input normaliser, :func:`encoderlens.io.text.text_batch`) and TransformerLens's ``to_tokens`` /
``to_str_tokens`` / ``to_string``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from encoderlens.config import EncoderConfig
from encoderlens.io.text import TextBatch, as_token_tensor, text_batch


class EncoderTextIO:
    """Mixin of :class:`~encoderlens.models.encoder.HookedEncoder`: its text inputs and outputs."""

    cfg: EncoderConfig
    tokenizer: Any
    embed: Any

    @property
    def max_positions(self) -> int | None:
        """Longest input the position table allows (None: no limit)."""
        return self.embed.max_positions

    def _text_max_length(self) -> int | None:
        """Texts are truncated here: the position table, or a sentence-transformers ``max_seq_length``."""
        limits = [self.max_positions]
        if self.cfg.sentence_pooling is not None:
            limits.append(self.cfg.sentence_pooling.max_seq_length)
        known = [n for n in limits if n is not None]
        return min(known) if known else None

    def _prepare_text(self, input: Any) -> Any:
        sp = self.cfg.sentence_pooling
        if sp is None or not sp.do_lower_case:
            return input
        if isinstance(input, str):
            return input.lower()
        if isinstance(input, tuple):
            return tuple(t.lower() for t in input)
        return [self._prepare_text(t) for t in input]

    # ------------------------------------------------------------------ inputs
    def tokenize(
        self,
        input: Any,
        one_zero_attention_mask: Any = None,
        token_type_ids: Any = None,
    ) -> TextBatch:
        """Turn strings, sentence pairs, tokenizer output or token ids into a validated :class:`TextBatch`.

        Strings are padded (right) and truncated to the position table with a warning. Pairs
        ``(text_a, text_b)`` get segment ids. A tokenizer's output (``BatchEncoding`` or a dict with
        ``input_ids``) gives ids, mask and segment ids. Token tensors are checked, never modified.
        Decided by :func:`encoderlens.io.text.text_batch`.
        """
        batch = text_batch(
            input,
            one_zero_attention_mask,
            token_type_ids,
            tokenizer=self.tokenizer,
            d_vocab=self.cfg.d_vocab,
            max_positions=self.max_positions,
            n_token_types=self.cfg.embed.n_token_types,
            max_length=self._text_max_length(),
            text_transform=self._prepare_text,
        )
        device = self.embed.W_E.device
        tt = batch.token_type_ids.to(device) if batch.token_type_ids is not None else None
        return TextBatch(batch.tokens.to(device), batch.attention_mask.to(device), tt)

    def to_tokens(
        self,
        input: str | Sequence[str] | tuple[str, str] | Sequence[tuple[str, str]],
        move_to_device: bool = True,
        truncate: bool = True,
    ) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
        """``(tokens, token_type_ids, attention_mask)`` of text, as TransformerLens returns them.

        Args:
            input: A string, a list of strings, a ``(text_a, text_b)`` pair or a list of pairs.
            move_to_device: Put them on the model's device (else on the CPU).
            truncate: Must be True: texts are always truncated to the position table (with a warning).

        Returns:
            Padded token ids, segment ids (zeros for a model without segment embeddings) and the 0/1 mask.
        """
        if not truncate:
            raise ValueError(
                "to_tokens(truncate=False) is not supported: texts longer than the position table cannot run; "
                "they are truncated with a warning"
            )
        batch = self.tokenize(input)
        tt = batch.token_type_ids if batch.token_type_ids is not None else torch.zeros_like(batch.tokens)
        out = (batch.tokens, tt, batch.attention_mask)
        return out if move_to_device else (out[0].cpu(), out[1].cpu(), out[2].cpu())

    def to_str_tokens(self, input: Any) -> list[str] | list[list[str]]:
        """Tokens as strings: a list for one text or 1-D ids, a list of lists for a batch (padding dropped)."""
        if self.tokenizer is None:
            raise ValueError("to_str_tokens needs a tokenizer; this model was loaded without one")
        single = isinstance(input, str) or (isinstance(input, Tensor) and input.ndim == 1)
        single = single or (isinstance(input, tuple) and len(input) == 2 and isinstance(input[0], str))
        if isinstance(input, list) and input and isinstance(input[0], int):
            single = True
        batch = self.tokenize(input)
        rows = [
            self.tokenizer.convert_ids_to_tokens(t[m.bool()].tolist())
            for t, m in zip(batch.tokens, batch.attention_mask)
        ]
        return rows[0] if single else rows

    def to_string(self, tokens: Tensor | Sequence[int]) -> str | list[str]:
        """Decode ids to text (one string for 1-D ids, a list for a batch)."""
        if self.tokenizer is None:
            raise ValueError("to_string needs a tokenizer; this model was loaded without one")
        t = as_token_tensor(tokens)
        out = [self.tokenizer.decode(row.tolist(), skip_special_tokens=True) for row in t]
        one_dim = tokens.ndim == 1 if isinstance(tokens, Tensor) else not isinstance(tokens[0], Sequence)
        return out[0] if one_dim else out
