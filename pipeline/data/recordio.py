"""MXNet RecordIO (`train.rec` + `train.idx`), the format insightface ships its training sets in, without mxnet.

Framing (dmlc-core recordio): each record is uint32 magic 0xced7230a, uint32 lrecord (upper 3 bits cflag, lower
29 bits length), the bytes, zero padding to a multiple of 4. A payload that contains the magic at a 4-aligned
position is split there into parts (cflag 1 = first, 2 = middle, 3 = last; the magic itself is dropped and
re-inserted by the reader), so a reader can always resynchronise on the magic. `.idx` lines are "key<TAB>offset".

Image payloads start with mxnet's IRHeader, struct "<IfQQ" (flag, label, id, id2); when flag > 0, `flag` float32
labels follow (and the float label field is unused), then the encoded image.

insightface layout: record 0 is a header whose labels are [first identity record, end of identity records], so
images are records 1 .. label[0]-1 (each labelled with its identity), then one record per identity holding its
[start, end) image range. Files made by plain `im2rec` have no such header; then every record is an image. A plain
file's record 0 may carry several labels too, so the header is told by what it lacks (an image) and checked against
the index: a header whose ranges do not fit the index is refused rather than trusted to drop records.

insightface's configs name a folder (`cfg.rec`) holding train.rec and train.idx; such a folder is taken as its train.rec.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, Literal, NamedTuple

import numpy as np
from tqdm import tqdm

from pipeline.artifacts import atomic_path
from pipeline.data.arrays import FaceArrays
from pipeline.data.image_decode import (
    ALIGNED_SIZE,
    UndecodableImage,
    check_unreadable_fraction,
    decode_face,
    encode_face,
)
from pipeline.errors import DataError

logger = logging.getLogger(__name__)

RECORDIO_MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", RECORDIO_MAGIC)
_FRAME = struct.Struct("<II")  # magic, lrecord
_IR_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2: 24 bytes, as mxnet's native "IfQQ" on x86/ARM
_LENGTH_BITS = 29
_MAX_LENGTH = (1 << _LENGTH_BITS) - 1
FOLDER_REC_NAME = "train.rec"  # what insightface's `cfg.rec` folder holds, beside train.idx


class IRHeader(NamedTuple):
    """mxnet's image record header; `label` is a float, or a float32 array when flag > 0."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


class CorruptRecord(DataError):
    """A record that cannot be read (bad magic, truncated, malformed header): loaders skip and count these."""


class RecordLayout(NamedTuple):
    """Which layout a .rec was read as, its image records, and why (logged, so a wrong guess shows)."""

    kind: Literal["insightface", "im2rec"]
    image_keys: list[int]
    reason: str


def recordio_paths(path: str | Path, idx_path: str | Path | None = None) -> tuple[Path, Path]:
    """(the .rec, its .idx) for a .rec path or an insightface data folder (its train.rec); the index defaults to the
    .rec's path with suffix .idx."""
    rec_path = Path(path)
    if rec_path.is_dir():
        rec_path = rec_path / FOLDER_REC_NAME
    return rec_path, Path(idx_path) if idx_path is not None else rec_path.with_suffix(".idx")


def pack_record(header: IRHeader, image_bytes: bytes = b"") -> bytes:
    """IRHeader + labels + image bytes; an array label sets flag to its length, as mxnet's `pack` does."""
    if isinstance(header.label, (int, float, np.integer, np.floating)):
        return _IR_HEADER.pack(0, float(header.label), header.id, header.id2) + image_bytes
    labels = np.asarray(header.label, dtype="<f4").ravel()
    return _IR_HEADER.pack(labels.size, 0.0, header.id, header.id2) + labels.tobytes() + image_bytes


def unpack_record(payload: bytes, source: str = "record") -> tuple[IRHeader, bytes]:
    """Inverse of `pack_record`; a payload too short for what its header announces is a `CorruptRecord`."""
    if len(payload) < _IR_HEADER.size:
        raise CorruptRecord(source, f"{len(payload)} bytes, too short for the {_IR_HEADER.size}-byte IRHeader")
    flag, label, record_id, record_id2 = _IR_HEADER.unpack_from(payload)
    body = payload[_IR_HEADER.size :]
    if flag == 0:
        return IRHeader(0, float(label), record_id, record_id2), body
    if len(body) < 4 * flag:
        raise CorruptRecord(source, f"IRHeader announces {flag} labels but only {len(body)} bytes follow")
    labels = np.frombuffer(body, dtype="<f4", count=flag).astype(np.float32)
    return IRHeader(flag, labels, record_id, record_id2), body[4 * flag :]


def frame_record(payload: bytes) -> bytes:
    """Frame one payload as dmlc-core does, splitting it wherever the magic sits at a 4-aligned position."""
    if len(payload) > _MAX_LENGTH:
        raise ValueError(f"RecordIO records must be under 2^29 bytes, got {len(payload)}")
    parts = []
    start = 0
    for position in range(0, len(payload) - 3, 4):
        if payload[position : position + 4] == _MAGIC_BYTES:
            parts.append((1 if start == 0 else 2, payload[start:position]))
            start = position + 4
    parts.append((3 if start else 0, payload[start:]))
    framed = bytearray()
    for cflag, part in parts:
        framed += _FRAME.pack(RECORDIO_MAGIC, (cflag << _LENGTH_BITS) | len(part)) + part
        framed += b"\0" * (-len(part) % 4)
    return bytes(framed)


class RecordIOReader:
    """Random access to the records of a .rec through its .idx (default: the .rec path with suffix .idx); `rec_path`
    may be a folder holding train.rec and train.idx (insightface's `cfg.rec`)."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None) -> None:
        self.rec_path, self.idx_path = recordio_paths(rec_path, idx_path)
        if not self.rec_path.is_file():
            if Path(rec_path).is_dir():
                raise DataError(rec_path, f"RecordIO folder holds no {FOLDER_REC_NAME} (a folder given as a RecordIO source "
                                          f"must hold {FOLDER_REC_NAME} and train.idx, as insightface's cfg.rec does)")
            raise DataError(self.rec_path, "RecordIO file does not exist")
        if not self.idx_path.is_file():
            raise DataError(
                self.idx_path,
                f"RecordIO index does not exist (needed to read {self.rec_path.name}; mxnet and insightface "
                "tools write it beside the .rec)",
            )
        self._offsets = _read_index(self.idx_path)
        self._keys = sorted(self._offsets)
        self._stream: BinaryIO = open(self.rec_path, "rb")  # noqa: SIM115 - closed by close() / __exit__
        self._size = os.fstat(self._stream.fileno()).st_size

    def __len__(self) -> int:
        return len(self._keys)

    def __enter__(self) -> RecordIOReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._stream.close()

    def keys(self) -> list[int]:
        return list(self._keys)

    def read_payload(self, key: int) -> bytes:
        """The raw bytes of record `key` (parts joined); framing problems raise `CorruptRecord`."""
        if key not in self._offsets:
            raise CorruptRecord(self.rec_path, f"record {key} is not in the index {self.idx_path}")
        position = self._offsets[key]
        parts: list[bytes] = []
        while True:
            where = f"record {key} at byte {position}"
            frame = self._read_at(position, _FRAME.size, where)
            magic, lrecord = _FRAME.unpack(frame)
            if magic != RECORDIO_MAGIC:
                expected = f"0x{RECORDIO_MAGIC:08x}"
                raise CorruptRecord(self.rec_path, f"{where}: bad magic 0x{magic:08x} (expected {expected})")
            cflag, length = lrecord >> _LENGTH_BITS, lrecord & _MAX_LENGTH
            if cflag not in ((0, 1) if not parts else (2, 3)):
                raise CorruptRecord(self.rec_path, f"{where}: part flag {cflag} out of sequence")
            parts.append(self._read_at(position + _FRAME.size, length, where))
            position += _FRAME.size + length + (-length % 4)
            if cflag in (0, 3):
                return _MAGIC_BYTES.join(parts)

    def read_record(self, key: int) -> tuple[IRHeader, bytes]:
        """(IRHeader, image bytes) of record `key`."""
        payload = self.read_payload(key)
        try:
            return unpack_record(payload)
        except CorruptRecord as error:
            raise CorruptRecord(self.rec_path, f"record {key}: {error.problem}") from None

    def image_indices(self) -> list[int]:
        """Keys of image records: 1 .. header.label[0]-1 when record 0 is an insightface header, else all keys."""
        return self.layout().image_keys

    def layout(self) -> RecordLayout:
        """insightface (record 0 a header: labels but no image, ranges that fit the index) or plain im2rec (every
        record an image). A header whose ranges do not fit the index is a DataError naming the .rec: trusting it
        would drop records, taking it for an image would train on a record that holds none."""
        if 0 not in self._offsets:
            return RecordLayout("im2rec", list(self._keys), "no record 0")
        header, image_bytes = self.read_record(0)
        if header.flag < 2:
            return RecordLayout("im2rec", list(self._keys), "record 0 has a single label")
        if image_bytes:
            return RecordLayout("im2rec", list(self._keys), f"record 0 has {header.flag} labels and an image, so it is an image")
        first_identity_record, identity_end = (float(value) for value in header.label[:2])
        problem = self._header_problem(first_identity_record, identity_end)
        if problem is not None:
            index = f"{self.idx_path.name} ({len(self._keys)} records, keys {self._keys[0]}..{self._keys[-1]})"
            raise DataError(self.rec_path, f"record 0 is an insightface header (labels, no image) that does not fit {index}: "
                                           f"{problem}; rewrite the header or remove record 0")
        first, end = int(first_identity_record), int(identity_end)
        return RecordLayout("insightface", list(range(1, first)),
                            f"record 0 is the header: images 1..{first - 1}, {end - first} identity records")

    def _header_problem(self, first_identity_record: float, identity_end: float) -> str | None:
        """Why header labels [first identity record, end] do not describe this index, or None when they do."""
        if not (first_identity_record.is_integer() and identity_end.is_integer() and 1 <= first_identity_record <= identity_end):
            return f"labels {first_identity_record:g}, {identity_end:g} are not a range of records"
        first = int(first_identity_record)
        missing = next((key for key in range(1, first) if key not in self._offsets), None)
        if missing is not None:
            return f"its image records 1..{first - 1} point past the index (no record {missing})"
        if self._keys[-1] >= identity_end:  # records the header does not account for would be dropped unread
            return f"the index holds records up to {self._keys[-1]}, past the header's end {int(identity_end)}"
        return None

    def _read_at(self, position: int, length: int, where: str) -> bytes:
        if position + length > self._size:
            raise CorruptRecord(
                self.rec_path, f"{where}: truncated (needs bytes up to {position + length}, file has {self._size})"
            )
        self._stream.seek(position)
        return self._stream.read(length)


def load_recordio(
    rec_path: str | Path,
    size: tuple[int, int] | None = ALIGNED_SIZE,
    max_bad_fraction: float = 0.01,
    idx_path: str | Path | None = None,
) -> FaceArrays:
    """Decode every image record; labels (identity ids, or label[0] of multi-label records) remapped to 0..C-1.

    Corrupt records and undecodable images are logged with their record index, skipped and counted; above
    `max_bad_fraction` of the image records that is a DataError naming the .rec. `rec_path` may be a folder holding
    train.rec and train.idx. The layout found and the number of records read are logged.
    """
    images: list[np.ndarray] = []
    raw_labels: list[float] = []
    bad_records: list[str] = []
    with RecordIOReader(rec_path, idx_path) as reader:
        rec_path = reader.rec_path
        layout = reader.layout()
        image_keys = layout.image_keys
        logger.info("%s: %s layout (%s); %d image records of %d", rec_path, layout.kind, layout.reason,
                    len(image_keys), len(reader))
        if not image_keys:
            raise DataError(rec_path, "holds no image records")
        for key in tqdm(image_keys, desc=f"decoding {rec_path.name}", unit="img", disable=None, leave=False):
            try:
                header, image_bytes = reader.read_record(key)
                label = float(header.label[0] if header.flag > 0 else header.label)
                if not np.isfinite(label):
                    raise CorruptRecord(rec_path, f"record {key}: label {label} is not a number")
                image = _decode_record_image(rec_path, key, image_bytes, size)
            except (CorruptRecord, UndecodableImage) as error:
                logger.warning("skipping unreadable record of %s: %s", rec_path, error.problem)
                bad_records.append(error.problem)  # starts with "record <key>"
                continue
            if images and image.shape != images[0].shape:
                raise DataError(rec_path, f"record {key}: image differs in size from the first image")
            images.append(image)
            raw_labels.append(label)
    check_unreadable_fraction(rec_path, bad_records, len(image_keys), max_bad_fraction)
    if not images:
        raise DataError(rec_path, "no readable image records")
    logger.info("%s: read %d images (%d unreadable records skipped)", rec_path, len(images), len(bad_records))
    _, labels = np.unique(np.array(raw_labels), return_inverse=True)
    return FaceArrays(images=np.stack(images), labels=labels.astype(np.int64).ravel())


def _decode_record_image(rec_path: Path, key: int, image_bytes: bytes, size: tuple[int, int] | None) -> np.ndarray:
    try:
        return decode_face(image_bytes, str(rec_path), size)
    except DataError as error:  # keep the error's kind (skippable or not), add which record
        raise type(error)(rec_path, f"record {key}: {error.problem}") from None


def write_records(rec_path: str | Path, idx_path: str | Path, payloads: Iterable[bytes]) -> None:
    """Write payloads as records 0, 1, 2, ... with their .idx; both files atomic, the .rec renamed in first."""
    with atomic_path(idx_path) as temp_idx:
        index_lines = []
        with atomic_path(rec_path) as temp_rec, open(temp_rec, "wb") as rec_stream:
            for key, payload in enumerate(payloads):
                index_lines.append(f"{key}\t{rec_stream.tell()}\n")
                rec_stream.write(frame_record(payload))
        temp_idx.write_text("".join(index_lines), encoding="ascii")


def write_recordio(
    rec_path: str | Path,
    idx_path: str | Path,
    faces: FaceArrays,
    quality: int = 95,
    image_format: str = ".jpg",
) -> None:
    """Write `faces` in the insightface train.rec layout (header, images grouped by identity, identity records)."""
    order = np.argsort(faces.labels, kind="stable")
    sorted_labels = faces.labels[order]
    num_images, num_identities = len(order), faces.num_identities
    first_identity_record = num_images + 1
    starts = 1 + np.searchsorted(sorted_labels, np.arange(num_identities), side="left")
    ends = 1 + np.searchsorted(sorted_labels, np.arange(num_identities), side="right")

    def payloads() -> Iterable[bytes]:
        yield pack_record(IRHeader(2, np.array([first_identity_record, first_identity_record + num_identities]), 0, 0))
        for record_key, image_index in enumerate(order, start=1):
            image_bytes = encode_face(faces.images[image_index], image_format, quality)
            yield pack_record(IRHeader(0, float(faces.labels[image_index]), record_key, 0), image_bytes)
        for identity in range(num_identities):
            record_key = first_identity_record + identity
            yield pack_record(IRHeader(2, np.array([starts[identity], ends[identity]]), record_key, 0))

    write_records(rec_path, idx_path, payloads())


def _read_index(idx_path: Path) -> dict[int, int]:
    offsets: dict[int, int] = {}
    try:
        lines = idx_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(idx_path, f"cannot read RecordIO index ({error})") from None
    for line_number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not all(field.isdigit() for field in fields):
            raise DataError(idx_path, f"line {line_number}: expected 'key<TAB>offset', got {line.strip()[:80]!r}")
        offsets[int(fields[0])] = int(fields[1])
    if not offsets:
        raise DataError(idx_path, "RecordIO index lists no records")
    return offsets
