"""Which positions a hooked activation follows: its residual stream's, from the model contract.

Each stored row is one position of one item. A hook belongs to the residual stream whose hook prefix
it carries (``model.stream_spec(stream).prefix``); the keys and values of a cross-attention follow the
positions of the stream it reads (``model.cross_attention_source``). Positions and their padding come
from the prepared batch (:attr:`~encoderlens.models.contract.Prepared.masks`); an alignment is named
after what a position is: ``"token"`` (the stream has token ids), ``"frame"`` (time frames), or
``"position"``, prefixed by the stream's name where there are several (``"encoder_token"``,
``"decoder_token"``). Activations with one vector per item (a pooler, a sequence classifier) use the
alignment ``"item"``.
"""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor

from encoderlens.models.base import HookedModel
from encoderlens.models.contract import Prepared, StreamName
from encoderlens.names import is_pairwise

ITEM = "item"
"""The alignment of activations with one row per item."""


class NoStream:
    """Marks a hook outside every stream's prefix (its positions are found by shape)."""


NO_STREAM = NoStream()


def hook_streams(model: HookedModel, names: list[str]) -> dict[str, StreamName | NoStream]:
    """For each hook, the stream whose positions its activation follows (by hook-name prefix)."""
    specs = {s: model.stream_spec(s) for s in model.streams}
    out: dict[str, StreamName | NoStream] = {}
    for name in names:
        best: StreamName | NoStream = NO_STREAM
        best_len = -1
        for s, spec in specs.items():
            if name.startswith(spec.prefix) and len(spec.prefix) > best_len:
                best, best_len = s, len(spec.prefix)
        if not isinstance(best, NoStream) and specs[best].has_cross_attention:
            cross_kv = rf"{re.escape(specs[best].prefix)}blocks\.\d+\.cross_attn\.hook_(k|v|rot_k)"
            if re.fullmatch(cross_kv, name):
                best = model.cross_attention_source(best)
        out[name] = best
    return out


def alignment_name(batch: Prepared, stream: StreamName) -> str:
    """``"token"`` / ``"frame"`` / ``"position"``, prefixed by the stream's name where it has one."""
    kind = "token" if stream in batch.token_ids else "frame" if stream in batch.times else "position"
    return kind if stream is None else f"{stream}_{kind}"


def align(
    hook_name: str, act: Tensor, batch: Prepared, stream: StreamName | NoStream, transformed: bool = False
) -> tuple[str, StreamName]:
    """``(alignment name, stream)`` of one activation (stream None and name ``"item"`` for per-item ones).

    A hook's own activation follows positions only with a feature axis, ``(batch, pos, ...)``: a 2-D one is
    ``(batch, features)`` (a pooler, a classifier), per item even where its width equals the sequence
    length. A transform's 2-D output that matches a stream's positions is one value per position.

    Raises:
        ValueError: Two position axes (attention patterns), or positions that follow no stream of the batch.
    """
    if is_pairwise(hook_name) and act.ndim == 4:
        raise ValueError(
            f"{hook_name!r} has two position axes (query, key) whose key length changes with padding, so it "
            "cannot be stored as one row per position; pass transforms={name: fn} that reduces it to "
            "(batch, pos, ...), e.g. lambda p, batch: p.amax(-1).transpose(1, 2) (each head's max attention)"
        )
    if act.ndim == 0 or act.shape[0] != batch.batch_size:
        raise ValueError(
            f"{hook_name!r} of shape {tuple(act.shape)} has no batch axis of {batch.batch_size} items; "
            "pass transforms={name: fn} that returns (batch, ...)"
        )
    candidates = list(batch.masks) if isinstance(stream, NoStream) else [stream]
    for s in candidates:
        positional = act.ndim >= 3 or (transformed and act.ndim == 2)
        if s in batch.masks and positional and tuple(act.shape[:2]) == tuple(batch.masks[s].shape):
            return alignment_name(batch, s), s
    if act.ndim <= 2:
        return ITEM, None
    shapes = {str(s): tuple(batch.masks[s].shape) for s in candidates if s in batch.masks}
    raise ValueError(
        f"cannot align {hook_name!r} of shape {tuple(act.shape)} to the batch: expected (batch, pos, ...) "
        f"matching the positions of {shapes or 'its stream (absent from this input)'}; "
        "pass transforms={name: fn} that returns such a tensor"
    )


def alignment_info(batch: Prepared, stream: StreamName) -> dict[str, Any]:
    """What a position of ``stream`` means (written to the manifest's ``alignments``)."""
    where = "" if stream is None else f" of the {stream} stream"
    if stream in batch.token_ids:
        info: dict[str, Any] = {"position": f"token index{where} (the model's tokenisation of the item)"}
    elif stream in batch.times:
        info = {"position": f"time frame index{where}", "seconds_per_position": batch.seconds_per_position(stream)}
    else:
        info = {"position": f"position index{where}"}
    if stream is not None:
        info["stream"] = stream
    return info
