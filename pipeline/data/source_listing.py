"""What the data stage reads, listed, so that a change to the data (not only to the config) reruns the stage.

Folders are listed (relative path, size, mtime_ns) rather than hashed: reading every image on each run would cost
more than the cache saves. Files that carry a data set's structure (.bin verification sets, RecordIO .rec/.idx,
pairs lists) are hashed, so a replacement at the same path with the same size and time is still seen; the caller
passes the function that hashes them (the stage runner's `HashMemo`, so that a large RecordIO costs its hash once,
not on every run). Nothing is written here: the runner keeps a listing's digest and file count in the manifest.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.artifacts import sha256_file
from pipeline.config import DataConfig
from pipeline.data.recordio import recordio_paths

CONTENT_HASHED = frozenset({".bin", ".rec", ".idx", ".lst", ".txt"})


def data_source_paths(data: DataConfig) -> list[Path]:
    """Every file or folder the data stage reads for `data`, in config order (none for synthetic data)."""
    paths: list[tuple[str | None, str | None]] = []
    if data.source != "synthetic":
        paths.append((data.source, data.train_path))
    paths += [(extra.kind, extra.path) for extra in data.extra_sources]
    for entry in data.verification:
        paths += [(entry.kind, entry.path), ("folder", entry.image_root)]
    found: list[Path] = []
    for kind, path in paths:
        if not path:
            continue
        # A RecordIO source is its .rec and the reader's default index beside it (a folder: its train.rec and train.idx,
        # not every file in it, which would tie the data stage to the .bin sets insightface ships beside them).
        found += recordio_paths(path) if kind == "recordio" else [Path(path)]
    return list(dict.fromkeys(found))


def list_source(path: Path, hash_file: Callable[[Path], str] = sha256_file) -> dict[str, Any]:
    """{relative path: [size, mtime_ns] or "sha256:<hex>"} of every file under a folder (dot-files left out), or
    {name: "sha256:<hex>"} for a file; {name: "missing"} when it does not exist ("unreadable" for what cannot be read)."""
    if path.is_file():
        try:
            return {path.name: f"sha256:{hash_file(path)}"}
        except PermissionError:
            return {path.name: "unreadable"}
    if not path.is_dir():
        return {path.name: "missing"}
    entries: dict[str, Any] = {}
    _walk(path, "", entries, set(), hash_file)
    return entries


def _walk(folder: Path, prefix: str, entries: dict[str, Any], seen: set[tuple[int, int]], hash_file: Callable[[Path], str]) -> None:
    stat = folder.stat()
    if (stat.st_dev, stat.st_ino) in seen:  # a symlink loop
        return
    seen.add((stat.st_dev, stat.st_ino))
    with os.scandir(folder) as scan:
        children = sorted(scan, key=lambda entry: entry.name)
    for entry in children:
        if entry.name.startswith("."):
            continue
        relative = f"{prefix}{entry.name}"
        try:
            if entry.is_dir():
                _walk(Path(entry.path), f"{relative}/", entries, seen, hash_file)
            elif Path(entry.name).suffix.lower() in CONTENT_HASHED:
                entries[relative] = f"sha256:{hash_file(Path(entry.path))}"
            else:
                info = entry.stat()
                entries[relative] = [info.st_size, info.st_mtime_ns]
        except FileNotFoundError:  # removed while listing (or a dangling link): not an input any more
            continue
        except PermissionError:  # the loader names it when it reads it; here it only has to count as a change
            entries[relative] = "unreadable"
