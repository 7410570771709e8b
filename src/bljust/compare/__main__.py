"""``python -m bljust.compare job JOB.json``: one job of ``bljust compare`` (internal)."""

import sys

from bljust.compare.jobs import main

sys.exit(main())
