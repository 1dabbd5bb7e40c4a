"""``encoderlens attention MODEL INPUT... --html FILE``: a self-contained HTML attention browser."""

from __future__ import annotations

import argparse
from pathlib import Path

from encoderlens.cli.common import MODEL_HELP, add_device, add_parser, input_for, load_model


def _parse_layers(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--layers takes comma-separated layer indices like 0,3,5; got {text!r}") from None


def _attention_cmd(args: argparse.Namespace) -> int:
    from encoderlens.analysis.views import attention_html

    out = Path(args.html)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--html must name an .html file, got {out.name!r}")
    if not out.parent.exists():
        raise FileNotFoundError(f"output folder {out.parent} does not exist; create it first")
    layers = _parse_layers(args.layers)
    model = load_model(args.model, args.device)
    attention_html(model, input_for(model, args.input, args.decoder_input), out, layers=layers)
    print(f"wrote {out} (open it in a browser; works offline)")
    return 0


def setup(sub: argparse._SubParsersAction) -> None:
    """Add ``attention`` to the ``encoderlens`` parser."""
    p = add_parser(
        sub,
        "attention",
        "write a self-contained HTML attention browser",
        "encoderlens attention default 'The cat sat.' --html att.html --layers 0,5",
    )
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("input", nargs="+", help="input text(s) (each one an item), or audio file paths")
    p.add_argument("--html", required=True, help="output .html file")
    p.add_argument("--layers", default=None, help="comma-separated layers to include (default: all)")
    p.add_argument("--decoder-input", default=None, help="encoder-decoders: target text for the decoder")
    add_device(p)
    p.set_defaults(func=_attention_cmd)
