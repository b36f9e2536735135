"""`python -m services.cli` is the `audioguard` console script."""

import sys

from services.cli import main

sys.exit(main())
