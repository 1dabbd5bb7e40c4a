"""``device_map`` placement: blocks (and the modules around them) spread over several devices.

A model too large for one device (T5-11B, mT5-XXL, Whisper large) is split into **placement units**:
every block of every stream (``blocks.3``, ``encoder.blocks.5``, ``decoder.blocks.0``), and every other
module next to the blocks (``embed``, ``mlm_head``, ``lm_head``, ``encoder.ln_final``...). A
``device_map`` gives each unit a device:

- a dict of module prefix -> device (``{"embed": 0, "blocks.0": 0, "blocks.1": "cpu", ...}``): a key
  covers every unit below it (``"encoder"`` covers ``encoder.blocks.3``) unless a longer key names it;
- ``"auto"`` / ``"balanced"`` (an equal share per accelerator, the CPU only for what does not fit),
  ``"sequential"`` (fill each device in order), with ``max_memory={device: bytes | "10GiB"}`` (default:
  90% of each CUDA device's free memory, then the CPU), sized from parameter bytes in the load dtype;
- one device (``"cpu"``, ``"cuda:1"``, ``0``): everything there.

Some units must share a device because code outside them reads their weights or glues their outputs
together; they form **groups** found from the module tree: units sharing a parameter, a unit holding an
unregistered reference to another's module (a tied head reading ``embed.W_E``), and the non-block
modules of a nested stack (its embedding, position bias and final norm, glued by the stack's forward).
A map splitting a group is refused, naming it.

Running: :func:`apply_placement` marks each block with its device (``run_blocks`` moves the residual
stream, masks and position bias there at block entry) and gives every other unit a forward pre-hook
moving its tensor inputs to its device. Nothing is installed when all units share one device.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from encoderlens.components.blocks import TransformerBlock

DeviceLike = str | int | torch.device
DeviceMap = str | int | torch.device | Mapping[str, DeviceLike]
STRATEGIES = ("auto", "balanced", "sequential")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})


@dataclasses.dataclass
class PlacementUnit:
    """One placeable piece of a model.

    Attributes:
        name: Its module name (``"embed"``, ``"encoder.blocks.3"``; ``""`` for parameters of the root).
        module: The module.
        is_block: Whether it is a transformer block (moved to in ``run_blocks``, not by a pre-hook).
        recurse: False for a container's own parameters only (its children are units of their own).
    """

    name: str
    module: nn.Module
    is_block: bool = False
    recurse: bool = True

    def parameters(self) -> Iterator[nn.Parameter]:
        """The unit's parameters (a container's own only when ``recurse`` is False)."""
        return self.module.parameters(recurse=self.recurse)

    def n_bytes(self, dtype: torch.dtype) -> int:
        """Parameter bytes once loaded in ``dtype`` (floating parameters take ``dtype``)."""
        size = torch.empty((), dtype=dtype).element_size()
        return sum(p.numel() * (size if p.is_floating_point() else p.element_size()) for p in self.parameters())


def _holds_weights(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers()) or bool(_held(module))


def _held_direct(module: nn.Module) -> list[nn.Module]:
    """Modules ``module`` reads without registering them (``self._embed = [embed]``)."""
    out: list[nn.Module] = []
    for value in vars(module).values():
        items = value if isinstance(value, (list, tuple)) else (value,)
        out.extend(v for v in items if isinstance(v, nn.Module))
    return out


def _held(module: nn.Module) -> list[nn.Module]:
    """Modules ``module`` or one below it reads without registering them."""
    return [ref for m in module.modules() for ref in _held_direct(m)]


def placement_units(
    model: nn.Module, block_lists: Sequence[nn.ModuleList]
) -> tuple[list[PlacementUnit], list[set[str]]]:
    """The model's placement units in module order, and the groups of units that must share a device.

    Args:
        model: The model (on any device, meta included).
        block_lists: Every stream's block list (``stream_spec(stream).blocks``).

    Returns:
        ``(units, groups)``; every unit is in exactly one group (most groups hold one unit).
    """
    block_ids = {id(b) for b in block_lists}
    containers = {id(m) for m in model.modules() if any(id(c) in block_ids for c in m.modules())} - block_ids
    units: list[PlacementUnit] = []
    glue: list[tuple[nn.Module, list[str]]] = []

    def walk(module: nn.Module, prefix: str) -> None:
        own: list[str] = []  # the container's units other than blocks
        stem: list[str] = []  # those registered before its blocks (embeddings, front end)
        if any(True for _ in module.parameters(recurse=False)):
            units.append(PlacementUnit(prefix, module, recurse=False))
            own.append(prefix)
        for name, child in module.named_children():
            full = f"{prefix}.{name}" if prefix else name
            if id(child) in block_ids:
                blocks = cast(nn.ModuleList, child)
                units.extend(PlacementUnit(f"{full}.{i}", b, is_block=True) for i, b in enumerate(blocks))
                stem = stem or list(own)
            elif id(child) in containers:
                walk(child, full)
                stem = stem or list(own)
            elif _holds_weights(child):
                units.append(PlacementUnit(full, child))
                own.append(full)
        # a nested stack's forward glues all its modules (embedding, position bias, mask, final norm);
        # the model's own forward glues what comes before its blocks (embeddings, front end, masks)
        glue.append((module, own if module is not model else stem))

    walk(model, "")
    parent = {u.name: u.name for u in units}

    def find(a: str) -> str:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(a: str, b: str) -> None:
        parent[find(a)] = find(b)

    owner: dict[int, str] = {}  # module / parameter id -> unit name
    for u in units:
        for m in u.module.modules() if u.recurse else (u.module,):
            owner.setdefault(id(m), u.name)
        for p in u.parameters():
            if id(p) in owner:
                union(u.name, owner[id(p)])  # a parameter two units share
            owner[id(p)] = u.name
    for u in units:
        for ref in _held(u.module) if u.recurse else ():
            if id(ref) in owner:
                union(u.name, owner[id(ref)])
    for container, own in glue:
        for name in own[1:]:
            union(name, own[0])
        for ref in _held_direct(container) if own and container is not model else ():
            if id(ref) in owner:
                union(owner[id(ref)], own[0])
    groups: dict[str, set[str]] = {}
    for u in units:
        groups.setdefault(find(u.name), set()).add(u.name)
    return units, list(groups.values())


def as_device(value: object, where: str) -> torch.device:
    """A device from an int (a CUDA index), a string or a ``torch.device``; raises saying what is valid.

    Raises:
        ValueError: Not a device, or a CUDA device this machine does not have.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str, torch.device)):
        raise ValueError(
            f"{where}: expected a device (an int CUDA index, 'cpu', 'cuda:1', 'meta' or a torch.device), got {value!r}"
        )
    try:
        dev = torch.device(f"cuda:{value}" if isinstance(value, int) else value)
    except RuntimeError as e:
        raise ValueError(f"{where}: {value!r} is not a device ({e}); use 'cpu', 'cuda:0', 0, 'meta'...") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count()
        if (dev.index or 0) >= n:
            raise ValueError(
                f"{where}: got {value!r}, but this machine has {n} CUDA device(s); "
                f"use {'0..' + str(n - 1) if n else 'cpu'} or drop the entry"
            )
    return dev


def parse_size(value: object, where: str) -> float:
    """Bytes from an int or a string such as ``"10GiB"``, ``"500MB"``, ``"1.5 GB"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    match = _SIZE.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{where}: expected a size in bytes (an int or a string like '10GiB', '500MB'), got {value!r}")
    return float(match.group(1)) * _UNITS[(match.group(2) or "B").upper()]


def resolve_device_map(
    units: Sequence[PlacementUnit],
    groups: Sequence[set[str]],
    device_map: DeviceMap,
    max_memory: Mapping[DeviceLike, int | str] | None,
    dtype: torch.dtype,
) -> dict[str, torch.device]:
    """Each unit's device (in unit order) from a ``device_map``; see the module docstring for the forms.

    Raises:
        ValueError: An unknown prefix, a key inside a unit, a unit left unplaced, a group split across
            devices, an invalid device or size, or a model that does not fit ``max_memory``.
    """
    if isinstance(device_map, str) and device_map in STRATEGIES:
        return _infer(units, groups, device_map, max_memory, dtype)
    if max_memory is not None:
        raise ValueError(
            f"max_memory applies to device_map='auto' / 'balanced' / 'sequential', got device_map={device_map!r}; "
            "drop max_memory or pass one of those strategies"
        )
    if not isinstance(device_map, Mapping):
        dev = as_device(device_map, "device_map")
        return {u.name: dev for u in units}
    names = [u.name for u in units]
    chosen: dict[str, tuple[int, torch.device]] = {}
    for key, value in device_map.items():
        if not isinstance(key, str):
            raise ValueError(f"device_map keys are module names (str), got {key!r}")
        dev = as_device(value, f"device_map[{key!r}]")
        covered = [n for n in names if key == "" or n == key or n.startswith(key + ".")]
        if not covered:
            inside = [n for n in names if n and key.startswith(n + ".")]
            if inside:
                raise ValueError(
                    f"device_map key {key!r} is inside the placement unit {inside[0]!r}, which is placed whole; "
                    f"use {inside[0]!r}"
                )
            raise ValueError(
                f"device_map key {key!r} names no module of this model; expected a prefix of one of "
                f"{_summary(names)} (or '' for everything)"
            )
        for n in covered:
            if n not in chosen or len(key) >= chosen[n][0]:
                chosen[n] = (len(key), dev)
    unplaced = [n for n in names if n not in chosen]
    if unplaced:
        raise ValueError(
            f"device_map places no device for {unplaced}; every module must have one: add entries for them "
            f"(or a prefix covering them, '' for everything left)"
        )
    devices = {n: chosen[n][1] for n in names}
    for group in groups:
        on = {devices[n] for n in group}
        if len(on) > 1:
            detail = ", ".join(f"{n}: {devices[n]}" for n in sorted(group))
            raise ValueError(
                f"these modules must share a device (tied weights, or glued together by one forward), got "
                f"{detail}; put them on one device"
            )
    return devices


def _summary(names: Sequence[str]) -> str:
    shown = [n for n in names if ".blocks." not in f".{n}" or n.endswith(".0") or n.endswith("blocks.0")]
    return str(shown[:12] + (["..."] if len(shown) > 12 else []))


def _default_memory() -> dict[torch.device, float]:
    mem: dict[torch.device, float] = {}
    for i in range(torch.cuda.device_count()):
        free, _ = torch.cuda.mem_get_info(i)
        mem[torch.device(f"cuda:{i}")] = 0.9 * free
    mem[torch.device("cpu")] = math.inf
    return mem


def _infer(
    units: Sequence[PlacementUnit],
    groups: Sequence[set[str]],
    strategy: str,
    max_memory: Mapping[DeviceLike, int | str] | None,
    dtype: torch.dtype,
) -> dict[str, torch.device]:
    if max_memory is None:
        memory = _default_memory()
    else:
        if not isinstance(max_memory, Mapping) or not max_memory:
            raise ValueError(f"max_memory must be a non-empty dict of device -> bytes or '10GiB', got {max_memory!r}")
        memory = {
            as_device(d, f"max_memory key {d!r}"): parse_size(v, f"max_memory[{d!r}]") for d, v in max_memory.items()
        }
    order = {u.name: i for i, u in enumerate(units)}
    size = {u.name: u.n_bytes(dtype) for u in units}
    chunks = sorted(groups, key=lambda g: min(order[n] for n in g))
    chunk_size = [sum(size[n] for n in g) for g in chunks]
    total = sum(chunk_size)
    devices = list(memory)
    share = dict(memory)
    if strategy in ("auto", "balanced"):
        # an equal share on each device; a trailing CPU is offload (what the others cannot hold), and the
        # last balanced device takes up to its limit (so rounding to whole groups never spills over)
        balanced = devices[:-1] if len(devices) > 1 and devices[-1].type == "cpu" else devices
        for d in balanced[:-1]:
            share[d] = min(memory[d], math.ceil(total / len(balanced)))
    placed: dict[str, torch.device] = {}
    di, used = 0, 0.0
    for group, s in zip(chunks, chunk_size, strict=True):
        while di < len(devices):
            d = devices[di]
            if used + s <= share[d] or (used == 0 and s <= memory[d]):
                break
            di, used = di + 1, 0.0
        if di == len(devices):
            limits = {str(d): memory[d] for d in devices}
            raise ValueError(
                f"the model needs {total / 2**30:.3f} GiB in {dtype} and does not fit max_memory={limits} "
                f"(no room left for {sorted(group)[0]!r}, {s / 2**20:.2f} MiB); raise max_memory or add 'cpu' to it"
            )
        for n in group:
            placed[n] = devices[di]
        used += s
    return {u.name: placed[u.name] for u in units}


def _move_inputs(device: torch.device) -> Callable[..., tuple[tuple[Any, ...], dict[str, Any]]]:
    def to(value: Any) -> Any:
        if isinstance(value, Tensor):
            return value if value.device == device else value.to(device)
        if isinstance(value, (list, tuple)) and any(isinstance(v, Tensor) for v in value):
            return type(value)(to(v) for v in value)
        return value

    def hook(
        module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return tuple(to(a) for a in args), {k: to(v) for k, v in kwargs.items()}

    return hook


def apply_placement(units: Sequence[PlacementUnit], devices: Mapping[str, torch.device]) -> list[RemovableHandle]:
    """Make a placed model run across devices: blocks know their device, other units move their inputs.

    Buffers move to their unit's device. Nothing is hooked when every unit is on one device.

    Returns:
        The pre-hook handles (:func:`clear_placement` removes them).
    """
    for u in units:
        dev = devices[u.name]
        for m in u.module.modules() if u.recurse else (u.module,):
            for key, buf in m._buffers.items():
                if buf is not None and buf.device != dev:
                    m._buffers[key] = buf.to(dev)
    if len(set(devices.values())) < 2:
        return []
    handles: list[RemovableHandle] = []
    for u in units:
        dev = devices[u.name]
        if u.is_block:
            assert isinstance(u.module, TransformerBlock)
            u.module.entry_device = dev
        elif u.recurse:
            handles.append(u.module.register_forward_pre_hook(_move_inputs(dev), with_kwargs=True))
    return handles


def clear_placement(model: nn.Module, handles: Sequence[RemovableHandle]) -> None:
    """Undo :func:`apply_placement` (before moving the whole model to one device)."""
    for h in handles:
        h.remove()
    for m in model.modules():
        if isinstance(m, TransformerBlock) and "entry_device" in vars(m):
            del m.entry_device
