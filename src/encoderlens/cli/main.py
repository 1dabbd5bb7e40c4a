"""The ``encoderlens`` command: the argument parser and the dispatch to one module per subcommand.

Every subcommand exits non-zero with a one-line message on bad arguments or failures.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from encoderlens.cli import attention, cache, demo, harvest, inspect, patch, predict

SubcommandSetup = Callable[[argparse._SubParsersAction], None]

#: Functions that add the subcommands to the parser, in the order ``--help`` lists them.
SUBCOMMANDS: tuple[SubcommandSetup, ...] = (
    demo.setup,
    inspect.setup,
    predict.setup,
    cache.setup,
    attention.setup,
    patch.setup,
    harvest.setup,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``encoderlens`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="encoderlens", description="Mechanistic interpretability for encoders.")
    sub = parser.add_subparsers(dest="command", required=True)
    for setup in SUBCOMMANDS:
        setup(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``encoderlens`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"encoderlens {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
