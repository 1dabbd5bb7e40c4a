"""The on-disk state of a harvest: atomic JSON files, item runs, per-rank progress files and the merged manifest.

What is not in a progress file does not exist: a shard is renamed into place first, then the rank's
progress file is replaced; :func:`remove_orphans` deletes what a kill between the two left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from encoderlens.harvest.fingerprint import differences

FORMAT = "encoderlens-harvest"
FORMAT_VERSION = 2
"""2: alignments named after the model's streams (``token``, ``frame``, ``encoder_token``...), items read
through the model contract (settings ``items`` and ``return_type`` instead of ``adapter``)."""


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (temporary file, fsync, ``os.replace``)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def to_runs(indices: Sequence[int]) -> list[list[int]]:
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


def from_runs(runs: Iterable[Sequence[int]]) -> Iterator[int]:
    """The ints of :func:`to_runs` runs, in order."""
    for start, stop, step in runs:
        yield from range(start, stop, step)


def rank_file(rank: int) -> str:
    """File name stem of a rank's shards and progress file: ``rank000``."""
    return f"rank{rank:03d}"


def load_state(
    out: Path, settings: dict[str, Any], resume: bool, model: dict[str, Any] | None = None
) -> dict[int, dict[str, Any]]:
    """Every rank's progress file in ``out`` (from this run or earlier ones), checked against ``settings``
    and the model's fingerprint (:mod:`encoderlens.harvest.fingerprint`)."""
    state: dict[int, dict[str, Any]] = {}
    for p in sorted((out / "_progress").glob("rank*.json")):
        st = json.loads(p.read_text())
        state[int(st["rank"])] = st
    if state and not resume:
        raise ValueError(
            f"{out} already holds a harvest; pass resume=True to continue it, or an empty out_dir to start anew"
        )
    for st in state.values():
        stored_settings = st.get("settings") or {}
        # folders written before the batch size was recorded resume at any batch size, as they did
        now = settings if "batch_size" in stored_settings else {k: v for k, v in settings.items() if k != "batch_size"}
        if stored_settings != now:
            raise ValueError(
                f"{out} holds a harvest with other settings ({st.get('settings')}) than this one ({settings}); "
                "resume it with the same hooks, dtype, batch_size, padding, item fields and return_type, or use another out_dir"
            )
        stored = st.get("model", {})
        diff = differences(stored, model) if model is not None else []
        if diff:
            detail = "; ".join(f"{k}: stored {stored.get(k)!r}, now {model.get(k)!r}" for k in diff if model)
            raise ValueError(
                f"{out} holds a harvest of another model ({', '.join(diff)} differ: {detail}); resuming would mix "
                "two models' activations. Resume with the same checkpoint and tokenizer, or use another out_dir"
            )
    return state


_TMP_RANK = re.compile(r"\.rank(\d+)[-.].*\.tmp-\d+")
_TMP_PID = re.compile(r"\..*\.tmp-(\d+)")


def remove_orphans(out: Path, rank: int, keep: set[str], rank_is_free: Callable[[int], bool] | None = None) -> None:
    """Delete what interrupted writes left: this rank's shard files that no progress file lists, and temporary
    files (shards, progress files, the manifest) of this rank, of ranks nobody holds (``rank_is_free``), and
    of processes that no longer run."""
    prefix = rank_file(rank)
    for p in out.glob(f"{prefix}-*.safetensors"):
        if p.name not in keep:
            p.unlink(missing_ok=True)
    for folder in (out, out / "_progress"):
        for p in folder.glob(".*.tmp-*"):
            m = _TMP_RANK.fullmatch(p.name)
            if m is not None:
                other = int(m.group(1))
                debris = other == rank or (rank_is_free is not None and rank_is_free(other))
            else:
                pid = _TMP_PID.fullmatch(p.name)
                debris = pid is not None and int(pid.group(1)) != os.getpid() and not _pid_alive(int(pid.group(1)))
            if debris:
                p.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_manifest(out: Path, final: bool, world_size: int | None = None, strict: bool = False) -> dict[str, Any]:
    """Merge every rank's progress file into ``manifest.json`` (atomically).

    ``complete`` is true when ``final`` and the stored items are exactly ``0 .. n-1`` for the item
    count ``n`` the finished ranks saw. ``strict``: raise if not complete. Raises if an item is
    stored twice.
    """
    states = [json.loads(p.read_text()) for p in sorted((out / "_progress").glob("rank*.json"))]
    shards = sorted((sh for st in states for sh in st["shards"]), key=lambda sh: (sh["items"][0][0], sh["file"]))
    seen: set[int] = set()
    for sh in shards:
        items = set(from_runs(sh["items"]))
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
    write_json_atomic(out / "manifest.json", manifest)
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


def shard_digest(digests: dict[int, str]) -> str:
    """One hash of a shard's items (their :func:`~encoderlens.harvest.items.item_digest` in item order)."""
    return hashlib.sha256(",".join(digests[i] for i in sorted(digests)).encode()).hexdigest()[:16]


class StoredItems:
    """Checks that the items a resumed harvest skips are the ones its stored shards hold.

    A resumed harvest skips the items it stored, by index; if ``data`` changed in between (another order,
    items added or removed in front), those indices now name other items, and skipping them would mix two
    datasets under one index. Each shard records a digest of its items; once every item of a stored shard
    has been read again, their digests must give the same one.
    """

    def __init__(self, states: Iterable[dict[str, Any]]) -> None:
        self.shard_of: dict[int, int] = {}
        self.shards: list[dict[str, Any]] = []
        self.got: list[dict[int, str]] = []
        for st in states:
            for sh in st["shards"]:
                if "digest" not in sh:  # written before digests were recorded
                    continue
                for i in from_runs(sh["items"]):
                    self.shard_of[i] = len(self.shards)
                self.shards.append(sh)
                self.got.append({})

    def seen(self, index: int, digest: str, out: Path) -> None:
        k = self.shard_of.get(index)
        if k is None:
            return
        sh, got = self.shards[k], self.got[k]
        got[index] = digest
        if len(got) == sh["n_items"] and shard_digest(got) != sh["digest"]:
            raise ValueError(
                f"{out} holds items {_runs_text(sh['items'])} in {sh['file']}, and the data given now has other items "
                "at those indices (another order, items added, removed or changed); resuming would mix two datasets. "
                "Resume with the same data in the same order, or use another out_dir"
            )


def _runs_text(runs: list[list[int]]) -> str:
    items = list(from_runs(runs))
    return f"{items[0]}..{items[-1]}" if len(items) > 1 else str(items[0])
