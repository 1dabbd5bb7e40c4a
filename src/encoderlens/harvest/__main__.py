"""``python -m encoderlens.harvest`` (and ``torchrun ... -m encoderlens.harvest``): same as ``encoderlens harvest``."""

import sys

from encoderlens.harvest.command import main

sys.exit(main())
