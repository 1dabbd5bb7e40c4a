"""Whisper transcripts: generated token ids split into timed segments.

With timestamps the decoder writes ``<|t0|> text <|t1|>`` pairs; a timestamp token ``id`` means
``(id - timestamp_begin) * 0.02`` seconds (one encoder position), as HF's tokenizer reads it. Without
timestamps the whole transcript is one segment spanning the 30 s window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

#: Seconds per timestamp token (Whisper's encoder position: 2 mel hops of 10 ms).
TIME_PRECISION = 0.02


@dataclass(frozen=True)
class Segment:
    """One timed piece of a transcript.

    Attributes:
        start: Start in seconds.
        end: End in seconds.
        text: The decoded text (special tokens skipped).
        tokens: The text token ids (timestamps excluded).
    """

    start: float
    end: float
    text: str
    tokens: tuple[int, ...]


@dataclass(frozen=True)
class Transcript:
    """The result of :meth:`HookedWhisper.transcribe` for one audio.

    Attributes:
        text: The whole transcript.
        segments: Timed segments (one spanning the window without timestamps).
        tokens: The generated token ids (prompt excluded, padding removed).
        language: The language token (given or detected), or None for English-only checkpoints.
    """

    text: str
    segments: list[Segment] = field(default_factory=list)
    tokens: tuple[int, ...] = ()
    language: str | None = None


def split_segments(
    tokens: Sequence[int],
    timestamp_begin: int | None,
    eos: int | None,
    decode: Callable[[list[int]], str],
    window_s: float = 30.0,
) -> list[Segment]:
    """Split generated ids into segments at timestamp tokens.

    Args:
        tokens: Generated ids (after the prompt), up to and excluding the end-of-text token.
        timestamp_begin: The first timestamp id (``<|notimestamps|>`` + 1); None: no timestamps.
        eos: The end-of-text id (everything from it on is dropped).
        decode: Ids to text.
        window_s: The segment end when timestamps are off or the last segment is left open.
    """
    ids = list(tokens)
    if eos is not None and eos in ids:
        ids = ids[: ids.index(eos)]
    if timestamp_begin is None or not any(t >= timestamp_begin for t in ids):
        text_ids = [t for t in ids if timestamp_begin is None or t < timestamp_begin]
        return [Segment(0.0, window_s, decode(text_ids), tuple(text_ids))] if text_ids else []
    out: list[Segment] = []
    start: float | None = None
    current: list[int] = []
    for t in ids:
        if t < timestamp_begin:
            current.append(t)
            continue
        time = round((t - timestamp_begin) * TIME_PRECISION, 2)
        if start is None:
            start = time
        elif current:
            out.append(Segment(start, time, decode(current), tuple(current)))
            current, start = [], None
        else:
            start = time  # two timestamps in a row: the second opens the next segment
    if current:
        out.append(Segment(start if start is not None else 0.0, window_s, decode(current), tuple(current)))
    return out
