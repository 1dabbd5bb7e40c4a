"""Input plumbing of :class:`~encoderlens.models.encoder_decoder.HookedEncoderDecoder`: encoder text or ids,
decoder inputs (teacher forcing from targets, or ids as given), tokens <-> strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from encoderlens.components.embed import Embed
from encoderlens.components.stack import Stack
from encoderlens.config import EncoderDecoderConfig
from encoderlens.io.text import TextBatch, as_token_tensor, check_mask, is_text, is_tokenizer_output, text_batch
from encoderlens.models.base import HookedModel


class EncoderDecoderInputs(HookedModel):
    """Input handling shared by the encoder-decoder's forward, generation and the model contract."""

    cfg: EncoderDecoderConfig
    embed: Embed
    encoder: Stack
    decoder: Stack | None

    def _decoder(self) -> Stack:
        if self.decoder is None:
            raise ValueError(
                f"this {self.cfg.architecture} checkpoint is encoder-only (no decoder weights): "
                "use model(input) or model.encode(input) for the encoder output"
            )
        return self.decoder

    # ------------------------------------------------------------------ inputs
    def tokenize(self, input: Any, one_zero_attention_mask: Any = None) -> TextBatch:
        """Encoder input: strings (padded right, truncated to the position table with a warning),
        token ids ``(pos,)`` / ``(batch, pos)`` with an optional mask, a tokenizer's output
        (``BatchEncoding`` / dict with ``input_ids``) or a :class:`TextBatch`
        (decided by :func:`encoderlens.io.text.text_batch`)."""
        return self._batch(input, one_zero_attention_mask, self.encoder, "input", "one_zero_attention_mask")

    def _batch(self, input: Any, mask: Any, stack: Stack, what: str, mask_name: str) -> TextBatch:
        batch = text_batch(
            input,
            mask,
            tokenizer=self.tokenizer,
            d_vocab=stack.d_vocab,
            max_positions=stack.max_positions,
            pairs=False,
            what=what,
            mask_name=mask_name,
            warn_unmasked_padding=what == "input",
        )
        device = self.embed.W_E.device
        return TextBatch(batch.tokens.to(device), batch.attention_mask.to(device), None)

    def decoder_input_from_targets(self, targets: Any, attention_mask: Any = None) -> TextBatch:
        """Teacher-forcing decoder input for target text or target token ids.

        Targets are tokenized with special tokens (T5 appends ``</s>``; BART wraps in ``<s> ... </s>``),
        then shifted right: ``[decoder_start] + targets[:-1]`` (mBART, ``decoder_shift="wrap_last_token"``:
        the last real target token, the language id, moves to the front instead). Position ``i`` of the
        logits then predicts target token ``i``. ``-100`` in target ids (ignored labels) becomes padding.

        Args:
            targets: A string, a list of strings, or target token ids ``(pos,)`` / ``(batch, pos)``.
            attention_mask: With token ids: 1 = real target token.

        Returns:
            A :class:`TextBatch` to pass as ``decoder_input`` (it carries the shifted mask).

        Example:
            >>> dec = model.decoder_input_from_targets(["Das Haus.", "Hallo"])
            >>> logits = model(["The house.", "Hello"], decoder_input=dec)
        """
        self._decoder()
        pad = self.cfg.pad_token_id
        if isinstance(targets, Tensor) or not (
            is_text(targets, pairs=False) or isinstance(targets, TextBatch) or is_tokenizer_output(targets)
        ):
            tokens = as_token_tensor(targets).clone()
            ignored = tokens == -100
            if bool(ignored.any()):
                if pad is None:
                    raise ValueError("targets contain -100 (ignored labels) but the model has no pad_token_id")
                tokens[ignored] = pad
            if attention_mask is None:
                attention_mask = (~ignored).long()
            targets = TextBatch(tokens, check_mask(attention_mask, tokens.shape, "attention_mask"), None)
        elif attention_mask is not None:
            raise ValueError("attention_mask is built from text automatically; pass it with token ids only")
        batch = self._batch(targets, None, self._decoder(), "targets", "attention_mask")
        tokens, mask = batch.tokens, batch.attention_mask
        shifted = torch.empty_like(tokens)
        shifted[:, 1:] = tokens[:, :-1]
        if self.cfg.decoder_shift == "wrap_last_token":
            last = mask.sum(dim=1) - 1
            shifted[:, 0] = tokens.gather(1, last[:, None]).squeeze(1)
        else:
            start = self.cfg.decoder_start_token_id
            if start is None:
                raise ValueError(
                    "this checkpoint's config has no decoder_start_token_id; build decoder inputs yourself "
                    "(token ids starting with the start token)"
                )
            shifted[:, 0] = start
        # position i predicts target i: the real positions are exactly the real targets' (a shorter row's
        # last real target, shifted to the first padded position, predicts padding and is not real)
        return TextBatch(shifted, mask.clone(), None)

    def _decoder_batch(self, decoder_input: Any, decoder_attention_mask: Any) -> TextBatch:
        stack = self._decoder()
        if decoder_input is None:
            raise ValueError(
                "this forward needs a decoder input and got none (with token ids encoderlens never builds one; "
                "text input alone runs the start token). "
                "For target text use decoder_input=model.decoder_input_from_targets(text) "
                "(start token + shift right); for free generation use model.generate(input); "
                "for the encoder alone use return_type='encoder_output'"
            )
        if is_text(decoder_input, pairs=False):
            if decoder_attention_mask is not None:
                raise ValueError("decoder_attention_mask is built from text automatically; pass it with token ids")
            return self.decoder_input_from_targets(decoder_input)
        return self._batch(decoder_input, decoder_attention_mask, stack, "decoder_input", "decoder_attention_mask")

    def to_tokens(
        self, input: str | Sequence[str], move_to_device: bool = True, truncate: bool = True
    ) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
        """Token ids of encoder text and their attention mask (padded batch), as TransformerLens returns them.

        Args:
            input: A string or a list of strings.
            move_to_device: Put them on the model's device (False: on the CPU).
            truncate: Must be True: text longer than a learned position table is truncated with a
                warning (T5 has no limit).

        Returns:
            ``(tokens, attention_mask)``, both ``(batch, pos)``.
        """
        if not truncate and self.encoder.max_positions is not None:
            raise ValueError(
                "to_tokens(truncate=False) is not supported: text longer than the position table "
                f"({self.encoder.max_positions}) is always truncated, with a warning"
            )
        batch = self.tokenize(input)
        if not move_to_device:
            return batch.tokens.cpu(), batch.attention_mask.cpu()
        return batch.tokens, batch.attention_mask

    def start_decoder_input(self, batch_size: int) -> TextBatch:
        """One decoder start token per item: what a forward on text uses when ``decoder_input`` is None.

        TransformerLens's meaning (``model(text)`` starts the decoder with T5's start token, the pad id);
        the logits are then the first target position's.
        """
        start = self.cfg.decoder_start_token_id
        if start is None:
            raise ValueError(
                f"this {self.cfg.architecture} checkpoint's config has no decoder_start_token_id; pass "
                "decoder_input= (e.g. the target-language token id for mBART)"
            )
        tokens = torch.full((batch_size, 1), int(start), dtype=torch.long, device=self.embed.W_E.device)
        return TextBatch(tokens, torch.ones_like(tokens), None)

    def to_string(self, tokens: Tensor | Sequence[int]) -> str | list[str]:
        """Decode ids to text, skipping special tokens (one string for 1-D ids, a list for a batch)."""
        if self.tokenizer is None:
            raise ValueError("to_string needs a tokenizer; this model was loaded without one")
        single = (isinstance(tokens, Tensor) and tokens.ndim == 1) or (
            not isinstance(tokens, Tensor) and len(tokens) > 0 and isinstance(tokens[0], int)
        )
        t = as_token_tensor(tokens)
        out = [self.tokenizer.decode(row.tolist(), skip_special_tokens=True) for row in t]
        return out[0] if single else out

    def to_str_tokens(self, input: Any) -> list[str] | list[list[str]]:
        """Encoder tokens as strings (a list for one text, a list of lists for a batch; padding dropped)."""
        if self.tokenizer is None:
            raise ValueError("to_str_tokens needs a tokenizer; this model was loaded without one")
        single = isinstance(input, str) or (isinstance(input, Tensor) and input.ndim == 1)
        batch = self.tokenize(input)
        rows = [
            self.tokenizer.convert_ids_to_tokens(t[m.bool()].tolist())
            for t, m in zip(batch.tokens, batch.attention_mask)
        ]
        return rows[0] if single else rows
