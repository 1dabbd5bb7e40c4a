"""Attention-head detectors: a score per layer and head for well-known attention behaviours.

Each detector says, for every real query position, which keys count as "the target" (the previous token,
[CLS], the other copies of the same token...). A head's score is the attention mass on those keys,
averaged over every (batch item, query) pair where the detector is defined. Padded queries are never
counted, padded keys never count as targets (except for ``"padding"``, whose point is to measure them),
and a query with no target (e.g. the first token for ``"previous_token"``) is skipped. Scores lie in
[0, 1]; a detector defined nowhere in the input gives NaN.

Detectors:

=================== ==================================================================================
``previous_token``  key ``q - 1``
``next_token``      key ``q + 1`` (bidirectional encoders)
``self``            key ``q`` (the diagonal)
``first_token``     key 0 ([CLS] in BERT), for queries other than 0
``sep``             keys holding the separator token ([SEP], ``</s>``), for queries that are not one;
                    the last real token when the tokenizer has none
``last_token``      the last real key, for other queries
``special``         keys holding any special token
``padding``         keys holding the pad token, *attended or not*: with a correct attention mask this is
                    exactly 0, so it flags masking bugs and models run without a mask
``duplicate_token`` other keys holding the same token as the query
``induction``       key ``j + 1`` for every earlier ``j < q`` holding the query's token (prefix matching)
``local_window``    keys within ``window`` positions of the query (audio frames: local-window heads)
``entropy``         normalised entropy of the query's distribution over real keys (1 = uniform)
``mean_distance``   attention-weighted mean ``|q - k|`` in positions (not a [0, 1] score)
=================== ==================================================================================
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float, Int, Real
from torch import Tensor

from encoderlens.analysis.results import Labelled
from encoderlens.models.base import HookedModel
from encoderlens.models.contract import StreamName

POSITIONAL = ("previous_token", "next_token", "self", "local_window", "mean_distance", "induction", "duplicate_token")
TOKEN_BASED = ("sep", "special", "padding", "duplicate_token", "induction")
ALL_DETECTORS = (
    "previous_token",
    "next_token",
    "self",
    "first_token",
    "sep",
    "last_token",
    "special",
    "padding",
    "duplicate_token",
    "induction",
    "local_window",
    "entropy",
    "mean_distance",
)


def default_detectors(tokens: bool, attn: str = "attn") -> tuple[str, ...]:
    """The detectors that make sense for a stream of tokens, or of frames (``tokens=False``), or cross-attention."""
    if attn == "cross_attn":
        return ("first_token", "last_token", "special", "entropy")
    if not tokens:
        return ("local_window", "self", "previous_token", "next_token", "first_token", "entropy", "mean_distance")
    return (
        "previous_token",
        "next_token",
        "self",
        "first_token",
        "sep",
        "special",
        "padding",
        "duplicate_token",
        "induction",
        "entropy",
    )


def _last_real(mask: Tensor) -> Tensor:
    idx = torch.arange(mask.shape[1], device=mask.device)
    return (mask.long() * idx).amax(1)


def target_keys(
    detector: str,
    query_mask: Tensor,
    key_mask: Tensor,
    query_tokens: Tensor | None = None,
    key_tokens: Tensor | None = None,
    special_ids: dict[str, Any] | None = None,
    window: int = 2,
    cross: bool = False,
) -> tuple[Tensor, Tensor]:
    """Target keys and valid queries of one detector.

    Args:
        detector: One of :data:`ALL_DETECTORS` except ``entropy`` / ``mean_distance``.
        query_mask, key_mask: ``(batch, q)`` and ``(batch, k)``, 1 = real position.
        query_tokens, key_tokens: Token ids (needed by token-based detectors).
        special_ids: ``{"sep": id, "pad": id, "special": [ids]}``.
        window: Half-width of ``local_window``.
        cross: Queries and keys are different streams (cross-attention): no query is left out for being
            the key itself (``first_token``, ``last_token``, ``sep``), even when both have the same length.

    Returns:
        ``(targets, valid)``: ``targets`` is ``(batch, q, k)`` bool, ``valid`` is ``(batch, q)`` bool.
    """
    qm, km = query_mask.bool(), key_mask.bool()
    b, nq = qm.shape
    nk = km.shape[1]
    dev = qm.device
    qi = torch.arange(nq, device=dev)[:, None]
    ki = torch.arange(nk, device=dev)[None, :]
    real_k = km[:, None, :]
    special_ids = special_ids or {}
    same = not cross and nq == nk  # a query and a key at one index are one token

    def need_tokens() -> tuple[Tensor, Tensor]:
        if key_tokens is None or query_tokens is None:
            raise ValueError(f"detector {detector!r} needs token ids (text input)")
        return query_tokens.to(dev), key_tokens.to(dev)

    if detector in ("previous_token", "next_token", "self", "local_window"):
        off = {"previous_token": -1, "next_token": 1, "self": 0}.get(detector)
        if off is not None:
            tgt = (ki == qi + off)[None].expand(b, nq, nk) & real_k
        else:
            tgt = ((ki - qi).abs() <= window)[None].expand(b, nq, nk) & real_k
    elif detector == "first_token":
        tgt = (ki == 0)[None].expand(b, nq, nk) & real_k
        tgt = tgt & (qi != 0)[None] if same else tgt
    elif detector == "last_token":
        last = _last_real(km)
        tgt = (ki[None] == last[:, None, None]).expand(b, nq, nk) & real_k
        if same:
            tgt = tgt & (qi[None] != last[:, None, None])
    elif detector == "sep":
        sep = special_ids.get("sep")
        if sep is None:
            warnings.warn("no separator token id known; 'sep' scores the last real token instead", stacklevel=3)
            return target_keys("last_token", query_mask, key_mask, query_tokens, key_tokens, special_ids, window, cross)
        qt, kt = need_tokens()
        tgt = (kt == sep)[:, None, :].expand(b, nq, nk) & real_k
        if same:
            tgt = tgt & (qt != sep)[:, :, None]
    elif detector == "special":
        ids = list(special_ids.get("special") or [])
        if not ids:
            raise ValueError(
                "detector 'special' needs the special token ids (a tokenizer, or special_ids={'special': [...]})"
            )
        _, kt = need_tokens()
        is_sp = torch.isin(kt, torch.tensor(ids, device=dev))
        tgt = is_sp[:, None, :].expand(b, nq, nk) & real_k
    elif detector == "padding":
        pad = special_ids.get("pad")
        if pad is None:
            raise ValueError("detector 'padding' needs the pad token id (a tokenizer, or special_ids={'pad': id})")
        _, kt = need_tokens()
        tgt = (kt == pad)[:, None, :].expand(b, nq, nk)  # attended or not: that is the point
    elif detector == "duplicate_token":
        qt, kt = need_tokens()
        tgt = (qt[:, :, None] == kt[:, None, :]) & real_k & (qi != ki)[None]
    elif detector == "induction":
        qt, kt = need_tokens()
        # key k = j + 1 where token[j] == token[q] and j < q
        prev_tok = torch.cat([torch.full_like(kt[:, :1], -1), kt[:, :-1]], dim=1)
        tgt = (prev_tok[:, None, :] == qt[:, :, None]) & real_k & ((ki - 1) < qi)[None] & (ki >= 1)[None]
        prev_real = torch.cat([torch.zeros_like(km[:, :1]), km[:, :-1]], dim=1)
        tgt = tgt & prev_real[:, None, :]
    else:
        raise ValueError(f"unknown detector {detector!r}; choose from {ALL_DETECTORS}")
    valid = qm & tgt.any(-1)
    return tgt, valid


def score_patterns(
    patterns: Float[Tensor, "layer batch head_index query_pos key_pos"],
    detector: str,
    query_mask: Real[Tensor, "batch query_pos"] | Bool[Tensor, "batch query_pos"],
    key_mask: Real[Tensor, "batch key_pos"] | Bool[Tensor, "batch key_pos"] | None = None,
    query_tokens: Int[Tensor, "batch query_pos"] | None = None,
    key_tokens: Int[Tensor, "batch key_pos"] | None = None,
    special_ids: dict[str, Any] | None = None,
    window: int = 2,
    cross: bool = False,
) -> Float[Tensor, "layer head_index"]:
    """Score stacked patterns ``(layer, batch, head, q, k)`` with one detector -> ``(layer, head)``.

    ``cross=True`` for cross-attention patterns (see :func:`target_keys`).
    """
    if patterns.ndim != 5:
        raise ValueError(f"patterns must be (layer, batch, head, query_pos, key_pos), got {tuple(patterns.shape)}")
    key_mask = query_mask if key_mask is None else key_mask
    if key_tokens is None:
        key_tokens = query_tokens
    p = patterns.float()
    qm, km = query_mask.bool().to(p.device), key_mask.bool().to(p.device)
    if qm.shape != p.shape[1:4:2] or km.shape != (p.shape[1], p.shape[4]):
        raise ValueError(
            f"masks {tuple(qm.shape)}/{tuple(km.shape)} do not match patterns {tuple(p.shape)} "
            "(layer, batch, head, query_pos, key_pos)"
        )
    if detector in ("entropy", "mean_distance"):
        valid = qm & (km.sum(1, keepdim=True) > (1 if detector == "entropy" else 0))
        kmask = km[None, :, None, None, :]
        if detector == "entropy":
            pr = torch.where(kmask, p, torch.zeros_like(p))
            pr = pr / pr.sum(-1, keepdim=True).clamp_min(1e-12)
            ent = -(pr * pr.clamp_min(1e-12).log()).sum(-1)
            per_q = ent / km.sum(1).clamp_min(2).float().log()[None, :, None, None]
        else:
            qi = torch.arange(p.shape[3], device=p.device)[:, None]
            ki = torch.arange(p.shape[4], device=p.device)[None, :]
            dist = (qi - ki).abs().float()
            per_q = (torch.where(kmask, p, torch.zeros_like(p)) * dist).sum(-1)
    else:
        tgt, valid = target_keys(detector, qm, km, query_tokens, key_tokens, special_ids, window, cross)
        per_q = (p * tgt[None, :, None].to(p.dtype)).sum(-1)  # layer batch head q
    w = valid[None, :, None, :].to(p.dtype)
    count = valid.sum()
    if int(count) == 0:
        return torch.full(p.shape[0:3:2], math.nan)
    return ((per_q * w).sum((1, 3)) / count).cpu()


def _special_ids(tokenizer: Any, given: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if tokenizer is not None:
        out["sep"] = getattr(tokenizer, "sep_token_id", None)
        if out["sep"] is None:
            out["sep"] = getattr(tokenizer, "eos_token_id", None)
        out["pad"] = getattr(tokenizer, "pad_token_id", None)
        out["special"] = list(getattr(tokenizer, "all_special_ids", []) or [])
    out.update(given or {})
    return out


def head_scores(
    model: HookedModel,
    input: Any,
    detectors: Sequence[str] | None = None,
    *,
    stream: StreamName = None,
    attn: str = "attn",
    window: int = 2,
    special_ids: dict[str, Any] | None = None,
    **input_kwargs: Any,
) -> dict[str, Labelled]:
    """Run the model once and score every head with each detector.

    Args:
        model: An encoderlens model.
        input: Text (a batch is better: scores average over it), token ids, waveforms, or a prepared input.
        detectors: Names from :data:`ALL_DETECTORS` (default: the ones that suit the stream: tokens or frames).
        stream: ``"encoder"``/``"decoder"`` on encoder-decoders.
        attn: ``"attn"`` or ``"cross_attn"`` (decoder queries, encoder keys).
        window: Half-width for ``local_window``.
        special_ids: Override token ids: ``{"sep": id, "pad": id, "special": [ids]}``.

    Returns:
        ``{detector: Labelled (layer, head)}``.

    Example:
        >>> scores = head_scores(model, ["The cat sat on the mat.", "A dog barked."])
        >>> scores["previous_token"].top(3)
    """
    stream = model.resolve_stream(stream)
    if attn not in ("attn", "cross_attn"):
        raise ValueError(f"attn must be 'attn' or 'cross_attn', got {attn!r}")
    spec = model.stream_spec(stream)
    if attn == "cross_attn" and not spec.has_cross_attention:
        raise ValueError("attn='cross_attn' needs the decoder stream of an encoder-decoder")
    prepared = model.prepare_input(input, **input_kwargs)
    has_tokens = prepared.token_ids.get(stream) is not None
    dets = tuple(default_detectors(has_tokens, attn) if detectors is None else detectors)
    for d in dets:
        if d not in ALL_DETECTORS:
            raise ValueError(f"unknown detector {d!r}; choose from {ALL_DETECTORS}")
        if attn == "cross_attn" and d in POSITIONAL:
            raise ValueError(f"detector {d!r} compares query and key positions, which differ in cross-attention")
    ids = _special_ids(model.tokenizer, special_ids)
    if detectors is None:
        # defaults: leave out what this input cannot support (no tokens, no tokenizer)
        dets = tuple(
            d
            for d in dets
            if (has_tokens or d not in TOKEN_BASED)
            and not (d == "special" and not ids.get("special"))
            and not (d == "padding" and ids.get("pad") is None)
            and not (d == "sep" and ids.get("sep") is None)
        )
    names = [f"{spec.prefix}blocks.{i}.{attn}.hook_pattern" for i in range(spec.n_layers)]
    wanted = set(names)
    with torch.no_grad():
        _, cache = model.run_prepared_with_cache(prepared, names_filter=lambda n: n in wanted)
    patterns = torch.stack([cache[n] for n in names])
    q_stream = stream
    k_stream = model.cross_attention_source(stream) if attn == "cross_attn" else stream
    qm, km = prepared.mask(q_stream), prepared.mask(k_stream)
    qt, kt = prepared.token_ids.get(q_stream), prepared.token_ids.get(k_stream)
    labels = {"layer": [f"L{i}" for i in range(spec.n_layers)], "head": [f"H{h}" for h in range(spec.n_heads)]}
    out = {}
    for d in dets:
        if d in TOKEN_BASED and (qt is None or kt is None) and not (d == "sep" and ids.get("sep") is None):
            raise ValueError(f"detector {d!r} needs token ids; this input has none (audio?)")
        vals = score_patterns(patterns, d, qm, km, qt, kt, ids, window, cross=attn == "cross_attn")
        out[d] = Labelled(
            vals, ("layer", "head"), labels, f"{d} score", {"detector": d, "attn": attn, "stream": stream}
        )
    return out


def summarize(scores: dict[str, Labelled], k: int = 3) -> str:
    """One line per detector with its top-``k`` heads."""
    lines = []
    for name, res in scores.items():
        top = res.top(k)
        heads = ", ".join(f"{c['layer']}{c['head']} ({v:.2f})" for c, v in top)
        lines.append(f"{name:<16} {heads}")
    return "\n".join(lines)
