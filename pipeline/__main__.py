"""`python -m pipeline`, the command users know, is the application's CLI: the one import from the core up to the
application layer, allowed by name in the import contract (pyproject.toml) since nothing imports this module."""

import sys

from app.cli import main

sys.exit(main())
