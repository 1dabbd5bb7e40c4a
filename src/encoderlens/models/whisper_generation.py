"""Whisper's decoding rules (prompt, suppressed tokens) and its greedy KV-cached decoding loop.

HF's Whisper ``generate`` (short form, greedy) does, for the same arguments:

1. Prompt: ``<|startoftranscript|>``, then for multilingual checkpoints the language token and the task
   token (``transcribe`` when only a language is given), then ``<|notimestamps|>``. With neither language
   nor task the checkpoint's ``forced_decoder_ids`` fill the prompt; when the language is still unknown it
   is detected per row: the argmax of the first decoder step's logits over the language tokens.
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
        forced_decoder_ids: ``(position, token | None)`` pairs filling the prompt without language / task.
        max_initial_timestamp_index: Latest first timestamp (in timestamp tokens), or None.
        alignment_heads: ``(layer, head)`` cross-attention heads that align tokens with time.
    """

    start_token_id: int
    eos_token_id: int | None
    pad_token_id: int
    no_timestamps_token_id: int | None = None
    lang_to_id: Mapping[str, int] = field(default_factory=dict)
    task_to_id: Mapping[str, int] = field(default_factory=dict)
    suppress_tokens: tuple[int, ...] = ()
    begin_suppress_tokens: tuple[int, ...] = ()
    forced_decoder_ids: tuple[tuple[int, int | None], ...] = ()
    max_initial_timestamp_index: int | None = None
    alignment_heads: tuple[tuple[int, int], ...] = ()

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
        forced = getattr(gen, "forced_decoder_ids", None) or ()
        return cls(
            start_token_id=int(start),
            eos_token_id=eos,
            pad_token_id=int(pad),
            no_timestamps_token_id=None if no_ts is None else int(no_ts),
            lang_to_id={str(k): int(v) for k, v in (getattr(gen, "lang_to_id", None) or {}).items()},
            task_to_id={str(k): int(v) for k, v in (getattr(gen, "task_to_id", None) or {}).items()},
            suppress_tokens=ids("suppress_tokens"),
            begin_suppress_tokens=ids("begin_suppress_tokens"),
            max_initial_timestamp_index=getattr(gen, "max_initial_timestamp_index", None),
            alignment_heads=tuple((int(la), int(h)) for la, h in (getattr(gen, "alignment_heads", None) or ())),
            forced_decoder_ids=tuple((int(i), None if t is None else int(t)) for i, t in forced),
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

    def _base(self, language: str | None, task: str | None) -> list[int | None]:
        """The prompt up to the language slot: the start token, plus ``forced_decoder_ids`` (as HF, only
        when neither language nor task is given)."""
        out: list[int | None] = [self.start_token_id]
        if language is None and task is None:
            for i, (pos, tok) in enumerate(self.forced_decoder_ids):
                if pos != i + 1:
                    raise ValueError(
                        f"generation_config.forced_decoder_ids {list(self.forced_decoder_ids)} do not follow Whisper's "
                        "prompt pattern (positions 1, 2, ...); pass language= and task= instead"
                    )
                out.append(tok)
        return out

    def needs_detection(self, language: str | None, task: str | None) -> bool:
        """Whether :meth:`prompt` needs a detected language (multilingual checkpoint, no language given)."""
        if task is not None and task not in _TASKS:
            raise ValueError(f"task must be 'transcribe' or 'translate', got {task!r}")
        if not self.is_multilingual or language is not None:
            return False
        base = self._base(language, task)
        return len(base) <= 1 or base[1] is None

    def prompt(
        self, language: str | None, task: str | None, detected: int | None = None, timestamps: bool = False
    ) -> list[int]:
        """The forced decoder prompt (see the module docstring).

        Args:
            language: A language code, token or name; None: ``detected`` (multilingual checkpoints).
            task: ``"transcribe"``, ``"translate"`` or None.
            detected: The detected language token, when :meth:`needs_detection`.
            timestamps: Leave ``<|notimestamps|>`` out (the model then predicts timestamp tokens).
        """
        if task is not None and task not in _TASKS:
            raise ValueError(f"task must be 'transcribe' or 'translate', got {task!r}")
        if not self.is_multilingual:
            if language is not None or task is not None:
                raise ValueError(
                    "this checkpoint is English-only (its generation config has no lang_to_id / task_to_id): "
                    "drop language= and task="
                )
            out = self._base(None, None)
        else:
            out = self._base(language, task)
            lang = self.language_id(language) if language is not None else detected
            if self.needs_detection(language, task) and lang is None:
                raise ValueError("no language given: pass language= (e.g. 'en') or the detected language token")
            if lang is not None:
                if len(out) > 1:
                    out[1] = lang
                else:
                    out.append(lang)
            if task is not None:
                out.append(self.task_to_id[task])
            elif language is not None and not any(t in out for t in self.task_to_id.values()):
                out.append(self.task_to_id["transcribe"])
        if timestamps:
            if self.no_timestamps_token_id is None:
                raise ValueError(
                    "timestamps=True needs a checkpoint with timestamp tokens; its generation config has no "
                    "no_timestamps_token_id"
                )
            if out[-1] == self.no_timestamps_token_id:
                out = out[:-1]
        elif self.no_timestamps_token_id is not None and out[-1] != self.no_timestamps_token_id:
            out.append(self.no_timestamps_token_id)
        return [t for t in out if t is not None]


def suppress(logits: Float[Tensor, "batch d_vocab"], tokens: Sequence[int]) -> Float[Tensor, "batch d_vocab"]:
    """Set the logits of ``tokens`` to ``-inf`` (ids beyond the vocabulary are ignored, as in HF)."""
    ids = [t for t in tokens if 0 <= t < logits.shape[-1]]
    if ids:
        logits[:, ids] = float("-inf")
    return logits


def timestamp_rules(
    logits: Float[Tensor, "batch d_vocab"], tokens: Int[Tensor, "batch pos"], begin: int, rules: WhisperDecoding
) -> Float[Tensor, "batch d_vocab"]:
    """HF's ``WhisperTimeStampLogitsProcessor``: timestamps come in pairs and never decrease, the first
    generated token is a timestamp (at most ``max_initial_timestamp_index``), and a timestamp is forced
    when the timestamps' total probability beats every text token."""
    assert rules.no_timestamps_token_id is not None
    ts_begin = rules.no_timestamps_token_id + 1
    eos = rules.eos_token_id if rules.eos_token_id is not None else 0
    logits[:, rules.no_timestamps_token_id] = float("-inf")
    lasts = []
    for k, row in enumerate(tokens[:, begin:].tolist()):
        last_ts = len(row) >= 1 and row[-1] >= ts_begin
        penultimate_ts = len(row) < 2 or row[-2] >= ts_begin
        if last_ts:
            if penultimate_ts:
                logits[k, ts_begin:] = float("-inf")
            else:
                logits[k, :eos] = float("-inf")
        stamps = [t for t in row if t >= ts_begin]
        last = ts_begin
        if stamps:
            last = stamps[-1] if last_ts and not penultimate_ts else stamps[-1] + 1
        lasts.append(last)
    vocab = torch.arange(logits.shape[-1], device=logits.device)
    floor = torch.tensor(lasts, device=logits.device)[:, None]
    logits.masked_fill_((vocab >= ts_begin) & (vocab < floor), float("-inf"))
    if tokens.shape[1] == begin:
        logits[:, :ts_begin] = float("-inf")
        if rules.max_initial_timestamp_index is not None:
            logits[:, ts_begin + rules.max_initial_timestamp_index + 1 :] = float("-inf")
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    force = logprobs[:, ts_begin:].logsumexp(dim=-1) > logprobs[:, :ts_begin].max(dim=-1).values
    logits[:, :ts_begin].masked_fill_(force[:, None], float("-inf"))
    return logits


def whisper_generate(
    decoder: Stack,
    head: LMHead,
    encoder_out: Float[Tensor, "batch frames d_model"],
    prefix: Int[Tensor, "batch prompt"],
    max_new_tokens: int,
    rules: WhisperDecoding,
    timestamps: bool = False,
) -> Int[Tensor, "batch pos"]:
    """Greedy decoding from ``prefix`` with the KV cache; hooks on ``decoder`` fire every step (with
    :func:`timestamp_rules` after the suppressions when ``timestamps``)."""
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
        logits = head(out[:, -1:])[:, 0].float().to(tokens.device)  # the head may sit elsewhere (device_map)
        logits = suppress(logits, rules.suppress_tokens)
        if tokens.shape[1] == begin:
            logits = suppress(logits, rules.begin_suppress_tokens)
        if timestamps:
            logits = timestamp_rules(logits, tokens, begin, rules)
        next_tok = logits.argmax(dim=-1)
        if rules.eos_token_id is not None:
            next_tok = torch.where(finished, torch.full_like(next_tok, rules.pad_token_id), next_tok)
            finished = finished | (next_tok == rules.eos_token_id)
        tokens = torch.cat([tokens, next_tok[:, None]], dim=1)
        if bool(finished.all()):
            break
    return tokens
