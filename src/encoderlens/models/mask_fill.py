"""Fill-mask predictions of a text encoder's MLM head: top-k tokens per ``[MASK]``, as words."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from encoderlens.io.text import TextBatch


@dataclass
class MaskPrediction:
    """Top-k predictions for one ``[MASK]`` position.

    Attributes:
        position: Token position of the mask.
        token_ids: Predicted ids, most likely first.
        tokens: Predicted tokens as the tokenizer spells them (``"##ing"`` marks a WordPiece continuation;
            ``"Ġcat"`` / ``"▁cat"`` mark a word start in byte-level BPE / SentencePiece vocabularies).
        words: Tokens as text, with those markers removed.
        is_continuation: Whether each token continues the previous word (``##`` pieces, or pieces without
            the word-start marker).
        probs: Probabilities.
        sequence: The input text with this mask filled by the top prediction (word pieces merged).
    """

    position: int
    token_ids: list[int]
    tokens: list[str]
    words: list[str]
    is_continuation: list[bool]
    probs: list[float]
    sequence: str


def _word_start_marker(tok: Any) -> str | None:
    """``"Ġ"`` (byte-level BPE: RoBERTa) or ``"▁"`` (SentencePiece: XLM-R, ALBERT) if the tokenizer marks
    word starts; None for WordPiece (BERT), which marks continuations with ``##`` instead."""
    try:
        pieces = tok.tokenize("a b")
    except Exception:  # a tokenizer without tokenize(): fall back to WordPiece conventions
        return None
    for m in ("Ġ", "▁"):
        if any(p.startswith(m) for p in pieces):
            return m
    return None


def _split_pieces(tok: Any, tokens: list[str], marker: str | None) -> tuple[list[bool], list[str]]:
    """Whether each token continues the previous word, and each token as plain text."""
    if marker is None:
        cont = [t.startswith("##") for t in tokens]
        return cont, [t[2:] if c else t for t, c in zip(tokens, cont)]
    cont = [not t.startswith(marker) for t in tokens]
    return cont, [tok.convert_tokens_to_string([t]).strip() for t in tokens]


def mask_predictions(tok: Any, batch: TextBatch, logits: Tensor, top_k: int) -> list[list[MaskPrediction]]:
    """Top-``top_k`` fills of every ``[MASK]`` of every item (``return_type="mask_predictions"``)."""
    if tok is None or tok.mask_token_id is None:
        raise ValueError("return_type='mask_predictions' needs a tokenizer with a mask token")
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    is_mask = batch.tokens == tok.mask_token_id
    if not bool(is_mask.any()):
        raise ValueError(f"no {tok.mask_token} token in the input; put {tok.mask_token} where a prediction is wanted")
    probs = logits.float().softmax(-1)
    marker = _word_start_marker(tok)
    out: list[list[MaskPrediction]] = []
    for b in range(batch.tokens.shape[0]):
        row = batch.tokens[b][batch.attention_mask[b].bool()]
        preds = []
        for pos in is_mask[b].nonzero().flatten().tolist():
            p, ids = probs[b, pos].topk(top_k)
            id_list = ids.tolist()
            tokens = tok.convert_ids_to_tokens(id_list)
            cont, words = _split_pieces(tok, tokens, marker)
            filled = row.clone()
            filled[pos] = id_list[0]
            seq = tok.decode(filled.tolist(), skip_special_tokens=True)
            preds.append(MaskPrediction(pos, id_list, tokens, words, cont, p.tolist(), seq))
        out.append(preds)
    return out
