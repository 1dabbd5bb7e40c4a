"""``encoderlens cache MODEL INPUT... --hooks GLOB --out FILE``: save activations to safetensors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from encoderlens.cli.common import DTYPES, MODEL_HELP, add_device, add_parser, hook_names, input_for, load_model
from encoderlens.harvest.writer import save_shard_atomic


def save_safetensors(tensors: dict[str, torch.Tensor], out: Path, metadata: dict[str, str]) -> None:
    """Write a safetensors file atomically, with the mode the umask gives (harvest's shard writer)."""
    save_shard_atomic(out, tensors, metadata)


def _cache_cmd(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must end in .safetensors, got {out.name!r}")
    if not out.parent.exists():
        raise FileNotFoundError(f"output folder {out.parent} does not exist; create it first")
    patterns = [p.strip() for arg in args.hooks for p in arg.split(",") if p.strip()]
    if not patterns:
        raise ValueError(
            f"--hooks {' '.join(map(repr, args.hooks))} names no hook; pass e.g. --hooks 'blocks.*.hook_resid_post'"
        )
    dtype = DTYPES[args.dtype]
    model = load_model(args.model, args.device)
    names = hook_names(model, patterns)
    prepared = input_for(model, args.input, args.decoder_input)
    wanted = set(names)
    with torch.no_grad():
        _, cache = model.run_prepared_with_cache(prepared, names_filter=wanted.__contains__)
    missing = [n for n in names if n not in cache]
    if missing:
        raise ValueError(
            f"hooks {missing[:5]} did not run on this input (return type {model.default_return_type!r}); "
            "leave them out of --hooks"
        )
    tensors = {n: cache[n].to(dtype).contiguous().cpu() for n in names}
    for stream, mask in prepared.masks.items():
        tensors[f"input.{stream + '.' if stream else ''}attention_mask"] = mask.contiguous().cpu()
    for stream, ids in prepared.token_ids.items():
        tensors[f"input.{stream + '.' if stream else ''}tokens"] = ids.contiguous().cpu()
    meta = {
        "model": args.model,
        "inputs": json.dumps(list(args.input)),
        "hooks": json.dumps(names),
        "dtype": args.dtype,
        "format": "encoderlens activation cache: hook name -> (batch, ...) tensor; input.* hold tokens and masks",
    }
    labels = prepared.labels.get(next(iter(prepared.labels), None))
    if labels is not None:
        meta["tokens"] = json.dumps(labels)
    save_safetensors(tensors, out, meta)
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    print(f"wrote {len(names)} activations ({size / 2**20:.2f} MiB, {args.dtype}) to {out}")
    return 0


def setup(sub: argparse._SubParsersAction) -> None:
    """Add ``cache`` to the ``encoderlens`` parser."""
    p = add_parser(
        sub,
        "cache",
        "save activations to a .safetensors file",
        "encoderlens cache default 'The cat sat.' --hooks 'blocks.*.hook_resid_post' --out acts.safetensors",
    )
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("input", nargs="+", help="input text(s) (audio file paths for speech models)")
    p.add_argument("--hooks", action="append", required=True, help="hook name glob(s), repeatable or comma-separated")
    p.add_argument("--out", required=True, help="output FILE.safetensors")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="storage dtype")
    p.add_argument("--decoder-input", default=None, help="encoder-decoders: target text for the decoder")
    add_device(p)
    p.set_defaults(func=_cache_cmd)
