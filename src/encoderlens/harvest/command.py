"""The harvest command line, shared by ``encoderlens harvest`` and ``python -m encoderlens.harvest``.

:func:`add_arguments` declares the arguments, :func:`run` executes parsed ones; the ``encoderlens``
CLI (which sits above this package) and :mod:`encoderlens.harvest.__main__` both build on them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from encoderlens.harvest.items import DEFAULT_INPUT_KEYS, ItemFields
from encoderlens.harvest.writer import harvest


def read_items(path: str, field: str = "input") -> Iterator[Any]:
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


#: An example command line (the help's epilog).
EXAMPLE = (
    "encoderlens harvest default --input items.jsonl --hooks 'blocks.*.hook_resid_post' --out acts/ "
    "--dtype float16  (under torchrun: torchrun --nproc_per_node 4 -m encoderlens.harvest ...)"
)

#: The one spelling of storage dtypes on the command line (torch's names, as the manifest records them).
CLI_DTYPES = ("float16", "bfloat16", "float32")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Declare the harvest arguments on ``ap``."""
    ap.add_argument("model", help="checkpoint folder or hub name (anything encoderlens.from_pretrained takes)")
    ap.add_argument(
        "--input",
        required=True,
        help=".jsonl (one object per line: the input under --field, optional 'id'; seq2seq also 'target') "
        "or .txt (one text or audio path per line)",
    )
    ap.add_argument("--hooks", required=True, nargs="+", help="hook names or globs, e.g. 'blocks.*.hook_resid_post'")
    ap.add_argument("--out", required=True, help="output folder (resumed if it holds a harvest)")
    ap.add_argument("--batch-size", type=int, default=32, help="items per forward")
    ap.add_argument(
        "--dtype", choices=CLI_DTYPES, default=None, help="storage dtype (default: the model's dtype, no conversion)"
    )
    ap.add_argument("--include-padding", action="store_true", help="store padding positions too, flagged")
    ap.add_argument("--shard-mb", type=float, default=256.0, help="target shard size in MiB")
    ap.add_argument("--items-per-shard", type=int, default=None, help="also start a new shard after this many items")
    ap.add_argument("--max-items", type=int, default=None, help="stop after this many items (default: all)")
    ap.add_argument(
        "--field",
        default=None,
        help=f"item field holding the input (default: the first of {', '.join(DEFAULT_INPUT_KEYS)} present; "
        "lines of a .txt file are the input)",
    )
    ap.add_argument(
        "--return-type",
        default=None,
        help="forward return_type (default: the model's primary output); 'all' runs every head (pooler hooks)",
    )
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Run a harvest from parsed arguments (one process, or one rank under ``torchrun``)."""
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
    try:
        model = encoderlens.from_pretrained(args.model, device=device)
        manifest = harvest(
            model,
            read_items(args.input, args.field or "input"),
            args.hooks,
            args.out,
            args.batch_size,
            dtype=args.dtype,
            items=ItemFields(input_key=args.field),
            return_type=args.return_type,
            include_padding=args.include_padding,
            shard_mb=args.shard_mb,
            items_per_shard=args.items_per_shard,
            max_items=args.max_items,
            progress=not args.no_progress,
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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m encoderlens.harvest`` (also under ``torchrun --nproc_per_node N -m encoderlens.harvest``)."""
    ap = argparse.ArgumentParser(
        prog="python -m encoderlens.harvest",
        description="Harvest activations to sharded safetensors files (resumable; torchrun for several processes). "
        "Same as `encoderlens harvest`.",
        epilog=f"example:\n  {EXAMPLE}",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    add_arguments(ap)
    args = ap.parse_args(argv)
    try:
        return run(args)
    except Exception as e:
        if args.debug:
            raise
        msg = " ".join(str(e.args[0] if isinstance(e, KeyError) and e.args else e).split()) or type(e).__name__
        print(f"encoderlens harvest: error: {msg} (--debug shows the traceback)", file=sys.stderr)
        return 2 if isinstance(e, (ValueError, TypeError, FileNotFoundError, KeyError)) else 1
