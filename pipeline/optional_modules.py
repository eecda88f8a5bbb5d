"""Whether an optional package is installed, asked without importing it: the export formats, the device images and the
report each depend on packages a given machine may lack (coremltools, TensorRT, torch in a deploy image, matplotlib),
and a missing one is a skipped row or a message that says so, not a crash."""

from __future__ import annotations

import importlib.util


def installed(module: str) -> bool:
    """True where `module` can be found; an import hook that refuses it, or a None entry in sys.modules, count as missing."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
