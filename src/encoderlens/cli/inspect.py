"""``encoderlens inspect MODEL``: architecture and hook table with shapes."""

from __future__ import annotations

import argparse
import fnmatch
import json
from typing import Any

import torch

from encoderlens.cli.common import MODEL_HELP, add_device, add_parser, dummy_input, load_model, sentence_encoder
from encoderlens.models.base import HookedModel


def _describe(model: HookedModel) -> list[tuple[str, Any]]:
    """``(field, value)`` rows; numbers stay numbers (``--json`` prints them as such)."""
    rows: list[tuple[str, Any]] = [("family", model.family), ("architecture", model.architecture)]
    for stream in model.streams:
        spec = model.stream_spec(stream)
        where = "" if stream is None else f"{stream} "
        rows.append((f"{where}n_layers", spec.n_layers))
        rows.append((f"{where}n_heads", spec.n_heads))
        rows.append((f"{where}norm", f"{spec.norm_position}-LN"))
        readout = model.readout(stream)
        rows.append((f"{where}readout", f"{readout.name} ({readout.kind})" if readout is not None else "none"))
    rows.append(("primary output", model.default_return_type))
    rows.append(("parameters", sum(p.numel() for p in model.parameters())))
    rows.append(("tokenizer", type(model.tokenizer).__name__ if model.tokenizer is not None else "none"))
    rows.append(("hook points", len(model.hook_names())))
    return rows


def _inspect_cmd(args: argparse.Namespace) -> int:
    model = load_model(args.model, args.device)
    info = _describe(model)
    enc = sentence_encoder(model, args.model) if model.readout() is None else None
    if enc is not None:
        p = enc.pooling
        dense = f", {len(p.dense)} dense" if p.dense else ""
        info.append(("sentence pooling", f"{'+'.join(p.modes)}{', normalized' if p.normalize else ''}{dense}"))
    pattern = args.hooks or "*"
    names = [n for n in model.hook_names() if fnmatch.fnmatchcase(n, pattern)]
    if not names:
        raise ValueError(f"--hooks {pattern!r} matches no hook point; try e.g. 'blocks.0.*'")
    prepared, desc = dummy_input(model)
    wanted = set(names)  # named explicitly, so opt-in hooks (hook_result) are computed too
    with torch.no_grad():
        _, cache = model.run_prepared_with_cache(prepared, names_filter=wanted.__contains__)
    table = [(n, tuple(cache[n].shape) if n in cache else None) for n in names]
    if args.json:
        doc = {
            "model": args.model,
            "info": dict(info),
            "dummy_input": desc,
            "hooks": [{"name": n, "shape": list(s) if s is not None else None} for n, s in table],
        }
        print(json.dumps(doc, indent=2))
        return 0
    width = max(len(k) for k, _ in info)
    print(f"{args.model}")
    for k, v in info:
        print(f"  {k:<{width}}  {f'{v:,}' if isinstance(v, int) and k == 'parameters' else v}")
    print(f"\nhook points (shapes from a run on {desc}; batch first):")
    nw = max(len(n) for n, _ in table)
    for n, s in table:
        print(f"  {n:<{nw}}  {'(not run by this input or return type)' if s is None else s}")
    return 0


def setup(sub: argparse._SubParsersAction) -> None:
    """Add ``inspect`` to the ``encoderlens`` parser."""
    p = add_parser(
        sub, "inspect", "architecture and hook table with shapes", "encoderlens inspect default --hooks 'blocks.0.*'"
    )
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--hooks", default=None, help="glob of hook names to list (default: all), e.g. 'blocks.0.*'")
    p.add_argument("--json", action="store_true", help="print JSON (numbers as numbers) instead of a table")
    add_device(p)
    p.set_defaults(func=_inspect_cmd)
