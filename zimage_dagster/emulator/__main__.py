"""`python -m zimage_dagster.emulator` is the `zimage-emulator` console script."""

import sys

from zimage_dagster.emulator.cli import main

sys.exit(main())
