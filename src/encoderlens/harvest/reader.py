"""Reading a harvest folder: :func:`load_harvest` and :class:`Harvest`."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from encoderlens.harvest.manifest import FORMAT


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
        for p in self.shard_paths():
            yield read_shard(p)

    def _order(self, align: str) -> tuple[list[dict[str, Tensor]], Tensor]:
        cols = [read_shard(p) for p in self.shard_paths()]
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
            try:
                with safe_open(str(p), "pt") as f:
                    meta = f.metadata() or {}
                    idx = f.get_tensor("_items.index").tolist()
            except Exception as e:  # safetensors errors come in several types
                raise _unreadable(p, e) from e
            out.update(zip(idx, json.loads(meta.get("item_ids", "[]"))))
        return dict(sorted(out.items()))


def read_shard(path: Path) -> dict[str, Tensor]:
    """One shard's tensors; a missing, truncated or corrupt file raises a ValueError naming it."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors errors come in several types
        raise _unreadable(path, e) from e


def _unreadable(path: Path, e: Exception) -> ValueError:
    return ValueError(
        f"could not read the harvest shard {path} ({type(e).__name__}: {e}); it is missing, truncated or corrupt. "
        "Restore the file, or harvest again into a new out_dir"
    )


def load_harvest(out_dir: str | os.PathLike[str]) -> Harvest:
    """Open a harvest folder: ``.manifest``, ``.load(hook)``, ``.rows(alignment)``, ``.iter_shards()``."""
    return Harvest(out_dir)
