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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import DataError


_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: mkstemp creates files 0600, artifacts get the mode a plain open() would give


# The machine's fault, not the code's: a full disk or quota, a file-size limit, a read-only or failing disk.
WRITE_FAULTS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})


class ArtifactWriteError(DataError):
    """An artifact could not be written (disk full, quota, read-only folder): names the file; the old one is intact."""


def write_fault(exc: BaseException) -> OSError | None:
    """The OSError of the WRITE_FAULTS kind behind `exc` (itself, or anything it was raised from), else None.

    Tells "the machine could not store it" apart from "the code could not make it", whatever wrapped the OSError.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in WRITE_FAULTS:
            return current
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return None


def write_error(final_path: str | Path, exc: OSError, temp_path: str | Path | None = None) -> ArtifactWriteError:
    """The one-line error for `exc` while writing `final_path`: names the final file, never a temporary one.

    When a write fault hit a tool's scratch file on another disk (/tmp), that folder is named instead, since it
    is the disk to free; the free space shown is that of the disk the write failed on.
    """
    final_path = Path(final_path)
    code = errno.errorcode.get(exc.errno or 0, "")
    reason = f"{exc.strerror or exc}{f' [{code}]' if code else ''}"
    space_of = final_path.parent
    failed_on = Path(exc.filename) if exc.filename else None
    if failed_on is not None and str(failed_on) not in {str(temp_path), str(final_path)}:
        if exc.errno not in WRITE_FAULTS:
            reason += f": {failed_on}"  # not a full disk: the other file is the problem
        elif (other_disk := _folder_on_another_disk(failed_on, final_path.parent)) is not None:
            reason += f" writing under {other_disk}"
            space_of = other_disk
    return ArtifactWriteError(final_path, f"could not write it ({reason}{_free_space(space_of)}); "
                              "the previous version, if any, is intact")


def _existing(folder: Path) -> Path:
    """`folder` or the nearest folder above it that exists (a stage's folder before its first commit)."""
    return next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))


def _folder_on_another_disk(path: Path, folder: Path) -> Path | None:
    """The nearest existing folder above `path`, if it lies on another filesystem than `folder`, else None."""
    try:
        holder = _existing(path.parent)
        return holder if os.stat(holder).st_dev != os.stat(_existing(folder)).st_dev else None
    except OSError:
        return None


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
        raise write_error(final_path, exc, temp_path) from exc
    finally:
        if temp_path is not None and temp_path.is_file():
            temp_path.unlink()


def _free_space(folder: Path) -> str:
    """", N MiB free there": tells a full disk from a quota or a file-size limit."""
    try:
        return f", {shutil.disk_usage(_existing(folder)).free / 2**20:.1f} MiB free there"
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


# A file changed this recently could change again within one timestamp tick: its hash is not remembered.
RACY_NS = 2_000_000_000


class HashMemo:
    """sha256 of files keyed by (size, mtime_ns, ctime_ns, inode), so that a large input unchanged since the last run
    is not read again. Writing a file, renaming another over it or setting its times all move its ctime, which no user
    can set back, so an unchanged key means unchanged bytes."""

    def __init__(self, known: Any = None) -> None:
        self.known: dict[str, list] = {name: entry for name, entry in (known.items() if isinstance(known, dict) else ())
                                       if _memo_entry(entry)}  # anything else in a stored memo is ignored, not trusted
        self.asked: set[str] = set()

    def current(self) -> dict[str, list]:
        """What is remembered of the files asked about so far (files not asked about are forgotten)."""
        return {name: entry for name, entry in self.known.items() if name in self.asked}

    def sha256(self, path: Path) -> str:
        self.asked.add(str(path))
        info = path.stat()
        key = [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]
        remembered = self.known.get(str(path))
        if remembered is not None and remembered[:4] == key:
            return remembered[4]
        digest = sha256_file(path)
        if time.time_ns() - info.st_ctime_ns > RACY_NS:
            self.known[str(path)] = [*key, digest]
        else:
            self.known.pop(str(path), None)
        return digest


def _memo_entry(entry: Any) -> bool:
    return (isinstance(entry, list) and len(entry) == 5 and all(isinstance(n, int) and not isinstance(n, bool) for n in entry[:4])
            and isinstance(entry[4], str))


def path_size(path: str | Path) -> int:
    """Bytes of a file, or of every file below a folder (bundles such as .mlpackage)."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.is_file() else 0


def sha256_json(payload: Any) -> str:
    """Stable hash of a JSON-able value (sorted keys), used to key cached stages by their config."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
