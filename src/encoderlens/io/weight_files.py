"""Lazy access to HF weight files: every name is known up front, each tensor is read when asked for.

A :class:`LazyWeights` maps HF parameter names to tensors like a state dict, but holds only where each
tensor lies. ``weights[name]`` reads that one tensor into memory of its own (not a view of the file),
so a converter that takes tensors one at a time holds at most the few it is working on, and each is
freed as soon as its converted form exists. ``safetensors`` files are read with plain file reads at the
offsets of their header (not memory-mapped: mapped pages would stay counted in the process's memory until
every tensor of the file is gone, and a model whose parameters are views of a file changes if the file
is rewritten); ``pytorch_model.bin`` files are memory-mapped by ``torch.load`` and each tensor is copied
out of the map when read.
"""

from __future__ import annotations

import json
import mmap
import struct
import sys
import zipfile
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

#: safetensors dtype names -> torch dtypes.
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U64": torch.uint64,
    "U32": torch.uint32,
    "U16": torch.uint16,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}

_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header
_OWN_MAPPING = 1 << 20  # tensors from this size on are read into memory mapped for them alone


if TYPE_CHECKING:
    _WeightMapping = Mapping[str, Tensor]
else:
    # a runtime type checker (beartype) checks a subclass of ``Mapping[str, Tensor]`` by reading one of
    # its values, which here reads a tensor from disk; the plain ABC is checked by isinstance alone
    _WeightMapping = Mapping


class LazyWeights(_WeightMapping):
    """HF parameter name -> tensor, each read (and cast) when it is looked up; nothing is cached.

    Args:
        readers: Name -> a function returning that tensor in memory of its own.
        dtype: If given, floating tensors are cast to it as they are read (a tensor read in another
            floating dtype is freed right after its cast copy is made).

    Example:
        >>> weights = open_weights(folder)  # reads the headers only
        >>> w = weights["bert.embeddings.word_embeddings.weight"]  # reads this tensor
    """

    def __init__(self, readers: Mapping[str, Callable[[], Tensor]], dtype: torch.dtype | None = None) -> None:
        self._readers = dict(readers)
        self.dtype = dtype

    @classmethod
    def of_tensors(cls, tensors: Mapping[str, Tensor], dtype: torch.dtype | None = None) -> LazyWeights:
        """Tensors already in memory (an HF model's ``state_dict()``), each handed out as a copy of its own
        (or cast), so that the model built from them never shares memory with the HF model: editing one
        (ablating a weight, training) leaves the other as it was."""
        return cls({name: partial(_clone, t) for name, t in tensors.items()}, dtype)

    def with_dtype(self, dtype: torch.dtype | None) -> LazyWeights:
        """The same weights, floating tensors cast to ``dtype`` as they are read."""
        return LazyWeights(self._readers, dtype)

    def __getitem__(self, name: str) -> Tensor:
        t = self._readers[name]()
        if self.dtype is not None and t.is_floating_point() and t.dtype != self.dtype:
            t = cast(t, self.dtype)
        return t

    def __iter__(self) -> Iterator[str]:
        return iter(self._readers)

    def __len__(self) -> int:
        return len(self._readers)

    def __contains__(self, name: object) -> bool:
        return name in self._readers

    def __repr__(self) -> str:
        return f"LazyWeights({len(self)} tensors, dtype={self.dtype})"


def _same(t: Tensor) -> Tensor:
    return t


def weight_file_error(f: Path, e: BaseException) -> ValueError:
    """The error for a weight file that cannot be read (truncated, corrupt, changed while loading)."""
    return ValueError(
        f"could not read the weight file {f} ({type(e).__name__}: {e}); it may be truncated or corrupt: "
        "download or save the checkpoint again"
    )


def file_readers(f: Path) -> dict[str, Callable[[], Tensor]]:
    """Name -> reader for every tensor of one weight file (``.safetensors``, else a ``torch.save`` file).

    Only the file's header (safetensors) or its pickled structure (a memory-mapped ``.bin``) is read here.

    Raises:
        ValueError: The file is missing, truncated or not a weight file.
    """
    if not f.is_file():
        raise ValueError(f"the weight file {f} is missing; the checkpoint folder is incomplete")
    try:
        return _safetensors_readers(f) if f.suffix == ".safetensors" else _torch_readers(f)
    except OSError as e:
        raise weight_file_error(f, e) from e


def _safetensors_readers(f: Path) -> dict[str, Callable[[], Tensor]]:
    """Parse a safetensors header: ``u64`` length, JSON ``{name: {dtype, shape, data_offsets}}``, then data."""
    size = f.stat().st_size
    with f.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise weight_file_error(f, EOFError(f"{size} bytes, shorter than a safetensors header"))
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            raise weight_file_error(f, EOFError(f"header of {n} bytes in a file of {size} bytes"))
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise weight_file_error(f, e) from None
    if not isinstance(header, dict):
        raise weight_file_error(f, TypeError("the header is not a JSON object"))
    if sys.byteorder != "little":
        raise ValueError(f"reading {f}: safetensors files are little-endian and this machine is not; not supported")
    entries = {name: _entry(f, name, entry) for name, entry in header.items() if name != "__metadata__"}
    # as the safetensors library checks: the tensors tile the data section, back to back, no overlap or gap
    # (two entries over the same bytes would each read the other's values)
    done = 0
    for name, (_, _, start, end) in sorted(entries.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if start != done:
            problem = f"{name!r} starts at data byte {start}, expected {done} (overlapping or gapped offsets)"
            raise weight_file_error(f, ValueError(problem))
        done = end
    if 8 + n + done != size:
        problem = f"the tensors end at byte {8 + n + done}, the file has {size}"
        raise weight_file_error(f, (EOFError if 8 + n + done > size else ValueError)(problem))
    return {
        name: partial(_read_safetensors, f, dtype, shape, 8 + n + start, end - start)
        for name, (dtype, shape, start, end) in entries.items()
    }


def _entry(f: Path, name: str, entry: object) -> tuple[torch.dtype, tuple[int, ...], int, int]:
    """``(dtype, shape, start, end)`` of one header entry, checked: a known dtype, offsets that fit the shape."""
    try:
        if not isinstance(entry, dict):
            raise TypeError("not an object")
        dtype = SAFETENSORS_DTYPES[entry["dtype"]]
        shape = tuple(int(d) for d in entry["shape"])
        start, end = (int(o) for o in entry["data_offsets"])
        numel = 1
        for d in shape:
            numel *= d
        if min(shape, default=0) < 0 or start < 0 or end - start != numel * dtype.itemsize:
            raise ValueError("offsets do not fit the shape and dtype")
    except (KeyError, TypeError, ValueError) as e:
        problem = ValueError(f"bad header entry for {name!r}: {entry!r} ({type(e).__name__}: {e})")
        raise weight_file_error(f, problem) from None
    return dtype, shape, start, end


def _read_safetensors(f: Path, dtype: torch.dtype, shape: tuple[int, ...], offset: int, nbytes: int) -> Tensor:
    buf = _buffer(nbytes)
    try:
        with f.open("rb") as fh:
            fh.seek(offset)
            done = 0
            while done < nbytes:
                got = fh.readinto(buf[done:])
                if not got:
                    raise EOFError(f"{nbytes - done} bytes missing at byte {offset + done}")
                done += got
    except OSError as e:
        raise weight_file_error(f, e) from e
    except EOFError as e:
        raise weight_file_error(f, e) from None
    raw = torch.frombuffer(buf, dtype=torch.uint8) if nbytes else torch.empty(0, dtype=torch.uint8)
    return raw.view(dtype).reshape(shape)


def _buffer(nbytes: int) -> memoryview:
    """Writable memory for one tensor: a mapping of its own when large, so that it goes back to the system
    as soon as the tensor is freed. (Taken from the heap, a freed read buffer can stay in the process
    between the converted tensors allocated around it, and loading then peaks far above the model.)"""
    if nbytes >= _OWN_MAPPING:
        return memoryview(mmap.mmap(-1, nbytes))
    return memoryview(bytearray(nbytes))


def cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t.to(dtype)``, the copy in memory of its own when large (see :func:`_buffer`)."""
    nbytes = t.numel() * dtype.itemsize
    if nbytes < _OWN_MAPPING:
        return t.to(dtype)
    out = torch.frombuffer(_buffer(nbytes), dtype=torch.uint8).view(dtype).reshape(t.shape)
    return out.copy_(t)


def _torch_readers(f: Path) -> dict[str, Callable[[], Tensor]]:
    """A ``torch.save`` file: memory-mapped (zip format) or, for the legacy format, read whole."""
    mmap = zipfile.is_zipfile(f)
    try:
        loaded = torch.load(str(f), map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # pickle / zip errors come in many types
        raise weight_file_error(f, e) from e
    if not isinstance(loaded, dict) or not all(isinstance(t, Tensor) for t in loaded.values()):
        raise weight_file_error(f, TypeError(f"expected a dict of tensors, got {type(loaded).__name__}"))
    copy = _clone if mmap else _same
    return {str(name): partial(copy, t) for name, t in loaded.items()}


def _clone(t: Tensor) -> Tensor:
    return t.clone()  # memory of its own: the model never depends on the file (or HF model) staying as it is
