"""``python -m encoderlens.cli``: same as the ``encoderlens`` command."""

import sys

from encoderlens.cli.main import main

sys.exit(main())
