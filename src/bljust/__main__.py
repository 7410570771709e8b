"""``python -m bljust ...`` (and ``torchrun ... -m bljust train ...``)."""

import sys

from bljust.cli import main

sys.exit(main())
