"""Dataset items -> one model input per batch, through the model contract (``model.prepare_input``).

A harvest streams *items*; each batch of items becomes one :class:`~encoderlens.models.contract.Prepared`
batch. What an item is does not depend on the model family:

- a raw input: a string, an ``(a, b)`` pair, a waveform, an audio file path, a sequence of token ids;
- a dict: the input under :attr:`ItemFields.input_key` (default: the first of ``input``, ``text``,
  ``tokens``, ``audio``, ``source`` present), the source id under ``"id"``, and per-item options of
  ``model.prepare_input`` under :attr:`ItemFields.option_keys` (default: ``"target"`` ->
  ``decoder_input`` where the model takes a decoder input).

Token id sequences of unequal lengths are padded (the tokenizer's pad id, else 0) and passed as
tokenizer output (``{"input_ids", "attention_mask"}``), which every text family accepts; a datasets-style
audio dict ``{"array": ..., "sampling_rate": ...}`` gives its array, and its rate as the batch's
``sampling_rate`` option.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from encoderlens.models.base import HookedModel
from encoderlens.models.contract import Prepared

#: Dict fields tried, in order, for an item's input when no ``input_key`` is given.
DEFAULT_INPUT_KEYS: tuple[str, ...] = ("input", "text", "tokens", "audio", "source")


@dataclass(frozen=True)
class ItemFields:
    """How dict items name their parts (raw items are the input itself).

    Attributes:
        input_key: Field holding the model input; None: the first of :data:`DEFAULT_INPUT_KEYS` present.
        option_keys: Item field -> ``prepare_input`` option, collected per item (every item of a batch
            has it, or none does). None (default): ``{"target": "decoder_input"}`` for models whose
            example input takes a ``decoder_input`` (encoder-decoders: teacher forcing on target text, or
            on decoder token ids used as given), else none (a text encoder ignores a ``"target"`` label).
        options: ``prepare_input`` options for every batch (e.g. ``{"sampling_rate": 8000, "resample":
            True}``).
    """

    input_key: str | None = None
    option_keys: Mapping[str, str] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def for_model(self, model: HookedModel) -> ItemFields:
        """These fields with the default ``option_keys`` resolved for ``model``."""
        if self.option_keys is not None:
            return self
        takes_decoder = "decoder_input" in model.example_input().options
        return replace(self, option_keys={"target": "decoder_input"} if takes_decoder else {})

    def describe(self) -> dict[str, Any]:
        """What the manifest records (a resumed harvest must read items the same way)."""
        return {
            "input_key": self.input_key,
            "option_keys": None if self.option_keys is None else dict(sorted(self.option_keys.items())),
            "options": {k: _jsonable(v) for k, v in sorted(self.options.items())},
        }

    def item_id(self, item: Any, index: int) -> Any:
        """The source id recorded for an item: ``item["id"]`` for dicts that have one, else its index."""
        if isinstance(item, Mapping) and "id" in item:
            return item["id"]
        return index

    def split(self, item: Any) -> tuple[Any, dict[str, Any]]:
        """``(input, per-item options)`` of one item."""
        if not isinstance(item, Mapping):
            return item, {}
        keys = [self.input_key] if self.input_key is not None else list(DEFAULT_INPUT_KEYS)
        key = next((k for k in keys if k in item), None)
        if key is None:
            fix = (
                "pass input_key=... (CLI: --field) naming the field that holds the input"
                if self.input_key is None
                else "pass the input_key (CLI: --field) of the field that holds the input"
            )
            raise ValueError(f"dict item has no {' / '.join(map(repr, keys))} field (keys: {sorted(item)}); {fix}")
        keys_ = self.option_keys or {}
        return item[key], {opt: item[k] for k, opt in keys_.items() if k in item}

    def prepare(self, model: HookedModel, items: Sequence[Any]) -> Prepared:
        """One :class:`Prepared` batch of ``items`` (``model.prepare_input`` on the batched inputs)."""
        parts = [self.split(it) for it in items]
        inputs = [p[0] for p in parts]
        options: dict[str, Any] = dict(self.options)
        names = {n for _, o in parts for n in o}
        for name in sorted(names):
            if not all(name in o for _, o in parts):
                field_name = next(k for k, v in (self.option_keys or {}).items() if v == name)
                raise ValueError(
                    f"some items have a {field_name!r} field and some do not; give every item one, or none"
                )
            options[name] = _batch_values(model, [o[name] for _, o in parts], name)
        rates = set()
        for i, x in enumerate(inputs):
            if isinstance(x, Mapping) and "array" in x:  # a datasets Audio feature
                inputs[i] = x["array"]
                if x.get("sampling_rate") is not None:
                    rates.add(int(x["sampling_rate"]))
        if len(rates) > 1:
            raise ValueError(f"a batch mixes sampling rates {sorted(rates)}; resample the items to one rate first")
        if rates:
            options.setdefault("sampling_rate", rates.pop())
        return model.prepare_input(_batch_values(model, inputs, "input"), **options)


def item_digest(item: Any) -> str:
    """A short hash of an item's content (input, options and id), to recognise it when a harvest resumes.

    Strings, numbers, token id and waveform arrays (dtype, shape and bytes), and lists, tuples and dicts of
    them hash by value; other objects by ``repr``.
    """
    h = hashlib.sha256()
    _feed(h, item)
    return h.hexdigest()[:16]


def _feed(h: Any, v: Any) -> None:
    if isinstance(v, torch.Tensor):
        t = v.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif hasattr(v, "dtype") and hasattr(v, "shape") and hasattr(v, "tobytes"):  # numpy arrays
        h.update(f"A{v.dtype}{tuple(v.shape)}".encode())
        h.update(v.tobytes())
    elif isinstance(v, Mapping):
        h.update(f"D{len(v)}".encode())
        for k in sorted(v, key=repr):
            _feed(h, k)
            _feed(h, v[k])
    elif isinstance(v, (list, tuple)):
        h.update(f"L{len(v)}".encode())
        for x in v:
            _feed(h, x)
    else:
        r = repr(os.fspath(v)) if isinstance(v, os.PathLike) else repr(v)
        h.update(f"S{type(v).__name__}{len(r)}:{r}".encode())


def _batch_values(model: HookedModel, values: list[Any], what: str) -> Any:
    """Per-item values -> one batched value: texts and waveforms as a list, token ids padded."""
    tokens = [_token_ids(v) for v in values]
    if all(t is None for t in tokens):
        return values
    if any(t is None for t in tokens):
        raise ValueError(f"a batch mixes token id sequences and other {what} values; pass one kind per harvest")
    seqs = [t for t in tokens if t is not None]
    if min(len(s) for s in seqs) == 0:
        raise ValueError(f"got an empty token sequence as {what}; every item needs at least one token")
    pad = getattr(model.tokenizer, "pad_token_id", None) if model.tokenizer is not None else None
    ids = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=int(pad or 0))
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        mask[i, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _token_ids(value: Any) -> torch.Tensor | None:
    """A 1-D integer sequence as a long tensor, or None for anything else (text, waveforms, paths)."""
    if isinstance(value, (str, bytes, os.PathLike, Mapping)) or (
        isinstance(value, tuple) and value and isinstance(value[0], str)
    ):
        return None
    if isinstance(value, torch.Tensor):
        t = value
    elif isinstance(value, Sequence) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        t = torch.tensor(value)
    elif hasattr(value, "dtype") and hasattr(value, "ndim"):  # numpy arrays
        t = torch.as_tensor(value)
    else:
        return None
    if t.ndim != 1 or t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        return None
    return t.long()


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return repr(v)
