"""``encoderlens inspect MODEL``: architecture and hook table with shapes."""

from __future__ import annotations

import argparse
import fnmatch
import json
from typing import Any

import torch

from encoderlens.analysis.families import ENCODER
from encoderlens.cli.common import MODEL_HELP, dummy_input, guard, load_model, sentence_encoder


def _describe(model: Any) -> list[tuple[str, str]]:
    cfg = model.cfg
    rows = [("family", model.family), ("architecture", str(getattr(cfg, "architecture", "?")))]
    rows.append(("model_type", str(getattr(cfg, "model_type", "?"))))
    for attr in ("n_layers", "n_heads", "d_model", "d_head", "d_vocab"):
        if hasattr(cfg, attr):
            rows.append((attr, str(getattr(cfg, attr))))
    stack = getattr(cfg, "stack", None)
    if stack is not None:
        rows.append(("d_mlp", str(stack.mlp.d_mlp)))
        rows.append(("activation", stack.mlp.act_fn + (" (gated)" if stack.mlp.gated else "")))
        rows.append(("norm", f"{stack.norm.kind}, {stack.norm_position}-LN"))
    heads = [
        h for h in ("mlm_head", "pooler", "nsp_head", "ctc_head", "lm_head") if getattr(model, h, None) is not None
    ]
    rows.append(("heads", ", ".join(heads) if heads else "none (bare encoder)"))
    n_params = sum(p.numel() for p in model.parameters())
    rows.append(("parameters", f"{n_params:,}"))
    rows.append(
        ("tokenizer", type(model.tokenizer).__name__ if getattr(model, "tokenizer", None) is not None else "none")
    )
    rows.append(("hook points", str(len(model.hook_names()))))
    return rows


def _inspect_cmd(args: argparse.Namespace) -> int:
    from encoderlens.analysis.families import prepare, run_with_cache

    model = load_model(args.model)
    info = _describe(model)
    enc = sentence_encoder(model, args.model) if model.family == ENCODER else None
    if enc is not None:
        p = enc.pooling
        info.append(
            (
                "sentence pooling",
                f"{'+'.join(p.modes)}{', normalized' if p.normalize else ''}{f', {len(p.dense)} dense' if p.dense else ''}",
            )
        )
    inp, kw, desc = dummy_input(model)
    prepared = prepare(model, inp, **kw)
    pattern = args.hooks or "*"
    with torch.no_grad():
        _, cache = run_with_cache(model, prepared, names_filter=None, return_type=None)
    names = [n for n in model.hook_names() if fnmatch.fnmatchcase(n, pattern)]
    if not names:
        raise ValueError(f"--hooks {pattern!r} matches no hook point; try e.g. 'blocks.0.*'")
    table = [(n, tuple(cache[n].shape) if n in cache else None) for n in names]
    if args.json:
        print(
            json.dumps(
                {
                    "model": args.model,
                    "info": dict(info),
                    "dummy_input": desc,
                    "hooks": [{"name": n, "shape": list(s) if s is not None else None} for n, s in table],
                },
                indent=2,
            )
        )
        return 0
    width = max(len(k) for k, _ in info)
    print(f"{args.model}")
    for k, v in info:
        print(f"  {k:<{width}}  {v}")
    print(f"\nhook points (shapes from a dummy run on {desc}; batch first):")
    nw = max(len(n) for n, _ in table)
    for n, s in table:
        print(f"  {n:<{nw}}  {'(not reached)' if s is None else s}")
    return 0


def setup(sub: argparse._SubParsersAction) -> None:
    """Add ``inspect`` to the ``encoderlens`` parser."""
    p = sub.add_parser("inspect", help="architecture and hook table with shapes")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--hooks", default=None, help="glob of hook names to list (default: all), e.g. 'blocks.0.*'")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=guard("inspect", _inspect_cmd))
