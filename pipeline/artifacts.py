"""Artifacts are written atomically (temp file in the same folder, fsync, rename) and identified by hash.

A crash or a full disk mid-write must leave the previous artifact intact, never a half-written one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import DataError


_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: mkstemp creates files 0600, artifacts get the mode a plain open() would give


class ArtifactWriteError(DataError):
    """An artifact could not be written (disk full, quota, read-only folder): names the file; the old one is intact."""


@contextlib.contextmanager
def atomic_path(final_path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `final_path`; on success fsync it and rename it into place.

    The temp name keeps the final suffix so tools that look at the extension (onnx, pnnx, coremltools) work.
    On any exception the temporary file is removed and `final_path` is untouched; an OSError while writing
    (ENOSPC, EDQUOT, EFBIG, EROFS...) becomes an `ArtifactWriteError` naming `final_path`.
    """
    final_path = Path(final_path)
    temp_path: Path | None = None
    try:
        final_path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(
            prefix=f".{final_path.stem}.", suffix=f".tmp{final_path.suffix}", dir=final_path.parent
        )
        os.close(handle)
        temp_path = Path(temp_name)
        yield temp_path
        if temp_path.is_file():
            with open(temp_path, "rb+") as written:
                os.fsync(written.fileno())
            os.chmod(temp_path, 0o666 & ~_UMASK)
        os.replace(temp_path, final_path)
        _fsync_dir(final_path.parent)
    except OSError as exc:
        code = errno.errorcode.get(exc.errno or 0, "")
        other_file = f": {exc.filename}" if exc.filename and str(exc.filename) != str(temp_path) else ""
        reason = f"{exc.strerror or exc}{f' [{code}]' if code else ''}{other_file}"
        raise ArtifactWriteError(final_path, f"could not write it ({reason}{_free_space(final_path.parent)}); "
                                 "the previous version, if any, is intact") from exc
    finally:
        if temp_path is not None and temp_path.is_file():
            temp_path.unlink()


def _free_space(folder: Path) -> str:
    """", N MiB free there": tells a full disk from a quota or a file-size limit."""
    try:
        return f", {shutil.disk_usage(folder).free / 2**20:.1f} MiB free there"
    except OSError:
        return ""


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


def write_safetensors_atomic(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Serialise in memory, then write through `write_bytes_atomic`: a full disk surfaces as an OSError (and so an
    `ArtifactWriteError` naming the file), not as the safetensors library's own error type."""
    from safetensors.torch import save

    return write_bytes_atomic(path, save(tensors, metadata=metadata))


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
