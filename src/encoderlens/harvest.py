"""Harvest activations of a whole dataset to sharded safetensors files, in bounded memory.

:func:`harvest` streams items through the model in batches, keeps the requested hook points'
activations (padding positions dropped, or kept and flagged), converts them to the storage dtype on
the CPU and writes them in shards of bounded size, with a manifest that says which item and position
every stored row is. It is resumable (a restart skips every item already written, and never writes
one twice) and runs unchanged under ``torchrun`` (each rank takes items ``i % world_size == rank``;
rank 0 merges one manifest at the end).

Layout of ``out_dir``::

    manifest.json                  merged view (rank 0 writes it; "complete": true at the end)
    rank000-00000.safetensors      shards: rank 0's first shard, ...
    _progress/rank000.json         each rank's committed shards (what a restart reads)

What is not in a progress file does not exist: a shard is written under a temporary name and
renamed into place (``os.replace``, atomic), then the rank's progress file is replaced the same
way. A kill at any moment leaves either the old or the new state, never a partial shard; files not
listed (from a kill between the two renames) are deleted on restart.

The model-specific part (turning items into a batch, calling the model, which positions are real,
which axis of an activation is the position) is a :class:`HarvestAdapter`. Text encoders use
:class:`TextAdapter`; other families register theirs with :func:`register_adapter`.

Example:
    >>> from encoderlens.harvest import harvest, load_harvest
    >>> harvest(model, ["a first text", "another one"], ["blocks.3.hook_resid_post"], "acts/", batch_size=32)
    >>> h = load_harvest("acts/")
    >>> acts = h.load("blocks.3.hook_resid_post")     # (rows, d_model), rows = real tokens
    >>> rows = h.rows("token")                         # {"item": ..., "pos": ...} per row
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import numbers
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool
from torch import Tensor

from encoderlens.names import is_pairwise

FORMAT = "encoderlens-harvest"
FORMAT_VERSION = 1

_DTYPES: dict[str, torch.dtype] = {
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}


def storage_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"fp16"``, ``"bf16"``, ``"fp32"`` (or a floating torch dtype) -> torch dtype."""
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"storage dtype must be a floating dtype, got {dtype}")
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ValueError(f"dtype must be 'fp16', 'bf16', 'fp32' or a torch floating dtype, got {dtype!r}")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------------------------------------- adapters
@dataclass
class PreparedBatch:
    """One batch, ready for the model.

    Attributes:
        inputs: Whatever the adapter's :meth:`HarvestAdapter.forward` needs.
        masks: Alignment name -> ``(batch, pos)`` bool mask, True at real (non-padding) positions.
            Text: ``{"token": attention_mask}``. An audio adapter would give ``{"frame": ...}``, an
            encoder-decoder ``{"token": ..., "target_token": ...}``.
    """

    inputs: Any
    masks: dict[str, Bool[Tensor, "batch pos"]]


class HarvestAdapter:
    """The model-specific part of a harvest. Subclass it for a new family and :func:`register_adapter` it.

    An adapter turns items into a :class:`PreparedBatch`, runs the model (hooks are attached by
    :func:`harvest`), and says for each hooked activation which alignment (mask) and which axis its
    positions follow. Activations with no position axis (one vector per item) use alignment
    ``"item"``.
    """

    #: Short name written to the manifest.
    name: str = "base"
    #: Whether the forward may be stopped once every requested hook has fired (True when each hook
    #: fires once per forward and nothing after it is needed).
    early_stop: bool = True
    #: Added to the error raised when a requested hook did not fire.
    missing_hint: str = "is the adapter calling the model?"

    def prepare(self, model: Any, items: list[Any]) -> PreparedBatch:
        raise NotImplementedError

    def forward(self, model: Any, batch: PreparedBatch) -> None:
        raise NotImplementedError

    #: Name prefixes of head hooks that hold one vector per item when 2-D ``(batch, features)``, e.g.
    #: ``("pooler.",)``; a ``(batch, pos, ...)`` activation under them (a token classifier) is per position.
    item_hooks: tuple[str, ...] = ()

    def alignment(self, hook_name: str, act: Tensor, batch: PreparedBatch) -> tuple[str, int | None]:
        """``(alignment name, position axis)`` of one activation; ``("item", None)`` for per-item ones.

        The default: 2-D hooks named by :attr:`item_hooks` are per item; any other activation must be
        ``(batch, pos, ...)`` for one of the batch's masks (the first that fits; an adapter with
        several masks of possibly equal shape should decide by hook name instead).
        """
        if is_pairwise(hook_name) and act.ndim == 4:
            raise ValueError(
                f"{hook_name!r} has two position axes (query, key) whose key length changes with padding, so it "
                "cannot be stored as one row per position; pass transforms={name: fn} that reduces it to "
                "(batch, pos, ...), e.g. lambda p, batch: p.amax(-1).transpose(1, 2) (each head's max attention)"
            )
        per_item = hook_name.startswith(self.item_hooks)
        if per_item and act.ndim == 2:
            return "item", None
        for name, mask in batch.masks.items():
            if act.ndim >= 2 and tuple(act.shape[:2]) == tuple(mask.shape):
                return name, 1
        if per_item:
            return "item", None
        raise ValueError(
            f"cannot align {hook_name!r} of shape {tuple(act.shape)} to the batch: expected (batch, pos, ...) "
            f"matching one of the masks { {k: tuple(v.shape) for k, v in batch.masks.items()} }; "
            "pass transforms={name: fn} that returns such a tensor"
        )

    def item_id(self, item: Any, index: int) -> Any:
        """The source id recorded for an item: ``item["id"]`` for dicts that have one, else its index."""
        if isinstance(item, dict) and "id" in item:
            return item["id"]
        return index

    def describe(self) -> dict[str, Any]:
        """Settings recorded in the manifest (a resumed harvest must use the same)."""
        return {"name": self.name}

    def alignment_info(self, model: Any) -> dict[str, dict[str, Any]]:
        """Per alignment, what a position means (written to the manifest's ``alignments``)."""
        return {}


class TextAdapter(HarvestAdapter):
    """Text encoders: items are strings, ``(text_a, text_b)`` pairs, token id sequences, or dicts.

    Dict items give the text as ``item[text_key]`` (or token ids as ``item[tokens_key]``) and the
    source id as ``item["id"]``. Strings are tokenised by the model's tokenizer (padded right,
    truncated to the position table with a warning); token sequences are padded with the tokenizer's
    pad id (0 without a tokenizer). Alignment ``"token"``: position ``p`` of item ``i`` is token ``p``.
    """

    name = "text"
    item_hooks = ("pooler.", "nsp_head.", "classifier.")

    def __init__(self, text_key: str = "text", tokens_key: str = "tokens") -> None:
        self.text_key = text_key
        self.tokens_key = tokens_key

    def _input_of(self, item: Any) -> Any:
        if isinstance(item, dict):
            if self.text_key in item:
                return item[self.text_key]
            if self.tokens_key in item:
                return item[self.tokens_key]
            raise ValueError(
                f"dict item has neither {self.text_key!r} nor {self.tokens_key!r} (keys: {sorted(item)}); "
                "pass TextAdapter(text_key=...) naming the field that holds the text"
            )
        return item

    def prepare(self, model: Any, items: list[Any]) -> PreparedBatch:
        from encoderlens.io.text import TextBatch

        inputs = [self._input_of(it) for it in items]
        is_text = [
            isinstance(x, str) or (isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str)) for x in inputs
        ]
        if all(is_text):
            batch = model.tokenize(inputs)
        elif not any(is_text):
            seqs = []
            for x in inputs:
                t = torch.as_tensor(x)
                if t.ndim != 1 or t.dtype.is_floating_point:
                    raise TypeError(
                        f"token items must be 1-D integer sequences, got {t.dtype} of shape {tuple(t.shape)}; "
                        "pass one item per sequence"
                    )
                seqs.append(t.long())
            if not seqs or min(len(s) for s in seqs) == 0:
                raise ValueError("got an empty token sequence; every item needs at least one token")
            tok = getattr(model, "tokenizer", None)
            pad_id = getattr(tok, "pad_token_id", None) or 0
            tokens = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=pad_id)
            mask = torch.zeros_like(tokens)
            for i, s in enumerate(seqs):
                mask[i, : len(s)] = 1
            batch = model.tokenize(tokens, one_zero_attention_mask=mask)
        else:
            raise ValueError("a batch mixes texts and token sequences; pass one kind of item per harvest")
        assert isinstance(batch, TextBatch)
        return PreparedBatch(inputs=batch, masks={"token": batch.attention_mask.bool()})

    def forward(self, model: Any, batch: PreparedBatch) -> None:
        b = batch.inputs
        # "all" runs the heads too, so their hooks fire; harvest stops the forward after the last
        # requested hook (early_stop), so heads that no hook needs cost nothing
        return_type = "all" if (model.mlm_head is not None or model.pooler is not None) else "embeddings"
        model(
            b.tokens, return_type=return_type, one_zero_attention_mask=b.attention_mask, token_type_ids=b.token_type_ids
        )

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "text_key": self.text_key, "tokens_key": self.tokens_key}

    def alignment_info(self, model: Any) -> dict[str, dict[str, Any]]:
        return {"token": {"position": "token index in the tokenised item (model.to_str_tokens(item)[pos])"}}


class AudioAdapter(HarvestAdapter):
    """Speech encoders: items are waveforms (1-D arrays at the model's rate), file paths, or dicts.

    Dict items give the audio as ``item[audio_key]``: an array, a path, or a ``datasets``-style
    ``{"array": ..., "sampling_rate": ...}``; the source id as ``item["id"]``. Alignments:
    ``"frame"`` (transformer frames: rows of ``(batch, frames, ...)`` activations; frame ``p`` covers
    samples ``[p * hop, p * hop + receptive_field)``) and ``"sample"`` (``hook_waveform``).
    Conv-layer hooks before the last have their own lengths: reduce them with a transform.

    For checkpoints that take no attention mask (group-norm front ends such as HuBERT-base), padding
    changes shorter items' activations slightly, as in HF: use ``batch_size=1`` for exact per-item values.
    """

    name = "audio"
    item_hooks = ("classifier.",)

    def __init__(self, audio_key: str = "audio", sampling_rate: int | None = None, resample: bool = False) -> None:
        self.audio_key = audio_key
        self.sampling_rate = sampling_rate
        self.resample = resample

    def _input_of(self, item: Any) -> tuple[Any, int | None]:
        if isinstance(item, dict):
            if self.audio_key not in item:
                raise ValueError(
                    f"dict item has no {self.audio_key!r} (keys: {sorted(item)}); "
                    "pass AudioAdapter(audio_key=...) naming the field that holds the audio"
                )
            item = item[self.audio_key]
            if isinstance(item, dict) and "array" in item:
                return item["array"], item.get("sampling_rate")
        return item, None

    def prepare(self, model: Any, items: list[Any]) -> PreparedBatch:
        pairs = [self._input_of(it) for it in items]
        rates = {r for _, r in pairs if r is not None}
        if len(rates) > 1:
            raise ValueError(f"a batch mixes sampling rates {sorted(rates)}; resample the items to one rate first")
        rate = rates.pop() if rates else self.sampling_rate
        waves = [torch.as_tensor(w) if not isinstance(w, (str, os.PathLike)) else w for w, _ in pairs]
        batch = model.prepare(waves, sampling_rate=rate, resample=self.resample)
        n_frames = int(model.num_frames(batch.input_values.shape[1]))
        frames = model.frame_mask(batch.lengths.cpu(), n_frames).to(batch.input_values.device)
        return PreparedBatch(inputs=batch, masks={"frame": frames.bool(), "sample": batch.sample_mask.bool()})

    def forward(self, model: Any, batch: PreparedBatch) -> None:
        model(batch.inputs, return_type="all")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "audio_key": self.audio_key, "sampling_rate": self.sampling_rate}

    def alignment_info(self, model: Any) -> dict[str, dict[str, Any]]:
        return {
            "frame": {
                "position": "transformer frame index",
                "sampling_rate": int(model.sampling_rate),
                "hop_length": int(model.hop_length),
                "receptive_field": int(model.receptive_field),
                "span": "frame p covers samples [p * hop_length, p * hop_length + receptive_field)",
            },
            "sample": {
                "position": "sample index of the normalised, padded waveform",
                "sampling_rate": int(model.sampling_rate),
            },
        }


class Seq2SeqAdapter(HarvestAdapter):
    """Encoder-decoders (T5, BART): items are sources, ``(source, target)`` tuples, or dicts.

    Dict items give ``item[source_key]``, optionally ``item[target_key]`` and ``item["id"]``. Sources
    and targets are text or token ids. Without targets only the encoder runs (harvest ``encoder.*``
    hooks); with them the decoder runs by teacher forcing on
    :meth:`~encoderlens.models.encoder_decoder.HookedEncoderDecoder.decoder_input_from_targets`
    (the targets shifted right after the start token), so decoder position ``p`` is the decoder input
    whose output predicts target token ``p``: an item has one row per target token.

    Alignments: ``"token"`` (source tokens: ``encoder.*`` hooks and the decoder's cross-attention
    keys and values) and ``"target_token"`` (every other ``decoder.*`` hook).
    """

    name = "seq2seq"
    missing_hint = "decoder.* hooks need items with a target (a (source, target) tuple or a dict with a target)"

    def __init__(self, source_key: str = "source", target_key: str = "target") -> None:
        self.source_key = source_key
        self.target_key = target_key

    def _input_of(self, item: Any) -> tuple[Any, Any]:
        if isinstance(item, dict):
            if self.source_key not in item:
                raise ValueError(
                    f"dict item has no {self.source_key!r} (keys: {sorted(item)}); "
                    "pass Seq2SeqAdapter(source_key=..., target_key=...) naming the fields"
                )
            return item[self.source_key], item.get(self.target_key)
        if isinstance(item, tuple) and len(item) == 2:
            return item
        return item, None

    def prepare(self, model: Any, items: list[Any]) -> PreparedBatch:
        from encoderlens.io.text import TextBatch

        pairs = [self._input_of(it) for it in items]
        sources = [s for s, _ in pairs]
        targets = [t for _, t in pairs]
        if all(isinstance(x, str) for x in sources):
            enc = model.tokenize(sources)
        else:
            seqs = [torch.as_tensor(x).long() for x in sources]
            pad = model.cfg.pad_token_id if model.cfg.pad_token_id is not None else 0
            tokens = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=pad)
            mask = torch.zeros_like(tokens)
            for i, t in enumerate(seqs):
                mask[i, : len(t)] = 1
            enc = model.tokenize(tokens, one_zero_attention_mask=mask)
        masks = {"token": enc.attention_mask.bool()}
        dec: TextBatch | None = None
        if any(t is not None for t in targets):
            if any(t is None for t in targets):
                raise ValueError("some items have a target and some do not; give every item a target, or none")
            if all(isinstance(t, str) for t in targets):
                tgt = model.tokenize(targets)  # the same tokenisation decoder_input_from_targets applies
                tokens, tmask = tgt.tokens, tgt.attention_mask
            else:
                seqs = [torch.as_tensor(t).long() for t in targets]
                tokens = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=0)
                tmask = torch.zeros_like(tokens)
                for i, t in enumerate(seqs):
                    tmask[i, : len(t)] = 1
            dec = model.decoder_input_from_targets(tokens.cpu(), attention_mask=tmask.cpu())
            # rows: the decoder positions whose output predicts a real target token (one per target
            # token, however the batch was padded)
            masks["target_token"] = tmask.bool().to(enc.attention_mask.device)
        return PreparedBatch(inputs=(enc, dec), masks=masks)

    def forward(self, model: Any, batch: PreparedBatch) -> None:
        enc, dec = batch.inputs
        if dec is None:
            model(enc, return_type="encoder_output")
        else:
            model(enc, decoder_input=dec, return_type="all")

    def alignment(self, hook_name: str, act: Tensor, batch: PreparedBatch) -> tuple[str, int | None]:
        super().alignment(hook_name, act, batch)  # refuses pairwise and unalignable activations
        # source and target lengths may coincide: decide by name
        source_side = not hook_name.startswith("decoder.") or hook_name.endswith(
            (".cross_attn.hook_k", ".cross_attn.hook_v")
        )
        align = "token" if source_side else "target_token"
        mask = batch.masks.get(align)
        if mask is None or tuple(act.shape[:2]) != tuple(mask.shape):
            raise ValueError(
                f"{hook_name!r} of shape {tuple(act.shape)} does not follow the {align} positions "
                f"({None if mask is None else tuple(mask.shape)}); pass a transform for it"
            )
        return align, 1

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "source_key": self.source_key, "target_key": self.target_key}

    def alignment_info(self, model: Any) -> dict[str, dict[str, Any]]:
        return {
            "token": {"position": "source token index (encoder input)"},
            "target_token": {
                "position": "decoder input index: the start token, then the targets shifted right; "
                "its output predicts target token pos"
            },
        }


_ADAPTERS: dict[str, Callable[..., HarvestAdapter]] = {
    "encoder": TextAdapter,
    "audio_encoder": AudioAdapter,
    "encoder_decoder": Seq2SeqAdapter,
}


def register_adapter(family: str) -> Callable[[Callable[..., HarvestAdapter]], Callable[..., HarvestAdapter]]:
    """Decorator: the default adapter (class or factory) for models of ``family`` (``model.family``).

    The factory takes an optional first argument: the dict field that holds an item's input (the CLI's
    ``--field``).
    """

    def deco(factory: Callable[..., HarvestAdapter]) -> Callable[..., HarvestAdapter]:
        _ADAPTERS[family] = factory
        return factory

    return deco


def default_adapter(model: Any, *args: Any) -> HarvestAdapter:
    """The registered adapter for ``model.family``, built with ``args`` (e.g. the item field name)."""
    family = getattr(model, "family", "")
    if family not in _ADAPTERS:
        raise ValueError(
            f"no harvest adapter for model family {family!r} (known: {sorted(_ADAPTERS)}); "
            "pass adapter=... (a HarvestAdapter subclass instance)"
        )
    return _ADAPTERS[family](*args)


# ---------------------------------------------------------------------------------------------- files
def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _save_shard_atomic(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _to_runs(indices: Sequence[int]) -> list[list[int]]:
    """Sorted ints -> ``[[start, stop, step], ...]`` (Python ``range`` arguments)."""
    runs: list[list[int]] = []
    i = 0
    n = len(indices)
    while i < n:
        start = indices[i]
        if i + 1 < n:
            step = indices[i + 1] - start
            j = i + 1
            while j + 1 < n and indices[j + 1] - indices[j] == step:
                j += 1
            runs.append([start, indices[j] + 1, step])
            i = j + 1
        else:
            runs.append([start, start + 1, 1])
            i += 1
    return runs


def _from_runs(runs: Iterable[Sequence[int]]) -> Iterator[int]:
    for start, stop, step in runs:
        yield from range(start, stop, step)


def _rank_file(rank: int) -> str:
    return f"rank{rank:03d}"


# ---------------------------------------------------------------------------------------------- harvest
class _StopForward(Exception):
    """Raised inside the last needed hook to skip the rest of the forward."""


@dataclass
class _Buffer:
    """Rows of the shard being filled (already on the CPU, in the storage dtype)."""

    acts: dict[str, list[Tensor]] = field(default_factory=dict)
    rows: dict[str, dict[str, list[Tensor]]] = field(default_factory=dict)
    items: list[int] = field(default_factory=list)
    ids: list[Any] = field(default_factory=list)
    nbytes: int = 0

    def clear(self) -> None:
        self.acts, self.rows, self.items, self.ids, self.nbytes = {}, {}, [], [], 0


def _dist_info(rank: int | None, world_size: int | None) -> tuple[int, int, bool]:
    dist_on = torch.distributed.is_available() and torch.distributed.is_initialized()
    if rank is None:
        rank = torch.distributed.get_rank() if dist_on else 0
    if world_size is None:
        world_size = torch.distributed.get_world_size() if dist_on else 1
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
    return rank, world_size, dist_on


def _resolve_hooks(model: Any, hooks: str | Sequence[str]) -> list[str]:
    if isinstance(hooks, str):
        hooks = [hooks]
    if not isinstance(hooks, Sequence) or not hooks or not all(isinstance(h, str) for h in hooks):
        raise TypeError(f"hooks must be a non-empty list of hook names (globs allowed), got {hooks!r}")
    wanted: set[str] = set()
    for h in hooks:
        hits = [n for n in model.hook_dict if n == h or fnmatch.fnmatchcase(n, h)]
        if not hits:
            model.check_hook_name(h)  # raises with close matches
        wanted.update(hits)
    return [n for n in model.hook_dict if n in wanted]  # model order


def harvest(
    model: Any,
    data: Iterable[Any],
    hooks: str | Sequence[str],
    out_dir: str | os.PathLike[str],
    batch_size: int = 32,
    *,
    dtype: str | torch.dtype = "fp16",
    adapter: HarvestAdapter | None = None,
    include_padding: bool = False,
    shard_mb: float = 256.0,
    items_per_shard: int | None = None,
    transforms: dict[str, Callable[[Tensor, PreparedBatch], Tensor]] | None = None,
    max_items: int | None = None,
    resume: bool = True,
    progress: bool = True,
    rank: int | None = None,
    world_size: int | None = None,
    _after_shard: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run ``model`` over ``data`` and store the activations at ``hooks`` in sharded safetensors files.

    Memory stays bounded whatever the dataset size: the model, one batch's forward, and at most
    ``shard_mb`` of buffered rows (a shard is written when the buffer reaches it, at a batch boundary).

    Args:
        model: An encoderlens model (its ``family`` picks the default adapter).
        data: Items, streamed once in order: a list, a generator, a ``datasets`` dataset... For text
            encoders: strings, ``(a, b)`` pairs, token id sequences, or dicts with ``"text"`` (or
            ``"tokens"``) and optionally ``"id"``; for speech encoders: waveforms, file paths, or dicts
            with ``"audio"`` and optionally ``"id"``. The order must be the same when resuming.
        hooks: Hook names or globs (``"blocks.*.hook_resid_post"``).
        out_dir: Output folder (created). An existing harvest there is resumed.
        batch_size: Items per forward.
        dtype: Storage dtype: ``"fp16"``, ``"bf16"`` or ``"fp32"``. fp16 overflows above 65504
            (a warning says so); bf16 keeps the range at lower precision.
        adapter: Model-specific batching and alignment; default from the model's family.
        include_padding: False: padding positions are not stored. True: every position is stored
            and the alignment gets a ``pad`` flag per row.
        shard_mb: Target shard size in MiB.
        items_per_shard: Also start a new shard after this many items.
        transforms: Hook name -> ``fn(activation, batch) -> tensor`` applied before storing, e.g. to
            reduce an attention pattern ``(batch, head, q, k)`` to ``(batch, q, head)``.
        max_items: Stop after this many items of ``data`` (global count, before splitting by rank).
        resume: Continue a harvest found in ``out_dir`` (it must have the same settings). False:
            refuse to touch a folder that already holds one.
        progress: Show a tqdm progress bar.
        rank, world_size: Default from ``torch.distributed`` when it is initialised (torchrun), else
            0 and 1. Rank ``r`` takes items ``i`` with ``i % world_size == r``.

    Returns:
        The manifest (as written to ``out_dir/manifest.json``; see docs/performance.md).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if shard_mb <= 0:
        raise ValueError(f"shard_mb must be positive, got {shard_mb!r}")
    if items_per_shard is not None and (not isinstance(items_per_shard, int) or items_per_shard < 1):
        raise ValueError(f"items_per_shard must be a positive int or None, got {items_per_shard!r}")
    if max_items is not None and (not isinstance(max_items, int) or max_items < 0):
        raise ValueError(f"max_items must be a non-negative int or None, got {max_items!r}")
    if isinstance(data, (str, bytes)):
        raise TypeError("data must be an iterable of items, got a single string; wrap it in a list")
    store_dtype = storage_dtype(dtype)
    adapter = adapter if adapter is not None else default_adapter(model)
    names = _resolve_hooks(model, hooks)
    transforms = dict(transforms or {})
    for t in transforms:
        if t not in names:
            raise ValueError(f"transform given for {t!r}, which is not among the harvested hooks {names}")
    rank, world_size, dist_on = _dist_info(rank, world_size)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "_progress").mkdir(exist_ok=True)
    settings = {
        "hooks": names,
        "dtype": _dtype_name(store_dtype),
        "include_padding": bool(include_padding),
        "adapter": adapter.describe(),
        "transforms": sorted(transforms),
    }
    model_info = {
        "class": type(model).__name__,
        "family": getattr(model, "family", ""),
        "architecture": getattr(getattr(model, "cfg", None), "architecture", ""),
    }
    state = _load_state(out, settings, resume)
    mine = state.get(rank, {"rank": rank, "shards": [], "hooks": {}})
    mine.update(settings=settings, model=model_info, alignment_info=adapter.alignment_info(model), done=False)
    mine.pop("n_seen", None)
    committed: set[int] = set()
    for st in state.values():
        for sh in st["shards"]:
            committed.update(_from_runs(sh["items"]))
    _remove_orphans(out, rank, {sh["file"] for sh in mine["shards"]})
    progress_path = out / "_progress" / f"{_rank_file(rank)}.json"
    _write_json_atomic(progress_path, mine)
    if rank == 0:
        _write_manifest(out, final=False)

    hook_info: dict[str, dict[str, Any]] = mine["hooks"]
    buf = _Buffer()
    shard_limit = int(shard_mb * 2**20)
    fired: set[str] = set()
    current: dict[str, Any] = {}
    warned_overflow: set[str] = set()

    def make_hook(name: str) -> Callable[..., None]:
        def hook(act: Tensor, hook: Any) -> None:
            batch: PreparedBatch = current["batch"]
            x = act.detach()
            if name in transforms:
                x = transforms[name](x, batch)
            align, axis = adapter.alignment(name, x, batch)
            if axis is not None and axis != 1:
                x = x.movedim(axis, 1)
            if align == "item":
                rows = x
            elif include_padding:
                rows = x.flatten(0, 1)
            else:
                rows = x[batch.masks[align].to(x.device)]
            stored = rows.to("cpu", store_dtype)
            overflow_check = store_dtype != rows.dtype and name not in warned_overflow
            if overflow_check and bool(torch.isinf(stored).any()) and not bool(torch.isinf(rows).any()):
                warned_overflow.add(name)
                warnings.warn(
                    f"{name}: values overflow {_dtype_name(store_dtype)} storage (stored as inf); "
                    "harvest with dtype='bf16' or 'fp32'",
                    stacklevel=2,
                )
            feat = list(stored.shape[1:])
            info = {
                "alignment": align,
                "shape": feat,
                "dtype": _dtype_name(store_dtype),
                "source_dtype": _dtype_name(x.dtype),
            }
            prev = hook_info.get(name)
            if prev is not None and prev != info:
                raise ValueError(f"{name}: activation layout changed between batches: {prev} then {info}")
            hook_info[name] = info
            current["acts"][name] = stored
            current["aligns"].add(align)
            fired.add(name)
            if adapter.early_stop and len(fired) == len(names):
                raise _StopForward

        return hook

    fwd_hooks = [(n, make_hook(n)) for n in names]

    def run_batch(items: list[Any], idx: list[int]) -> None:
        batch = adapter.prepare(model, items)
        current.update(batch=batch, acts={}, aligns=set())
        fired.clear()
        with torch.inference_mode(), model.hooks(fwd_hooks=fwd_hooks), contextlib.suppress(_StopForward):
            adapter.forward(model, batch)
        missing = [n for n in names if n not in current["acts"]]
        if missing:
            raise RuntimeError(f"hooks {missing} did not fire during the forward; {adapter.missing_hint}")
        for name in names:
            buf.acts.setdefault(name, []).append(current["acts"][name])
            buf.nbytes += current["acts"][name].numel() * current["acts"][name].element_size()
        idx_t = torch.tensor(idx, dtype=torch.int64)
        for align in current["aligns"]:
            cols = buf.rows.setdefault(align, {})
            if align == "item":
                cols.setdefault("item", []).append(idx_t)
                continue
            mask = batch.masks[align].cpu()
            b, p = mask.shape
            item_col = idx_t[:, None].expand(b, p)
            pos_col = torch.arange(p, dtype=torch.int32)[None].expand(b, p)
            if include_padding:
                cols.setdefault("item", []).append(item_col.reshape(-1))
                cols.setdefault("pos", []).append(pos_col.reshape(-1))
                cols.setdefault("pad", []).append((~mask).reshape(-1))
            else:
                cols.setdefault("item", []).append(item_col[mask])
                cols.setdefault("pos", []).append(pos_col[mask])
        buf.items.extend(idx)
        buf.ids.extend(current["ids"])

    def flush() -> None:
        if not buf.items:
            return
        k = len(mine["shards"])
        fname = f"{_rank_file(rank)}-{k:05d}.safetensors"
        tensors: dict[str, Tensor] = {name: torch.cat(parts) for name, parts in buf.acts.items()}
        n_rows: dict[str, int] = {}
        for align, cols in buf.rows.items():
            for col, parts in cols.items():
                tensors[f"_rows.{align}.{col}"] = torch.cat(parts)
            n_rows[align] = int(tensors[f"_rows.{align}.item"].shape[0])
        tensors["_items.index"] = torch.tensor(buf.items, dtype=torch.int64)
        ids = [i if isinstance(i, str) else int(i) if isinstance(i, numbers.Integral) else str(i) for i in buf.ids]
        _save_shard_atomic(out / fname, tensors, {"format": FORMAT, "item_ids": json.dumps(ids)})
        mine["shards"].append(
            {
                "file": fname,
                "rank": rank,
                "n_items": len(buf.items),
                "items": _to_runs(sorted(buf.items)),
                "n_rows": n_rows,
                "bytes": (out / fname).stat().st_size,
            }
        )
        _write_json_atomic(progress_path, mine)
        if rank == 0:
            _write_manifest(out, final=False)
        buf.clear()
        if _after_shard is not None:
            _after_shard(len(mine["shards"]))

    total = _len_or_none(data)
    if total is not None and max_items is not None:
        total = min(total, max_items)
    mine_total = None if total is None else len(range(rank, total, world_size))
    done_before = sum(1 for i in committed if i % world_size == rank and (total is None or i < total))
    bar = _progress_bar(progress, mine_total, done_before, rank, world_size)
    pending: list[Any] = []
    pending_idx: list[int] = []
    pending_ids: list[Any] = []
    n_seen = 0
    try:
        for i, item in enumerate(data):
            if max_items is not None and i >= max_items:
                break
            n_seen = i + 1
            if i % world_size != rank or i in committed:
                continue
            pending.append(item)
            pending_idx.append(i)
            pending_ids.append(adapter.item_id(item, i))
            if len(pending) == batch_size:
                current["ids"] = pending_ids
                run_batch(pending, pending_idx)
                bar.update(len(pending))
                pending, pending_idx, pending_ids = [], [], []
                if buf.nbytes >= shard_limit or (items_per_shard is not None and len(buf.items) >= items_per_shard):
                    flush()
        if pending:
            current["ids"] = pending_ids
            run_batch(pending, pending_idx)
            bar.update(len(pending))
        flush()
    finally:
        bar.close()
    mine.update(done=True, n_seen=n_seen)
    _write_json_atomic(progress_path, mine)

    if dist_on and world_size > 1:
        # every rank has committed its share: rank 0 merges one manifest, which must cover every item
        torch.distributed.barrier()
        if rank == 0:
            _write_manifest(out, final=True, world_size=world_size, strict=True)
        torch.distributed.barrier()
        return json.loads((out / "manifest.json").read_text())
    # one process, or ranks run separately without torch.distributed: whoever finishes last
    # writes the complete manifest (each merge reads every rank's progress file)
    return _write_manifest(out, final=True, world_size=world_size)


def _len_or_none(data: Any) -> int | None:
    try:
        return len(data)
    except TypeError:
        return None


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(enabled: bool, total: int | None, initial: int, rank: int, world_size: int) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    desc = "harvest" if world_size == 1 else f"harvest rank {rank}/{world_size}"
    return tqdm(total=total, initial=initial, desc=desc, unit="item", position=rank, dynamic_ncols=True)


def _load_state(out: Path, settings: dict[str, Any], resume: bool) -> dict[int, dict[str, Any]]:
    """Every rank's progress file in ``out`` (from this run or earlier ones), checked against ``settings``."""
    state: dict[int, dict[str, Any]] = {}
    for p in sorted((out / "_progress").glob("rank*.json")):
        st = json.loads(p.read_text())
        state[int(st["rank"])] = st
    if state and not resume:
        raise ValueError(
            f"{out} already holds a harvest; pass resume=True to continue it, or an empty out_dir to start anew"
        )
    for st in state.values():
        if st.get("settings") != settings:
            raise ValueError(
                f"{out} holds a harvest with other settings ({st.get('settings')}) than this one ({settings}); "
                "resume it with the same hooks, dtype, padding and adapter, or use another out_dir"
            )
    return state


def _remove_orphans(out: Path, rank: int, keep: set[str]) -> None:
    """Delete this rank's shard files that no progress file lists, and temporary files (from a kill)."""
    prefix = _rank_file(rank)
    for p in out.glob(f"{prefix}-*.safetensors"):
        if p.name not in keep:
            p.unlink()
    for p in out.glob(f".{prefix}-*.tmp-*"):
        p.unlink()


def _write_manifest(out: Path, final: bool, world_size: int | None = None, strict: bool = False) -> dict[str, Any]:
    """Merge every rank's progress file into ``manifest.json`` (atomically).

    ``complete`` is true when ``final`` and the stored items are exactly ``0 .. n-1`` for the item
    count ``n`` the finished ranks saw. ``strict``: raise if not complete. Raises if an item is
    stored twice.
    """
    states = [json.loads(p.read_text()) for p in sorted((out / "_progress").glob("rank*.json"))]
    shards = sorted((sh for st in states for sh in st["shards"]), key=lambda sh: (sh["items"][0][0], sh["file"]))
    seen: set[int] = set()
    for sh in shards:
        items = set(_from_runs(sh["items"]))
        dup = seen & items
        if dup:
            raise RuntimeError(
                f"items {sorted(dup)[:10]} are stored twice (again in {sh['file']}); the harvest is corrupt"
            )
        seen |= items
    hooks: dict[str, Any] = {}
    for st in states:
        hooks.update(st.get("hooks", {}))
    n_rows: dict[str, int] = {}
    for sh in shards:
        for a, n in sh["n_rows"].items():
            n_rows[a] = n_rows.get(a, 0) + n
    n_seen = [st["n_seen"] for st in states if st.get("done") and "n_seen" in st]
    n_total = max(n_seen) if n_seen else None
    complete = final and n_total is not None and seen == set(range(n_total))
    if strict and not complete:
        missing = sorted(set(range(n_total or 0)) - seen)[:10]
        raise RuntimeError(f"harvest incomplete: {len(seen)} of {n_total} items stored (missing e.g. {missing})")
    first = states[0] if states else {}
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "complete": complete,
        "model": first.get("model", {}),
        "settings": first.get("settings", {}),
        "world_size": world_size,
        "n_items": len(seen),
        "n_items_expected": n_total,
        "n_rows": n_rows,
        "hooks": {n: hooks[n] for n in first.get("settings", {}).get("hooks", []) if n in hooks},
        "alignments": _alignment_doc(
            n_rows, bool(first.get("settings", {}).get("include_padding")), first.get("alignment_info", {})
        ),
        "shards": shards,
    }
    _write_json_atomic(out / "manifest.json", manifest)
    return manifest


def _alignment_doc(n_rows: dict[str, int], include_padding: bool, info: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for a in n_rows:
        cols: dict[str, Any] = {"item": f"_rows.{a}.item: int64 global item index (position in the input stream)"}
        if a != "item":
            cols["pos"] = f"_rows.{a}.pos: int32 position within the item"
            if include_padding:
                cols["pad"] = f"_rows.{a}.pad: bool, True where the row is a padding position"
        cols.update(info.get(a, {}))
        doc[a] = cols
    return doc


# ---------------------------------------------------------------------------------------------- reading
class Harvest:
    """A harvest folder opened for reading (see :func:`load_harvest`)."""

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.path = Path(out_dir)
        mpath = self.path / "manifest.json"
        if not mpath.exists():
            raise ValueError(f"{self.path} has no manifest.json; is it a harvest output folder?")
        self.manifest: dict[str, Any] = json.loads(mpath.read_text())
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{mpath} is not an encoderlens harvest manifest")

    @property
    def hooks(self) -> list[str]:
        return list(self.manifest["hooks"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    def shard_paths(self) -> list[Path]:
        return [self.path / sh["file"] for sh in self.manifest["shards"]]

    def iter_shards(self) -> Iterator[dict[str, Tensor]]:
        """Each shard's tensors in turn (bounded memory)."""
        from safetensors.torch import load_file

        for p in self.shard_paths():
            yield load_file(str(p))

    def _order(self, align: str) -> tuple[list[dict[str, Tensor]], Tensor]:
        from safetensors.torch import load_file

        cols = [load_file(str(p)) for p in self.shard_paths()]
        item = torch.cat([c[f"_rows.{align}.item"] for c in cols]) if cols else torch.zeros(0, dtype=torch.long)
        if align == "item":
            order = torch.argsort(item, stable=True)
        else:
            pos = torch.cat([c[f"_rows.{align}.pos"] for c in cols]).long()
            order = torch.argsort(item * (int(pos.max()) + 1 if len(pos) else 1) + pos, stable=True)
        return cols, order

    def load(self, hook: str) -> Tensor:
        """All rows of one hook, sorted by (item, position). Loads every shard: for small harvests."""
        if hook not in self.manifest["hooks"]:
            raise ValueError(f"{hook!r} was not harvested; harvested: {self.hooks}")
        align = self.manifest["hooks"][hook]["alignment"]
        cols, order = self._order(align)
        return torch.cat([c[hook] for c in cols])[order]

    def rows(self, alignment: str = "token") -> dict[str, Tensor]:
        """Alignment columns (``item``, ``pos``, ``pad``) sorted like :meth:`load`."""
        cols, order = self._order(alignment)
        keys = [k.rsplit(".", 1)[-1] for k in cols[0] if k.startswith(f"_rows.{alignment}.")] if cols else []
        return {k: torch.cat([c[f"_rows.{alignment}.{k}"] for c in cols])[order] for k in keys}

    def item_ids(self) -> dict[int, Any]:
        """Global item index -> source id."""
        from safetensors import safe_open

        out: dict[int, Any] = {}
        for p in self.shard_paths():
            with safe_open(str(p), "pt") as f:
                meta = f.metadata() or {}
                idx = f.get_tensor("_items.index").tolist()
            out.update(zip(idx, json.loads(meta.get("item_ids", "[]"))))
        return dict(sorted(out.items()))


def load_harvest(out_dir: str | os.PathLike[str]) -> Harvest:
    """Open a harvest folder: ``.manifest``, ``.load(hook)``, ``.rows(alignment)``, ``.iter_shards()``."""
    return Harvest(out_dir)


__all__ = [
    "AudioAdapter",
    "Harvest",
    "HarvestAdapter",
    "PreparedBatch",
    "Seq2SeqAdapter",
    "TextAdapter",
    "default_adapter",
    "harvest",
    "load_harvest",
    "register_adapter",
    "storage_dtype",
]


# ---------------------------------------------------------------------------------------------- CLI
def _read_items(path: str, field: str) -> Iterator[Any]:
    """Stream items from a ``.jsonl`` (one JSON object or string per line) or a text file (one input per
    line: a text, or an audio path; item id = line number)."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"input file {path!r} does not exist")
    jsonl = p.suffix in (".jsonl", ".json")
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if jsonl:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n + 1}: not valid JSON ({e})") from None
            else:
                yield {"id": n, field: line}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m encoderlens.harvest`` (also under ``torchrun --nproc_per_node N -m encoderlens.harvest``)."""
    ap = argparse.ArgumentParser(
        prog="python -m encoderlens.harvest",
        description="Harvest activations to sharded safetensors files (resumable; torchrun for several processes).",
    )
    ap.add_argument("model", help="checkpoint folder or hub name (anything encoderlens.from_pretrained takes)")
    ap.add_argument(
        "--input",
        required=True,
        help=".jsonl (one object per line: the input under --field, optional 'id'; seq2seq also 'target') "
        "or .txt (one text or audio path per line)",
    )
    ap.add_argument("--hooks", required=True, nargs="+", help="hook names or globs, e.g. 'blocks.*.hook_resid_post'")
    ap.add_argument("--out", required=True, help="output folder (resumed if it holds a harvest)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--dtype", default="fp16", help="storage dtype: fp16, bf16 or fp32")
    ap.add_argument("--include-padding", action="store_true", help="store padding positions too, flagged")
    ap.add_argument("--shard-mb", type=float, default=256.0)
    ap.add_argument("--items-per-shard", type=int, default=None)
    ap.add_argument("--max-items", type=int, default=None)
    ap.add_argument(
        "--field",
        default=None,
        help="item field holding the input (default: 'text' for text, 'audio' for speech, 'source' for seq2seq)",
    )
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    import encoderlens

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    started_pg = False
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
        started_pg = True
    after_shard = None
    kill_after = os.environ.get("ENCODERLENS_HARVEST_TEST_EXIT_AFTER_SHARDS")  # test-only: simulate a kill
    if kill_after:

        def after_shard(n: int) -> None:
            if n >= int(kill_after):
                os._exit(17)

    try:
        model = encoderlens.from_pretrained(args.model, device=device)
        adapter = default_adapter(model, *([args.field] if args.field else []))
        item_field = str(
            args.field
            or getattr(adapter, "text_key", None)
            or getattr(adapter, "audio_key", None)
            or getattr(adapter, "source_key", "input")
        )
        manifest = harvest(
            model,
            _read_items(args.input, item_field),
            args.hooks,
            args.out,
            args.batch_size,
            dtype=args.dtype,
            adapter=adapter,
            include_padding=args.include_padding,
            shard_mb=args.shard_mb,
            items_per_shard=args.items_per_shard,
            max_items=args.max_items,
            progress=not args.no_progress,
            _after_shard=after_shard,
        )
    finally:
        if started_pg:
            torch.distributed.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"harvested {manifest['n_items']} items, {sum(manifest['n_rows'].values())} rows, "
            f"{len(manifest['shards'])} shards -> {Path(args.out) / 'manifest.json'}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
