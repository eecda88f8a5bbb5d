"""Artifacts are written atomically (temp file in the same folder, fsync, rename) and identified by hash.

A crash or a full disk mid-write must leave the previous artifact intact, never a half-written one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(final_path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `final_path`; on success fsync it and rename it into place.

    The temp name keeps the final suffix so tools that look at the extension (onnx, pnnx, coremltools) work.
    On any exception the temporary file is removed and `final_path` is untouched.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(
        prefix=f".{final_path.stem}.", suffix=f".tmp{final_path.suffix}", dir=final_path.parent
    )
    os.close(handle)
    temp_path = Path(temp_name)
    try:
        yield temp_path
        if temp_path.is_file():
            with open(temp_path, "rb+") as written:
                os.fsync(written.fileno())
        os.replace(temp_path, final_path)
        _fsync_dir(final_path.parent)
    finally:
        if temp_path.is_file():
            temp_path.unlink()


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as temp:
        temp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    return write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, or of every file below a folder (names and contents, sorted) for bundles."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as stream:
            while chunk := stream.read(chunk_size):
                digest.update(chunk)
    return digest.hexdigest()


def path_size(path: str | Path) -> int:
    """Bytes of a file, or of every file below a folder (bundles such as .mlpackage)."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.is_file() else 0


def sha256_json(payload: Any) -> str:
    """Stable hash of a JSON-able value (sorted keys), used to key cached stages by their config."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
