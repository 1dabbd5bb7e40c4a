"""``encoderlens harvest MODEL --input FILE --hooks H... --out DIR``: activations to sharded safetensors files.

The arguments and the run are :mod:`encoderlens.harvest.command`'s (also ``python -m encoderlens.harvest``).
"""

from __future__ import annotations

import argparse

from encoderlens.cli.common import add_parser
from encoderlens.harvest.command import EXAMPLE, add_arguments, run


def setup(sub: argparse._SubParsersAction) -> None:
    """Add ``harvest`` to the ``encoderlens`` parser."""
    p = add_parser(
        sub,
        "harvest",
        "harvest activations of a dataset to sharded safetensors files (resumable; works under torchrun)",
        EXAMPLE,
    )
    add_arguments(p)
    p.set_defaults(func=run)
