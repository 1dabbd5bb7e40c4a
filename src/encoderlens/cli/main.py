"""The ``encoderlens`` command: the argument parser and the dispatch to one module per subcommand.

Every subcommand reports a failure as one line, ``encoderlens CMD: error: what is wrong; how to fix it``,
and exits non-zero: 2 for a bad argument or input (``ValueError``, ``TypeError``, a missing file), 1 for
anything else. ``--debug`` (before or after the subcommand) shows the traceback instead.
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

#: Exceptions that mean the user's arguments or inputs are wrong (exit code 2).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, FileNotFoundError, KeyError)


def build_parser() -> argparse.ArgumentParser:
    """The ``encoderlens`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="encoderlens",
        description="Mechanistic interpretability for encoders.",
        epilog="example:\n  encoderlens inspect default --hooks 'blocks.0.*'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for setup in SUBCOMMANDS:
        setup(sub)
    return parser


def one_line(e: BaseException) -> str:
    """An exception as one line: its message (a KeyError's without quotes), or its type when it has none."""
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    msg = " ".join(str(msg).split())
    return msg or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``encoderlens`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"encoderlens {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        code = 2 if isinstance(e, USER_ERRORS) else 1
        print(f"encoderlens {args.command}: error: {one_line(e)} (--debug shows the traceback)", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
