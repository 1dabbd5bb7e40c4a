"""The ``encoderlens`` command line: :func:`main` (``main.py``) and one module per subcommand.

The CLI sits at the top of the layers: it imports the analysis toolkit and harvest, never the other way.
"""

from encoderlens.cli.demo import DEMO_PAIRS, run_demo
from encoderlens.cli.main import build_parser, main

__all__ = ["DEMO_PAIRS", "build_parser", "main", "run_demo"]
