"""``encoderlens cache MODEL INPUT... --hooks GLOB --out FILE``: save activations to safetensors."""

from __future__ import annotations

import argparse
import fnmatch
import json
from pathlib import Path

import torch

from encoderlens.cli.common import MODEL_HELP, guard, input_for, load_model


def _cache_cmd(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from encoderlens.analysis.families import prepare, run_with_cache

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must end in .safetensors, got {out.name!r}")
    if not out.parent.exists():
        raise FileNotFoundError(f"output folder {out.parent} does not exist")
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
    model = load_model(args.model)
    patterns = [p.strip() for arg in args.hooks for p in arg.split(",") if p.strip()]
    names: list[str] = []
    for pat in patterns:
        hits = [n for n in model.hook_names() if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            model.check_hook_name(pat)  # raises with close matches
        names += [n for n in hits if n not in names]
    inp, kw = input_for(model, args.input, args.decoder_input)
    prepared = prepare(model, inp, **kw)
    wanted = set(names)
    with torch.no_grad():
        _, cache = run_with_cache(model, prepared, names_filter=lambda n: n in wanted, return_type=None)
    tensors = {n: cache[n].to(dtype).contiguous().cpu() for n in names if n in cache}
    for stream, mask in prepared.masks.items():
        if mask is not None:
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
    save_file(tensors, str(out), metadata=meta)
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    print(f"wrote {len(names)} activations ({size / 2**20:.2f} MiB, {args.dtype}) to {out}")
    return 0


def setup(sub: argparse._SubParsersAction) -> None:
    """Add ``cache`` to the ``encoderlens`` parser."""
    p = sub.add_parser("cache", help="save activations to a .safetensors file")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("input", nargs="+", help="input text(s) (audio file paths for speech models)")
    p.add_argument("--hooks", action="append", required=True, help="hook name glob(s), repeatable or comma-separated")
    p.add_argument("--out", required=True, help="output FILE.safetensors")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    p.add_argument("--decoder-input", default=None, help="encoder-decoders: target text for the decoder")
    p.set_defaults(func=guard("cache", _cache_cmd))
