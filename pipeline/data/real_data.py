"""Where the optional real face data (aligned LFW etc., see shared/data/README.md) and pretrained face models (EdgeFace,
see shared/models/README.md) live on this machine.

Tests and benchmarks that use them must skip when they are absent (users' machines do not have them), naming
`expected_real_data_root()` / `expected_models_root()` in the skip reason so the reader knows where they were looked for.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _configured_root(variable: str, default: Path) -> Path:
    configured = os.environ.get(variable)
    return Path(configured).expanduser() if configured else default


def _existing(root: Path) -> Path | None:
    return root if root.is_dir() else None


def expected_real_data_root() -> Path:
    """$FACE_DATA_ROOT if set, else the `shared/data` folder beside the repository (whether or not it exists)."""
    return _configured_root("FACE_DATA_ROOT", REPO_ROOT.parent / "shared" / "data")


def default_real_data_root() -> Path | None:
    """The real data folder, or None when it is absent."""
    return _existing(expected_real_data_root())


def expected_models_root() -> Path:
    """$FACE_MODELS_ROOT if set, else the `shared/models` folder beside the repository (whether or not it exists)."""
    return _configured_root("FACE_MODELS_ROOT", REPO_ROOT.parent / "shared" / "models")


def default_models_root() -> Path | None:
    """The pretrained-models folder, or None when it is absent."""
    return _existing(expected_models_root())


def expected_pretrained_root() -> Path:
    """$PRETRAINED_ROOT if set, else the project's own `pretrained/` folder (the shipped default teacher)."""
    return _configured_root("PRETRAINED_ROOT", REPO_ROOT / "pretrained")


# Placeholders a profile may use in paths -> (environment variable, where it points by default).
PATH_PLACEHOLDERS = {
    "${FACE_DATA_ROOT}": ("FACE_DATA_ROOT", expected_real_data_root),
    "${FACE_MODELS_ROOT}": ("FACE_MODELS_ROOT", expected_models_root),
    "${PRETRAINED_ROOT}": ("PRETRAINED_ROOT", expected_pretrained_root),
}
