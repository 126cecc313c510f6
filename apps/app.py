"""The artgen studio, to run from a checkout: ``python apps/app.py [--port 7860]``.

The studio itself is artgen/cli/studio.py (so ``artgen app`` works from an installed
wheel too); this file only starts it."""

import sys

from artgen.cli.studio import main

if __name__ == "__main__":
    sys.exit(main())
