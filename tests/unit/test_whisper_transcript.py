"""Whisper transcripts: timestamp tokens split into timed segments, and ``transcribe`` end to end."""

from __future__ import annotations

import torch

from encoderlens import HookedWhisper
from encoderlens.models.whisper_transcript import Segment, split_segments
from tests.parity.test_whisper_parity import LANGS, RATE, _generating, _generation_config, speech_like

TS = 71  # first timestamp id in these tests


def words(ids: list[int]) -> str:
    return "".join(f" w{i}" for i in ids)


class WordTokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return words([int(i) for i in ids])


def test_split_segments_pairs_and_open_end():
    ids = [TS + 0, 5, 6, TS + 50, TS + 50, 7, TS + 120, TS + 130, 8, 2, 9]
    segs = split_segments(ids, TS, eos=2, decode=words)
    assert segs == [
        Segment(0.0, 1.0, " w5 w6", (5, 6)),
        Segment(1.0, 2.4, " w7", (7,)),
        Segment(2.6, 30.0, " w8", (8,)),  # left open: ends with the window
    ]
    assert split_segments([5, 6, 2, 7], None, eos=2, decode=words) == [Segment(0.0, 30.0, " w5 w6", (5, 6))]
    assert split_segments([2], TS, eos=2, decode=words) == []


def test_transcribe_returns_text_and_segments():
    hf = _generating()
    gen = _generation_config(no_timestamps_token_id=TS - 1)
    model = HookedWhisper.from_pretrained(hf_model=hf, generation_config=gen)
    model.tokenizer = WordTokenizer()
    waves = speech_like((RATE * 28, RATE * 9), seed=7)
    tokens = model.generate(waves, language="en", max_new_tokens=20, timestamps=True)
    out = model.transcribe(waves, language="en", timestamps=True, max_new_tokens=20)
    assert len(out) == 2
    for row, t in zip(tokens.tolist(), out, strict=True):
        assert t.language == "<|en|>"
        assert t.tokens == tuple(row[3 : 3 + len(t.tokens)])
        expected = split_segments(row[3:], TS, 2, words)
        assert t.segments == expected and t.text == "".join(s.text for s in expected)
        assert t.segments and all(s.start <= s.end for s in t.segments)
    detected = model.transcribe(waves, max_new_tokens=20)
    assert all(t.language in LANGS for t in detected)
    assert all(len(t.segments) == 1 and t.segments[0].end == 30.0 for t in detected if t.tokens)
    assert torch.is_tensor(tokens)
