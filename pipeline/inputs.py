"""Every input file a run reads, checked before any stage runs: a missing one is one line, not a traceback later.

Paths under the real-data or pretrained-models root (`${FACE_DATA_ROOT}`, `${FACE_MODELS_ROOT}` in a profile) say which
environment variable points there, since on a user's machine that folder is usually what is missing.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import RunConfig
from pipeline.data.real_data import PATH_PLACEHOLDERS
from pipeline.errors import DataError

# variable -> (its default, beside the repository; what the folder it names holds)
_ROOTS = {"FACE_DATA_ROOT": ("shared/data", "the folder with lfw/"), "FACE_MODELS_ROOT": ("shared/models", "the folder with edgeface/")}


def configured_input_paths(config: RunConfig) -> list[tuple[str, str]]:
    """(what it is, path) of every input the config names: training sources, verification sets, the teacher checkpoint."""
    data = config.data
    paths = [("dataset folder", data.train_path)] if data.source != "synthetic" else []
    paths += [("dataset folder", extra.path) for extra in data.extra_sources if extra.path]
    for entry in data.verification:
        paths += [("verification set", entry.path), ("verification image folder", entry.image_root)]
    paths += [("teacher checkpoint", config.teacher.checkpoint)]
    return [(what, path) for what, path in paths if path]


def check_input_paths(config: RunConfig) -> None:
    """Raise `DataError` naming the first configured input that does not exist (and the variable behind its root)."""
    for what, path in configured_input_paths(config):
        if Path(path).exists():
            continue
        for variable, root_of in PATH_PLACEHOLDERS.values():
            root = root_of()
            if Path(path).is_relative_to(root):
                default, holds = _ROOTS[variable]
                raise DataError(path, f"does not exist: {root} ({variable}, default {default} beside the repository) does not "
                                      f"hold it; set {variable} to {holds}")
        raise DataError(path, f"{what} does not exist")
