"""The harvest loop: stream items through the model and write the hooked activations in bounded memory.

Shards are written atomically (temporary name, then ``os.replace``), and each rank's progress file
(:mod:`encoderlens.harvest.manifest`) is replaced after every shard, so a kill at any moment leaves a
state a restart resumes from.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import numbers
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from encoderlens.harvest.alignment import ITEM, align, alignment_info, hook_streams
from encoderlens.harvest.fingerprint import fingerprint
from encoderlens.harvest.items import ItemFields, item_digest
from encoderlens.harvest.lock import FolderLock
from encoderlens.harvest.manifest import (
    FORMAT,
    StoredItems,
    from_runs,
    load_state,
    rank_file,
    remove_orphans,
    shard_digest,
    to_runs,
    write_json_atomic,
    write_manifest,
)
from encoderlens.models.base import HookedModel
from encoderlens.models.contract import Prepared

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


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's floating parameters (its embedding's when they differ), float32 if none."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``"float16"``."""
    return str(dtype).removeprefix("torch.")


def save_shard_atomic(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """Write one safetensors shard atomically (temporary file, fsync, ``os.replace``).

    The bytes are serialised in memory and written by this process, so the only temporary file is ours
    (``.{name}.tmp-{pid}``, which a resume recognises and removes). ``safetensors.torch.save_file`` writes
    through a temporary file of its own (``.tmpXXXXXX``, mode 0600) that a killed writer leaves behind
    and nothing cleans. The file gets the mode the umask gives new files. A failed write leaves no
    temporary file.
    """
    from safetensors.torch import save

    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write_synced(tmp, data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file at ``path`` and wait until it is on disk (``fsync``)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_error(path: Path, e: OSError) -> OSError:
    """An OSError that says which file could not be written, why, and what to do."""
    fix = {
        errno.ENOSPC: "free space on that file system (or pass another out_dir)",
        errno.EDQUOT: "free space within your quota (or pass another out_dir)",
        errno.EACCES: "make the folder writable (or pass another out_dir)",
        errno.EPERM: "make the folder writable (or pass another out_dir)",
        errno.EROFS: "the file system is read-only: pass an out_dir on a writable one",
    }.get(e.errno or 0, "fix the cause")
    return OSError(
        e.errno,
        f"harvest could not write {path} ({e.strerror or e}); {fix}, then rerun the same call: it resumes from the "
        "last committed shard, nothing already stored is lost",
    )


def _guarded(path: Path, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, with a failed write reported by :func:`_write_error`."""
    try:
        return fn(*args)
    except OSError as e:
        raise _write_error(path, e) from e


class _Releaser:
    def __init__(self, lock: FolderLock) -> None:
        self.lock = lock

    def close(self) -> None:
        self.lock.release()


class _StopForward(Exception):
    """Raised inside the last needed hook to skip the rest of the forward."""


@dataclass
class _Buffer:
    """Rows of the shard being filled (already on the CPU, in the storage dtype)."""

    acts: dict[str, list[Tensor]] = field(default_factory=dict)
    rows: dict[str, dict[str, list[Tensor]]] = field(default_factory=dict)
    items: list[int] = field(default_factory=list)
    ids: list[Any] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)
    nbytes: int = 0

    def clear(self) -> None:
        self.acts, self.rows, self.items, self.ids, self.digests, self.nbytes = {}, {}, [], [], [], 0


def _dist_info(rank: int | None, world_size: int | None) -> tuple[int, int, bool]:
    dist_on = torch.distributed.is_available() and torch.distributed.is_initialized()
    if rank is None:
        rank = torch.distributed.get_rank() if dist_on else 0
    if world_size is None:
        world_size = torch.distributed.get_world_size() if dist_on else 1
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
    return rank, world_size, dist_on


def _resolve_hooks(model: HookedModel, hooks: str | Sequence[str]) -> list[str]:
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
    model: HookedModel,
    data: Iterable[Any],
    hooks: str | Sequence[str],
    out_dir: str | os.PathLike[str],
    batch_size: int = 32,
    *,
    dtype: str | torch.dtype | None = None,
    items: ItemFields | None = None,
    input_key: str | None = None,
    return_type: str | None = None,
    include_padding: bool = False,
    exclude_special_tokens: bool | Sequence[int] = False,
    shard_mb: float = 256.0,
    items_per_shard: int | None = None,
    transforms: dict[str, Callable[[Tensor, Prepared], Tensor]] | None = None,
    max_items: int | None = None,
    resume: bool = True,
    progress: bool = True,
    rank: int | None = None,
    world_size: int | None = None,
) -> dict[str, Any]:
    """Run ``model`` over ``data`` and store the activations at ``hooks`` in sharded safetensors files.

    Memory stays bounded whatever the dataset size: the model, one batch's forward, and at most
    ``shard_mb`` of buffered rows (a shard is written when the buffer reaches it, at a batch boundary).

    Args:
        model: An encoderlens model (any family: items go through ``model.prepare_input``).
        data: Items, streamed once in order: a list, a generator, a ``datasets`` dataset... Each item is
            what ``model.prepare_input`` takes for one example (a string, an ``(a, b)`` pair, token ids, a
            waveform or audio path), or a dict with it under ``"text"`` / ``"tokens"`` / ``"audio"`` /
            ``"source"`` / ``"input"`` (or ``input_key``), an optional ``"id"``, and for encoder-decoders a
            ``"target"`` (teacher forcing: target text, or decoder ids used as given); see
            :class:`~encoderlens.harvest.items.ItemFields`. The order must be the same when resuming.
        hooks: Hook names or globs (``"blocks.*.hook_resid_post"``).
        out_dir: Output folder (created). An existing harvest there is resumed.
        batch_size: Items per forward.
        dtype: Storage dtype: None (default) keeps the model's dtype (a bfloat16 model writes
            bfloat16 shards, no conversion); ``"fp16"``, ``"bf16"`` or ``"fp32"`` convert. fp16
            overflows above 65504 (a warning says so); bf16 keeps the range at lower precision.
        items: How dict items name their input and per-item options (default :class:`ItemFields`).
        input_key: Shortcut for ``ItemFields(input_key=...)``.
        return_type: Forward ``return_type`` (default: the model's primary output). Hooks of heads the
            primary output does not run (a pooler) need ``"all"``. The forward stops after the last
            requested hook has fired, whatever it is.
        include_padding: False: padding positions are not stored. True: every position is stored
            and the alignment gets a ``pad`` flag per row.
        exclude_special_tokens: Also leave out positions holding special tokens (SAELens's name): True for
            the tokenizer's ``all_special_ids`` ([CLS], [SEP]...), or a list of token ids. For training
            SAEs on content tokens; token streams only, and not with ``include_padding``.
        shard_mb: Target shard size in MiB.
        items_per_shard: Also start a new shard after this many items.
        transforms: Hook name -> ``fn(activation, prepared batch) -> tensor`` applied before storing, e.g. to
            reduce an attention pattern ``(batch, head, q, k)`` to ``(batch, q, head)``.
        max_items: Stop after this many items of ``data`` (global count, before splitting by rank).
        resume: Continue a harvest found in ``out_dir`` (it must have the same settings, ``batch_size``
            included: a model that runs its padding unmasked gives batch-dependent rows). False:
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
    store_dtype = storage_dtype(dtype) if dtype is not None else model_dtype(model)
    if items is not None and input_key is not None:
        raise ValueError("pass input_key inside items=ItemFields(...) or alone, not both")
    fields_ = (items if items is not None else ItemFields(input_key=input_key)).for_model(model)
    names = _resolve_hooks(model, hooks)
    streams = hook_streams(model, names)
    transforms = dict(transforms or {})
    for t in transforms:
        if t not in names:
            raise ValueError(f"transform given for {t!r}, which is not among the harvested hooks {names}")
    rank, world_size, dist_on = _dist_info(rank, world_size)
    special = _special_ids(model, exclude_special_tokens, include_padding)

    def keep(batch: Prepared, stream: Any) -> Tensor:
        mask = batch.mask(stream).bool()
        if special is None:
            return mask
        ids = batch.token_ids.get(stream)
        if ids is None:
            raise ValueError(
                f"exclude_special_tokens needs token positions; stream {stream!r} has none (audio frames?)"
            )
        return mask & ~torch.isin(ids.to(mask.device), special.to(mask.device))

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "_progress").mkdir(exist_ok=True)
        lock = FolderLock(out, rank, world_size).acquire()
    except OSError as e:
        raise _write_error(Path(e.filename) if e.filename else out / "_progress", e) from e
    with contextlib.closing(_Releaser(lock)):
        settings = {
            "hooks": names,
            # a padded batch is exact only where the model masks its padding (not e.g. group-norm wav2vec2
            # checkpoints, which HF runs unmasked): stored items may depend on the batch they ran in
            "batch_size": batch_size,
            "dtype": dtype_name(store_dtype),
            "include_padding": bool(include_padding),
            "items": fields_.describe(),
            "return_type": return_type,
            "transforms": sorted(transforms),
        }
        if special is not None:
            settings["exclude_special_tokens"] = special.tolist()
        model_info = fingerprint(model)
        state = load_state(out, settings, resume, model_info)
        mine = state.get(rank, {"rank": rank, "shards": [], "hooks": {}})
        mine.update(settings=settings, model=model_info, done=False)
        mine.setdefault("alignment_info", {})
        n_seen_before = int(mine.pop("n_seen", 0) or 0)
        committed: set[int] = set()
        for st in state.values():
            for sh in st["shards"]:
                committed.update(from_runs(sh["items"]))
        remove_orphans(out, rank, {sh["file"] for sh in mine["shards"]}, lock.is_free)
        progress_path = out / "_progress" / f"{rank_file(rank)}.json"
        _guarded(progress_path, write_json_atomic, progress_path, mine)
        if rank == 0:
            _guarded(out / "manifest.json", write_manifest, out, False)

        hook_info: dict[str, dict[str, Any]] = mine["hooks"]
        buf = _Buffer()
        shard_limit = int(shard_mb * 2**20)
        fired: set[str] = set()
        current: dict[str, Any] = {}
        warned_overflow: set[str] = set()

        def make_hook(name: str) -> Callable[..., None]:
            def hook(act: Tensor, hook: Any) -> None:
                batch: Prepared = current["batch"]
                x = act.detach()
                if name in transforms:
                    x = transforms[name](x, batch)
                alignment, stream = align(name, x, batch, streams[name], name in transforms)
                if alignment == ITEM:
                    rows = x
                elif include_padding:
                    rows = x.flatten(0, 1)
                else:
                    rows = x[keep(batch, stream).to(x.device)]
                stored = rows.to("cpu", store_dtype)
                overflow_check = store_dtype != rows.dtype and name not in warned_overflow
                if overflow_check and bool(torch.isinf(stored).any()) and not bool(torch.isinf(rows).any()):
                    warned_overflow.add(name)
                    warnings.warn(
                        f"{name}: values overflow {dtype_name(store_dtype)} storage (stored as inf); "
                        "harvest with dtype='bf16' or 'fp32'",
                        stacklevel=2,
                    )
                feat = list(stored.shape[1:])
                info = {
                    "alignment": alignment,
                    "shape": feat,
                    "dtype": dtype_name(store_dtype),
                    "source_dtype": dtype_name(x.dtype),
                }
                prev = hook_info.get(name)
                if prev is not None and prev != info:
                    raise ValueError(
                        f"{name}: activation layout changed between batches: {prev} then {info}; an activation whose "
                        "size follows the batch's padding (e.g. a waveform) needs transforms={name: fn} that makes it "
                        "(batch, pos, ...) on a stream's positions or (batch, features)"
                    )
                hook_info[name] = info
                current["acts"][name] = stored
                current["aligns"][alignment] = stream
                fired.add(name)
                if len(fired) == len(names):
                    raise _StopForward

            return hook

        fwd_hooks = [(n, make_hook(n)) for n in names]

        def run_batch(batch_items: list[Any], idx: list[int]) -> None:
            batch = fields_.prepare(model, batch_items)
            current.update(batch=batch, acts={}, aligns={})
            fired.clear()
            with torch.inference_mode(), contextlib.suppress(_StopForward):
                model.run_prepared(batch, return_type, fwd_hooks=fwd_hooks)
            missing = [n for n in names if n not in current["acts"]]
            if missing:
                rt = return_type if return_type is not None else model.default_return_type
                raise RuntimeError(
                    f"hooks {missing} did not fire during the forward (return_type={rt!r}, streams of this input: "
                    f"{list(batch.masks)}); pass return_type='all' for head hooks, or items with the inputs the "
                    "hooks' stream needs (e.g. a 'target' for decoder hooks)"
                )
            for alignment, stream in current["aligns"].items():
                if alignment != ITEM and alignment not in mine["alignment_info"]:
                    mine["alignment_info"][alignment] = alignment_info(batch, stream)
            for name in names:
                buf.acts.setdefault(name, []).append(current["acts"][name])
                buf.nbytes += current["acts"][name].numel() * current["acts"][name].element_size()
            idx_t = torch.tensor(idx, dtype=torch.int64)
            for alignment, stream in current["aligns"].items():
                cols = buf.rows.setdefault(alignment, {})
                if alignment == ITEM:
                    cols.setdefault("item", []).append(idx_t)
                    continue
                mask = keep(batch, stream).cpu()
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
            buf.digests.extend(current["digests"])

        def flush() -> None:
            if not buf.items:
                return
            k = len(mine["shards"])
            fname = f"{rank_file(rank)}-{k:05d}.safetensors"
            tensors: dict[str, Tensor] = {name: torch.cat(parts) for name, parts in buf.acts.items()}
            n_rows: dict[str, int] = {}
            for alignment, cols in buf.rows.items():
                for col, parts in cols.items():
                    tensors[f"_rows.{alignment}.{col}"] = torch.cat(parts)
                n_rows[alignment] = int(tensors[f"_rows.{alignment}.item"].shape[0])
            tensors["_items.index"] = torch.tensor(buf.items, dtype=torch.int64)
            ids = [i if isinstance(i, str) else int(i) if isinstance(i, numbers.Integral) else str(i) for i in buf.ids]
            lock.check_alive()
            try:
                save_shard_atomic(out / fname, tensors, {"format": FORMAT, "item_ids": json.dumps(ids)})
            except OSError as e:
                raise _write_error(out / fname, e) from e
            mine["shards"].append(
                {
                    "file": fname,
                    "rank": rank,
                    "n_items": len(buf.items),
                    "items": to_runs(sorted(buf.items)),
                    "digest": shard_digest(dict(zip(buf.items, buf.digests, strict=True))),
                    "n_rows": n_rows,
                    "bytes": (out / fname).stat().st_size,
                }
            )
            _guarded(progress_path, write_json_atomic, progress_path, mine)
            if rank == 0:
                _guarded(out / "manifest.json", write_manifest, out, False)
            buf.clear()

        total = _len_or_none(data)
        if total is not None and max_items is not None:
            total = min(total, max_items)
        mine_total = None if total is None else len(range(rank, total, world_size))
        done_before = sum(1 for i in committed if i % world_size == rank and (total is None or i < total))
        bar = _progress_bar(progress, mine_total, done_before, rank, world_size)
        pending: list[Any] = []
        pending_idx: list[int] = []
        pending_ids: list[Any] = []
        pending_digests: list[str] = []
        check = StoredItems(state.values())
        n_seen = 0
        try:
            for i, item in enumerate(data):
                if max_items is not None and i >= max_items:
                    break
                n_seen = i + 1
                if i in committed:
                    check.seen(i, item_digest(item), out)
                if i % world_size != rank or i in committed:
                    continue
                pending.append(item)
                pending_idx.append(i)
                pending_ids.append(fields_.item_id(item, i))
                pending_digests.append(item_digest(item))
                if len(pending) == batch_size:
                    current.update(ids=pending_ids, digests=pending_digests)
                    run_batch(pending, pending_idx)
                    bar.update(len(pending))
                    pending, pending_idx, pending_ids, pending_digests = [], [], [], []
                    if buf.nbytes >= shard_limit or (items_per_shard is not None and len(buf.items) >= items_per_shard):
                        flush()
            if pending:
                current.update(ids=pending_ids, digests=pending_digests)
                run_batch(pending, pending_idx)
                bar.update(len(pending))
            flush()
        finally:
            bar.close()
        if n_seen_before > n_seen:
            warnings.warn(
                f"{out} already holds items up to {n_seen_before} of an earlier run, more than the {n_seen} read now "
                f"(max_items={max_items}); keeping them all: the harvest stays complete for {n_seen_before} items",
                stacklevel=2,
            )
        mine.update(done=True, n_seen=max(n_seen, n_seen_before))
        _guarded(progress_path, write_json_atomic, progress_path, mine)

        if dist_on and world_size > 1:
            # every rank has committed its share: rank 0 merges one manifest, which must cover every item
            torch.distributed.barrier()
            if rank == 0:
                write_manifest(out, final=True, world_size=world_size, strict=True)
            torch.distributed.barrier()
            return json.loads((out / "manifest.json").read_text())
        # one process, or ranks run separately without torch.distributed: whoever finishes last
        # writes the complete manifest (each merge reads every rank's progress file)
        return _guarded(out / "manifest.json", write_manifest, out, True, world_size)


def _special_ids(model: HookedModel, exclude: bool | Sequence[int], include_padding: bool) -> Tensor | None:
    """The token ids ``exclude_special_tokens`` asks to leave out (None: keep every real position)."""
    if exclude is False:
        return None
    if include_padding:
        raise ValueError("exclude_special_tokens drops rows and include_padding keeps every row; pass one of them")
    if exclude is True:
        ids = getattr(model.tokenizer, "all_special_ids", None)
        if not ids:
            raise ValueError(
                "exclude_special_tokens=True reads the tokenizer's special tokens, and this model has no tokenizer; "
                "pass the ids to leave out, e.g. exclude_special_tokens=[101, 102]"
            )
    elif isinstance(exclude, Sequence) and not isinstance(exclude, str) and all(isinstance(i, int) for i in exclude):
        ids = list(exclude)
    else:
        raise TypeError(f"exclude_special_tokens must be True, False or a list of token ids, got {exclude!r}")
    return torch.tensor(sorted(set(ids)), dtype=torch.long)


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
