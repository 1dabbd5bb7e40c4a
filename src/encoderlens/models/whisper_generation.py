"""Whisper's decoding rules (prompt, suppressed tokens) and its greedy KV-cached decoding loop.

HF's Whisper ``generate`` (short form, greedy) does, for the same arguments:

1. Prompt: ``<|startoftranscript|>``, then for multilingual checkpoints the language token and the task
   token (``transcribe`` when only a language is given), then ``<|notimestamps|>``.
2. At every step the logits of ``suppress_tokens`` are set to ``-inf``; at the first generated position
   also those of ``begin_suppress_tokens`` (the end-of-text token and the blank, so the transcript
   cannot start empty).
3. Argmax; a row that produced the end-of-text token gets ``pad_token_id`` afterwards; decoding stops
   when every row has ended or after ``max_new_tokens``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from encoderlens.components.attention import KVCache
from encoderlens.components.heads import LMHead
from encoderlens.components.stack import Stack
from encoderlens.config import WhisperConfig

#: HF's ``TO_LANGUAGE_CODE`` for the common names; codes themselves (``"de"``) are always accepted.
_TASKS = ("transcribe", "translate")


@dataclass(frozen=True)
class WhisperDecoding:
    """The decoding settings of a checkpoint (from its ``generation_config.json``).

    Attributes:
        start_token_id: ``<|startoftranscript|>``.
        eos_token_id: ``<|endoftext|>``.
        pad_token_id: Fed to rows that have ended.
        no_timestamps_token_id: ``<|notimestamps|>``, or None.
        lang_to_id: ``{"<|en|>": id, ...}`` (empty for English-only checkpoints).
        task_to_id: ``{"transcribe": id, "translate": id}`` (empty for English-only checkpoints).
        suppress_tokens: Masked at every step.
        begin_suppress_tokens: Masked at the first generated position.
    """

    start_token_id: int
    eos_token_id: int | None
    pad_token_id: int
    no_timestamps_token_id: int | None = None
    lang_to_id: Mapping[str, int] = field(default_factory=dict)
    task_to_id: Mapping[str, int] = field(default_factory=dict)
    suppress_tokens: tuple[int, ...] = ()
    begin_suppress_tokens: tuple[int, ...] = ()

    @classmethod
    def from_generation_config(cls, gen: Any, cfg: WhisperConfig) -> WhisperDecoding:
        """Read an HF ``GenerationConfig`` (None: only the model config's start / end / pad tokens)."""
        start = getattr(gen, "decoder_start_token_id", None) if gen is not None else None
        start = cfg.decoder_start_token_id if start is None else start
        eos = cfg.eos_token_ids[0] if cfg.eos_token_ids else None
        pad = cfg.pad_token_id if cfg.pad_token_id is not None else (eos if eos is not None else 0)
        if start is None:
            start = eos if eos is not None else 0
        if gen is None:
            return cls(int(start), eos, int(pad))

        def ids(name: str) -> tuple[int, ...]:
            v = getattr(gen, name, None)
            return tuple(int(t) for t in v) if v else ()

        no_ts = getattr(gen, "no_timestamps_token_id", None)
        return cls(
            start_token_id=int(start),
            eos_token_id=eos,
            pad_token_id=int(pad),
            no_timestamps_token_id=None if no_ts is None else int(no_ts),
            lang_to_id={str(k): int(v) for k, v in (getattr(gen, "lang_to_id", None) or {}).items()},
            task_to_id={str(k): int(v) for k, v in (getattr(gen, "task_to_id", None) or {}).items()},
            suppress_tokens=ids("suppress_tokens"),
            begin_suppress_tokens=ids("begin_suppress_tokens"),
        )

    @property
    def is_multilingual(self) -> bool:
        return bool(self.lang_to_id)

    def language_id(self, language: str) -> int:
        """The token of ``language`` (``"de"``, ``"<|de|>"`` or a name HF knows, such as ``"german"``)."""
        lang = language.lower()
        token = lang if lang.startswith("<|") else f"<|{lang}|>"
        if token not in self.lang_to_id:
            from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

            if lang in TO_LANGUAGE_CODE:
                token = f"<|{TO_LANGUAGE_CODE[lang]}|>"
        if token not in self.lang_to_id:
            known = ", ".join(sorted(self.lang_to_id)[:12]) + (" ..." if len(self.lang_to_id) > 12 else "")
            raise ValueError(
                f"language={language!r} ({token}) is not a language token of this checkpoint; its "
                f"generation_config.lang_to_id has {len(self.lang_to_id)} languages: {known}"
            )
        return self.lang_to_id[token]

    def prompt(self, language: str | None, task: str | None) -> list[int]:
        """The forced decoder prompt (see the module docstring)."""
        if task is not None and task not in _TASKS:
            raise ValueError(f"task must be 'transcribe' or 'translate', got {task!r}")
        out = [self.start_token_id]
        if not self.is_multilingual:
            if language is not None or task is not None:
                raise ValueError(
                    "this checkpoint is English-only (its generation config has no lang_to_id / task_to_id): "
                    "drop language= and task="
                )
        else:
            if language is None:
                raise ValueError(
                    "this multilingual checkpoint needs language= (e.g. language='en'); language detection is not "
                    "implemented yet"
                )
            out.append(self.language_id(language))
            out.append(self.task_to_id[task or "transcribe"])
        if self.no_timestamps_token_id is not None:
            out.append(self.no_timestamps_token_id)
        return out


def suppress(logits: Float[Tensor, "batch d_vocab"], tokens: Sequence[int]) -> Float[Tensor, "batch d_vocab"]:
    """Set the logits of ``tokens`` to ``-inf`` (ids beyond the vocabulary are ignored, as in HF)."""
    ids = [t for t in tokens if 0 <= t < logits.shape[-1]]
    if ids:
        logits[:, ids] = float("-inf")
    return logits


def whisper_generate(
    decoder: Stack,
    head: LMHead,
    encoder_out: Float[Tensor, "batch frames d_model"],
    prefix: Int[Tensor, "batch prompt"],
    max_new_tokens: int,
    rules: WhisperDecoding,
) -> Int[Tensor, "batch pos"]:
    """Greedy decoding from ``prefix`` with the KV cache; hooks on ``decoder`` fire every step."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    limit = decoder.max_positions
    if limit is not None and prefix.shape[1] + max_new_tokens > limit:
        raise ValueError(
            f"prompt ({prefix.shape[1]}) + max_new_tokens ({max_new_tokens}) exceeds the decoder's {limit} positions; "
            f"lower max_new_tokens to {limit - prefix.shape[1]}"
        )
    batch = prefix.shape[0]
    enc_mask = torch.ones(encoder_out.shape[:2], dtype=torch.long, device=encoder_out.device)
    kv = [(KVCache(), KVCache(static=True)) for _ in decoder.blocks]
    tokens = prefix
    finished = torch.zeros(batch, dtype=torch.bool, device=prefix.device)
    begin = prefix.shape[1]
    for _ in range(max_new_tokens):
        past = kv[0][0].length
        new = tokens[:, past:]
        out = decoder(new, torch.ones_like(tokens), encoder_out, enc_mask, kv, past)
        logits = head(out[:, -1:])[:, 0].float()
        logits = suppress(logits, rules.suppress_tokens)
        if tokens.shape[1] == begin:
            logits = suppress(logits, rules.begin_suppress_tokens)
        next_tok = logits.argmax(dim=-1)
        if rules.eos_token_id is not None:
            next_tok = torch.where(finished, torch.full_like(next_tok, rules.pad_token_id), next_tok)
            finished = finished | (next_tok == rules.eos_token_id)
        tokens = torch.cat([tokens, next_tok[:, None]], dim=1)
        if bool(finished.all()):
            break
    return tokens
