"""Every input file a run reads, checked before any stage runs: a missing one is one line, not a traceback later.

Paths under the real-data or pretrained-models root (`${FACE_DATA_ROOT}`, `${FACE_MODELS_ROOT}` in a profile) say which
environment variable points there, since on a user's machine that folder is usually what is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.config import RunConfig
from pipeline.data.recordio import FOLDER_REC_NAME
from pipeline.data.real_data import PATH_PLACEHOLDERS
from pipeline.errors import DataError

# variable -> (its default, beside the repository; what the folder it names holds)
_ROOTS = {"FACE_DATA_ROOT": ("shared/data", "the folder with lfw/"), "FACE_MODELS_ROOT": ("shared/models", "the folder with edgeface/")}


def configured_input_paths(config: RunConfig) -> list[tuple[str, str]]:
    """(what it is, path) of every input the config names: training sources, verification sets, the teacher checkpoint."""
    return [(what, path) for what, path, _ in configured_inputs(config)]


def configured_inputs(config: RunConfig) -> list[tuple[str, str, str]]:
    """(what it is, path, "file", "folder" or "recordio") of every input the config names; "recordio" is a .rec file
    or a folder holding train.rec (insightface's `cfg.rec`)."""
    data = config.data
    sources = [(data.source, data.train_path)] if data.source != "synthetic" else []
    sources += [(extra.kind, extra.path) for extra in data.extra_sources if extra.path]
    inputs = [("RecordIO file", path, "recordio") if kind == "recordio" else ("dataset folder", path, "folder")
              for kind, path in sources]
    for entry in data.verification:
        if entry.kind == "folder_pairs":  # pairs drawn from a labelled folder: the set is the folder
            inputs += [("verification set folder", entry.path, "folder")]
        else:
            inputs += [("verification set", entry.path, "file"), ("verification image folder", entry.image_root, "folder")]
    inputs += [("teacher checkpoint", config.teacher.checkpoint, "file")]
    return [(what, path, kind) for what, path, kind in inputs if path]


def check_input_paths(config: RunConfig) -> None:
    """Raise `DataError` naming the first configured input that does not exist (and the variable behind its root), is
    a folder where a file belongs or the other way round, or cannot be read; called before any stage hashes inputs."""
    for what, path, kind in configured_inputs(config):
        if not Path(path).exists():
            raise missing_input(what, path)
        if kind == "file" and not Path(path).is_file():
            raise DataError(path, f"{what} is a folder, not a file")
        if kind == "folder" and not Path(path).is_dir():
            raise DataError(path, f"{what} is a file, not a folder")
        if kind == "recordio" and Path(path).is_dir() and not (Path(path) / FOLDER_REC_NAME).is_file():
            raise DataError(path, f"is a folder without {FOLDER_REC_NAME}: a RecordIO source is a .rec file or a folder "
                                  f"holding {FOLDER_REC_NAME} and train.idx (insightface's cfg.rec)")
        if not os.access(path, os.R_OK | (os.X_OK if Path(path).is_dir() else 0)):
            raise DataError(path, f"{what} cannot be read (permission denied)")


def missing_input(what: str, path: str) -> DataError:
    for variable, root_of in PATH_PLACEHOLDERS.values():
        root = root_of()
        if Path(path).is_relative_to(root):
            default, holds = _ROOTS[variable]
            return DataError(path, f"does not exist: {root} ({variable}, default {default} beside the repository) does not "
                                   f"hold it; set {variable} to {holds}")
    return DataError(path, f"{what} does not exist")
