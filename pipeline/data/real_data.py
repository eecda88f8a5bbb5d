"""Where the optional real face data (aligned LFW etc., see shared/data/README.md) lives on this machine.

Tests and benchmarks that use it must skip when it is absent (users' machines do not have it), naming
`expected_real_data_root()` in the skip reason so the reader knows where it was looked for.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def expected_real_data_root() -> Path:
    """$FACE_DATA_ROOT if set, else the `shared/data` folder beside the repository (whether or not it exists)."""
    configured = os.environ.get("FACE_DATA_ROOT")
    return Path(configured).expanduser() if configured else REPO_ROOT.parent / "shared" / "data"


def default_real_data_root() -> Path | None:
    """The real data folder, or None when it is absent."""
    root = expected_real_data_root()
    return root if root.is_dir() else None
