"""Targets for input attribution: what value of the output is explained, one value per batch item.

A target is ``target(output, batch) -> (batch,)`` where ``output`` is the model output for the
``return_type`` the attribution runs with and ``batch`` the :class:`~encoderlens.models.contract.Prepared`
input (repeated copies included, so positions read from it follow the copies). Every builder here says
which ``return_type`` it needs in :attr:`Target.return_type` (None: the model's primary output).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Int
from torch import Tensor

from encoderlens.config import QA_LABELS
from encoderlens.models.base import HookedModel
from encoderlens.models.contract import Prepared

Kind = Literal["logit", "logprob", "prob"]
#: One value for every batch item, or one per item: an int, a list of ints, or a 0-d / 1-d tensor of them.
PerItem = int | Sequence[int] | Int[Tensor, ""] | Int[Tensor, "_items"]


@dataclass(frozen=True)
class Target:
    """A named target: ``fn(output, batch) -> (batch,)`` and the forward ``return_type`` it reads."""

    fn: Any
    name: str
    return_type: str | None = None

    def __call__(self, output: Any, batch: Prepared) -> Tensor:
        return self.fn(output, batch)


def _per_item(values: Any, batch: int, device: torch.device, what: str) -> Tensor:
    t = torch.as_tensor(values, device=device)
    if t.ndim == 0:
        return t.expand(batch).long()
    if t.ndim == 1 and t.shape[0] == batch:
        return t.long()
    if t.ndim == 1 and batch % t.shape[0] == 0:  # repeated copies of the batch
        return t.repeat(batch // t.shape[0]).long()
    raise ValueError(f"{what} must be an int or one per batch item, got shape {tuple(t.shape)} for {batch} items")


def _score(logits: Tensor, kind: Kind) -> Tensor:
    if kind == "logit":
        return logits
    if kind == "logprob":
        return F.log_softmax(logits.float(), -1)
    if kind == "prob":
        return F.softmax(logits.float(), -1)
    raise ValueError(f"kind must be 'logit', 'logprob' or 'prob', got {kind!r}")


def _check_logits(out: Any, ndim: int, what: str) -> Tensor:
    if not isinstance(out, Tensor) or out.ndim != ndim:
        raise TypeError(
            f"{what} expects a tensor output with {ndim} dims, got {type(out).__name__} "
            f"{tuple(getattr(out, 'shape', ()))}; check the return_type"
        )
    return out


def token_score(
    position: PerItem,
    token: PerItem,
    kind: Kind = "logit",
    return_type: str | None = None,
    stream_name: str = "",
) -> Target:
    """``score(logits[item, position])[token]``: a token's logit, log-probability or probability.

    For MLM logits, CTC logits (frames are positions) and encoder-decoder LM logits (decoder positions).
    A position outside the logits raises; so does one on an item's padding, checked against the mask of
    ``stream_name`` (given, or else the last stream of the input as long as the logits' positions).

    Example:
        >>> t = token_score(position=3, token=paris_id, kind="logprob")
    """

    def fn(out: Any, batch: Prepared) -> Tensor:
        logits = _check_logits(out, 3, "token_score")
        b, n = logits.shape[:2]
        rows = torch.arange(b, device=logits.device)
        pos = _per_item(position, b, logits.device, "position")
        masks = [batch.mask(stream_name)] if stream_name else [m for m in batch.masks.values() if m.shape[-1] == n]
        real = masks[-1].to(logits.device).bool() if masks else None
        if real is not None and real.shape != (b, n):  # no mask of these positions: only the bounds are checked
            real = None
        pos = checked_positions(pos, n, real, "token_score")
        return _score(logits[rows, pos], kind)[rows, _per_item(token, b, logits.device, "token")]

    return Target(fn, f"{kind}[{token}] at position {position}", return_type)


def mask_fill(model: HookedModel, token: PerItem, kind: Kind = "logprob") -> Target:
    """The masked-LM fill: ``kind`` of ``token`` at each item's first ``[MASK]`` (needs a tokenizer).

    Example:
        >>> t = mask_fill(model, model.tokenizer.convert_tokens_to_ids("paris"))
    """
    mask_id = getattr(model.tokenizer, "mask_token_id", None) if model.tokenizer is not None else None
    if mask_id is None:
        raise ValueError("mask_fill needs a tokenizer with a mask token; use token_score(position, token) instead")

    def fn(out: Any, batch: Prepared) -> Tensor:
        logits = _check_logits(out, 3, "mask_fill")
        ids = batch.token_ids.get(batch.streams[0])
        if ids is None:
            raise ValueError("mask_fill needs token inputs")
        is_mask = ids.to(logits.device) == mask_id
        if not bool(is_mask.any(1).all()):
            raise ValueError(
                f"every item needs a mask token ({model.tokenizer.mask_token}); items without: "
                f"{(~is_mask.any(1)).nonzero().flatten().tolist()}"
            )
        pos = is_mask.float().argmax(1)
        rows = torch.arange(logits.shape[0], device=logits.device)
        return _score(logits[rows, pos], kind)[rows, _per_item(token, logits.shape[0], logits.device, "token")]

    return Target(fn, f"mask fill {kind}[{token}]", "logits")


def class_score(label: PerItem, kind: Kind = "logit", return_type: str = "classification") -> Target:
    """A sequence classifier's ``kind`` of class ``label`` (output ``(batch, n_labels)``)."""

    def fn(out: Any, batch: Prepared) -> Tensor:
        logits = _check_logits(out, 2, "class_score")
        rows = torch.arange(logits.shape[0], device=logits.device)
        return _score(logits, kind)[rows, _per_item(label, logits.shape[0], logits.device, "label")]

    return Target(fn, f"class {kind}[{label}]", return_type)


def checked_positions(
    pos: Tensor,
    n: int,
    real: Tensor | None,
    what: str,
    *,
    padding_ok: bool = False,
    source: str = "input",
    real_name: str = "real tokens",
    hint: str = "pick a position on a real token of each item (one per item: a list or tensor)",
) -> Tensor:
    """``pos`` (one per item; negative counts from the end, as indexing does) checked against ``n`` positions.

    Args:
        pos: One position per item.
        n: The number of positions of ``source``.
        real: ``(batch, n)``, True on each item's real positions; None: only the bounds are checked.
        what: Who reads the positions (named in the error).
        padding_ok: Whether a position on padding is allowed.
        source: What the positions index (named in the error).
        real_name: What the real positions are called (named in the error).
        hint: How to fix a position on padding (ends the error).

    Returns:
        The positions, made non-negative.

    Raises:
        ValueError: A position outside the ``n`` positions, or on an item's padding unless ``padding_ok``.
    """
    outside = (pos < -n) | (pos >= n)
    if bool(outside.any()):
        raise ValueError(
            f"{what} position {pos[outside][0].item()} is outside the {n} positions of the {source}; "
            f"expected -{n} <= position < {n}"
        )
    pos = pos % n
    if padding_ok or real is None:
        return pos
    on_padding = ~real[torch.arange(pos.shape[0], device=pos.device), pos]
    if bool(on_padding.any()):
        item = int(on_padding.nonzero()[0, 0])
        raise ValueError(
            f"{what} position {pos[item].item()} is padding in batch item {item}, which has "
            f"{int(real[item].sum())} {real_name}; {hint}"
        )
    return pos


def span_score(position: PerItem, boundary: str = "start", kind: Kind = "logit", return_type: str = "qa") -> Target:
    """A question-answering head's score of ``position`` as the answer's ``boundary`` (``"start"`` or ``"end"``).

    Reads the QA logits ``(batch, pos, 2)`` of ``return_type="qa"`` (``[..., 0]``: HF's ``start_logits``,
    ``[..., 1]``: ``end_logits``). ``"logprob"`` and ``"prob"`` normalise over the item's real positions
    (HF's span loss is a softmax over positions; padding is left out, so each item of a padded batch gets
    the distribution it would get alone), not over the two boundaries; there a padding position scores
    ``-inf`` / 0, and a ``"logit"`` on padding (or any position outside the input) raises.

    Example:
        >>> t = span_score(position=12, boundary="start")  # the start logit of token 12
        >>> res = attribute_input(model, (question, context), t)
    """
    if boundary not in QA_LABELS:
        raise ValueError(f"boundary must be one of {QA_LABELS}, got {boundary!r}")
    if kind not in ("logit", "logprob", "prob"):
        raise ValueError(f"kind must be 'logit', 'logprob' or 'prob', got {kind!r}")
    column = QA_LABELS.index(boundary)

    def fn(out: Any, batch: Prepared) -> Tensor:
        logits = _check_logits(out, 3, "span_score")
        if logits.shape[-1] != len(QA_LABELS):
            raise TypeError(
                f"span_score expects question-answering logits (batch, pos, 2), got {tuple(logits.shape)}; "
                "run with return_type='qa' on a *ForQuestionAnswering checkpoint"
            )
        b, n = logits.shape[:2]
        rows = torch.arange(b, device=logits.device)
        real = batch.mask(batch.streams[0]).to(logits.device).bool()
        # a logit on padding is no score of the span (a probability there is exactly 0: that one is kept)
        pos = _per_item(position, b, logits.device, "position")
        pos = checked_positions(pos, real.shape[1], real, "span_score", padding_ok=kind != "logit")
        scores = logits[..., column]
        if kind != "logit":
            scores = _score(scores.float().masked_fill(~real, float("-inf")), kind)
        return scores[rows, pos]

    return Target(fn, f"{boundary} {kind} at position {position}", return_type)


def similarity(reference: Tensor, return_type: str = "sentence_embedding") -> Target:
    """Cosine similarity of each item's sentence embedding with ``reference`` (``(d,)`` or one per item).

    Example:
        >>> ref = model("A dog runs.", return_type="sentence_embedding")[0]
        >>> t = similarity(ref)
    """
    ref = reference.detach()

    def fn(out: Any, batch: Prepared) -> Tensor:
        emb = _check_logits(out, 2, "similarity")
        r = ref.to(emb.device, emb.dtype)
        if r.ndim == 2 and r.shape[0] != emb.shape[0]:
            r = r.repeat(emb.shape[0] // r.shape[0], 1)
        return F.cosine_similarity(emb, r.expand_as(emb), dim=-1)

    return Target(fn, "cosine similarity", return_type)


def ctc_token(token: int, frames: Sequence[int] | tuple[int, int]) -> Target:
    """Summed CTC log-probability of ``token`` over ``frames`` (a list, or a ``(start, end)`` span).

    Every frame must be a real frame of every item (negative ones count from the end of the padded
    batch, as indexing does): a frame outside the logits, or on an item's padding, raises (the padding
    frames' log-probabilities are no part of the item's output), as does a token outside the vocabulary.
    """
    idx = list(range(*frames)) if isinstance(frames, tuple) else list(frames)
    if not idx:
        raise ValueError("frames is empty")
    if isinstance(token, bool) or not isinstance(token, int):
        raise TypeError(f"ctc_token token must be an int (a vocabulary id), got {token!r}")

    def fn(out: Any, batch: Prepared) -> Tensor:
        logits = _check_logits(out, 3, "ctc_token")
        b, n, vocab = logits.shape
        if not -vocab <= token < vocab:
            raise ValueError(f"ctc_token token {token} is outside the vocabulary of {vocab} labels")
        real = batch.mask(batch.streams[0]).to(logits.device).bool()
        if real.shape != (b, n):
            raise ValueError(
                f"ctc_token reads logits over {n} frames, but the input's padding mask is {tuple(real.shape)}; "
                "check the return_type (the CTC head's 'logits')"
            )
        for f in idx:
            checked_positions(torch.full((b,), f, device=logits.device), real.shape[1], real, "ctc_token frame")
        logp = F.log_softmax(logits.float(), -1)
        return logp[:, idx, token].sum(1)

    return Target(fn, f"CTC log p[{token}] over frames {idx[0]}..{idx[-1]}", "logits")


def _check_span(frames: tuple[int, int], lengths: Tensor, n: int) -> None:
    """``frames`` as ``0 <= start < end <= n`` starting on a real frame of every item, else a ValueError."""
    start, end = frames
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= n):
        raise ValueError(
            f"ctc_transcript frames must be (start, end) with 0 <= start < end <= {n} (the logits' frames), "
            f"got {frames!r}"
        )
    short = (lengths <= start).nonzero().flatten()
    if short.numel():
        item = int(short[0])
        raise ValueError(
            f"ctc_transcript frames {frames!r} start on padding of batch item {item}, which has "
            f"{int(lengths[item])} real frames; pick a span within every item's real frames"
        )


def ctc_transcript(
    labels: Sequence[int] | Sequence[Sequence[int]], blank: int, frames: tuple[int, int] | None = None
) -> Target:
    """Log-likelihood of a transcript under the CTC head (``-ctc_loss``), over every real frame or a span.

    Args:
        labels: Token ids of the transcript (one list for every item, or one list per item).
        blank: The CTC blank id (``model.readout().blank_id``).
        frames: ``(start, end)``: the transcript span must be emitted within these frames (of every item's
            real frames: a span outside the logits, or starting on an item's padding, raises).
    """
    per_item = bool(labels) and isinstance(labels[0], Sequence)

    def fn(out: Any, batch: Prepared) -> Tensor:
        logits = _check_logits(out, 3, "ctc_transcript")
        b = logits.shape[0]
        rows = [list(x) for x in labels] if per_item else [list(labels)] * b  # type: ignore[arg-type]
        if len(rows) != b:
            rows = rows * (b // len(rows))
        lengths = batch.mask(batch.streams[0]).sum(1).to(logits.device)
        logp = F.log_softmax(logits.float(), -1)
        if frames is not None:
            _check_span(frames, lengths, logits.shape[1])
            logp = logp[:, frames[0] : frames[1]]
            lengths = (lengths - frames[0]).clamp(0, frames[1] - frames[0])
        tgt = torch.tensor([t for r in rows for t in r], dtype=torch.long, device=logits.device)
        tl = torch.tensor([len(r) for r in rows], dtype=torch.long, device=logits.device)
        loss = F.ctc_loss(logp.transpose(0, 1), tgt, lengths, tl, blank=blank, reduction="none", zero_infinity=False)
        return -loss

    return Target(fn, "CTC transcript log-likelihood", "logits")
