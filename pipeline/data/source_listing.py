"""What the data stage reads, listed, so that a change to the data (not only to the config) reruns the stage.

Folders are listed (relative path, size, mtime_ns) rather than hashed: reading every image on each run would cost
more than the cache saves. Files that carry a data set's structure (.bin verification sets, RecordIO .rec/.idx,
pairs lists) are hashed, so a replacement at the same path with the same size and time is still seen; a file whose
size, times and inode are as when it was last hashed is not read again (`HashMemo`), so a large RecordIO costs its
hash once, not on every run.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from pipeline.artifacts import write_json_atomic
from pipeline.config import DataConfig

CONTENT_HASHED = frozenset({".bin", ".rec", ".idx", ".lst", ".txt"})
RACY_NS = 2_000_000_000  # a file changed this recently could change again within one timestamp tick: not remembered


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
        found.append(Path(path))
        if kind == "recordio":
            found.append(Path(path).with_suffix(".idx"))  # the reader's default index, beside the .rec
    return list(dict.fromkeys(found))


def sha256_of(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


class HashMemo:
    """sha256 of files keyed by (size, mtime_ns, ctime_ns, inode). Writing a file, renaming another over it or setting
    its times all move its ctime, which no user can set back, so an unchanged key means unchanged bytes."""

    def __init__(self, known: dict[str, list] | None = None) -> None:
        self.known = dict(known or {})
        self.asked: set[str] = set()

    def current(self) -> dict[str, list]:
        """What is remembered of the files asked about this time (files gone since are forgotten)."""
        return {name: entry for name, entry in self.known.items() if name in self.asked}

    def sha256(self, path: Path) -> str:
        self.asked.add(str(path))
        info = path.stat()
        key = [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]
        remembered = self.known.get(str(path))
        if remembered is not None and remembered[:4] == key:
            return remembered[4]
        digest = sha256_of(path)
        if time.time_ns() - info.st_ctime_ns > RACY_NS:
            self.known[str(path)] = [*key, digest]
        else:
            self.known.pop(str(path), None)
        return digest


def list_source(path: Path, memo: HashMemo | None = None) -> dict[str, Any]:
    """{relative path: [size, mtime_ns] or "sha256:<hex>"} of every file under a folder (dot-files left out), or
    {name: "sha256:<hex>"} for a file; {name: "missing"} when it does not exist ("unreadable" for what cannot be read)."""
    memo = memo or HashMemo()
    if path.is_file():
        try:
            return {path.name: f"sha256:{memo.sha256(path)}"}
        except PermissionError:
            return {path.name: "unreadable"}
    if not path.is_dir():
        return {path.name: "missing"}
    entries: dict[str, Any] = {}
    _walk(path, "", entries, set(), memo)
    return entries


def _walk(folder: Path, prefix: str, entries: dict[str, Any], seen: set[tuple[int, int]], memo: HashMemo) -> None:
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
                _walk(Path(entry.path), f"{relative}/", entries, seen, memo)
            elif Path(entry.name).suffix.lower() in CONTENT_HASHED:
                entries[relative] = f"sha256:{memo.sha256(Path(entry.path))}"
            else:
                info = entry.stat()
                entries[relative] = [info.st_size, info.st_mtime_ns]
        except FileNotFoundError:  # removed while listing (or a dangling link): not an input any more
            continue
        except PermissionError:  # the loader names it when it reads it; here it only has to count as a change
            entries[relative] = "unreadable"


def listing_cache_dir() -> Path:
    """Where the last listing of each source is kept ($XDG_CACHE_HOME, else ~/.cache): the stage runner hashes these
    files, and the next run compares against them to say what changed."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "face-distill-export" / "data-inputs"


def record_listing(source: Path) -> tuple[Path, str | None]:
    """List `source` into its cache file; return the file and, when an earlier listing differs, what changed."""
    key = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:16]
    cache = listing_cache_dir() / f"{source.name}-{key}.json"
    hashes = cache.with_name(f"{cache.stem}.hashes.json")  # beside it: the runner hashes the listing alone
    remembered = _read_json(hashes)
    memo = HashMemo(remembered)
    files = list_source(source, memo)
    if memo.current() != (remembered or {}):
        write_json_atomic(hashes, memo.current())
    previous = (_read_json(cache) or {}).get("files")
    if previous == files:
        return cache, None
    write_json_atomic(cache, {"source": str(source), "files": files})
    return cache, None if previous is None else describe_change(previous, files)


def _read_json(path: Path) -> dict | None:
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def describe_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    """What differs between two listings of one source, e.g. "3 files added, 1 changed"."""
    added = len(new.keys() - old.keys())
    removed = len(old.keys() - new.keys())
    changed = sum(1 for name in new.keys() & old.keys() if new[name] != old[name])
    words = [f"{count} {what}" for count, what in ((added, "added"), (removed, "removed"), (changed, "changed")) if count]
    if not words:
        return "unchanged"
    count, what = words[0].split(" ", 1)
    words[0] = f"{count} {'file' if count == '1' else 'files'} {what}"
    return ", ".join(words)
