"""``python -m encoderlens``: same as the ``encoderlens`` command."""

import sys

from encoderlens.cli import main

sys.exit(main())
