"""A folder of raw face photos -> an aligned identity folder (<dst>/<identity>/<name>.png) the training readers load.

Photos are read from <src>/<identity>/<photo> (one folder per person) or, for files directly in <src>, named
by `identity_regex` (default: the file name up to its first dot, e.g. Yale's `subject01.happy` -> `subject01`).
Files are taken as photos by extension or, failing that, by their first bytes (Yale's GIFs have no extension).
Photos with no face (or no entry in the landmarks file) and photos that cannot be decoded are counted and named
in the report (<dst>/align_report.json, also returned), never silently dropped.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.align.transform import ARCFACE_TEMPLATE_112, align_face
from pipeline.artifacts import write_bytes_atomic, write_json_atomic
from pipeline.data.image_decode import UndecodableImage, encode_face, read_face
from pipeline.data.image_folder import IMAGE_EXTENSIONS
from pipeline.errors import DataError

log = logging.getLogger(__name__)

REPORT_FILE = "align_report.json"
PROGRESS_LOG_S = 30.0  # without a terminal (tqdm's bar off: a log file, a pipe) a progress line this often
DEFAULT_IDENTITY_REGEX = r"^[^.]+"
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"P2", b"P5", b"P3", b"P6", b"II*\x00", b"MM\x00*")

LandmarkSource = Callable[[str, np.ndarray], tuple[np.ndarray | None, int]]
"""(relative path, RGB photo) -> (5, 2) insightface landmarks or None, and the number of faces seen."""


@dataclass
class AlignReport:
    """What `align_folder` did: every aligned face, every photo without a face, every unreadable file."""

    source: str
    destination: str
    landmarks_from: str
    target_112: list[list[float]]  # where the 5 landmarks were placed (112x112 coordinates)
    aligned: list[dict] = field(default_factory=list)  # {source, output, identity, residual_px, faces_detected}
    not_found: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)

    @property
    def photos(self) -> int:
        return len(self.aligned) + len(self.not_found) + len(self.unreadable)

    def summary(self) -> str:
        identities = len({face["identity"] for face in self.aligned})
        line = f"aligned {len(self.aligned)} of {self.photos} photos ({identities} identities) into {self.destination}"
        if self.aligned:
            line += f"; mean landmark fit residual {np.mean([f['residual_px'] for f in self.aligned]):.2f} px"
        if self.not_found:
            line += f"; no face found in {len(self.not_found)}: {', '.join(self.not_found[:10])}{' ...' if len(self.not_found) > 10 else ''}"
        if self.unreadable:
            line += f"; {len(self.unreadable)} unreadable: {', '.join(list(self.unreadable)[:10])}"
        return line


def list_photos(src: Path, identity_regex: str = DEFAULT_IDENTITY_REGEX, skip: Path | None = None) -> list[tuple[str, str]]:
    """(relative path, identity) of every photo under `src`, sorted; `skip` is a folder to leave out (the output)."""
    if not src.is_dir():
        raise DataError(src, "photo folder does not exist" if not src.exists() else "is a file, expected a folder of photos")
    pattern = re.compile(identity_regex)
    photos: list[tuple[str, str]] = []
    for entry in sorted(src.iterdir()):
        if entry.name.startswith(".") or (skip is not None and entry.resolve() == skip):
            continue
        if entry.is_dir():
            photos += [(f"{entry.name}/{f.name}", entry.name) for f in sorted(entry.iterdir()) if _is_photo(f)]
        elif _is_photo(entry):
            match = pattern.search(entry.name)
            if match is None or not (match.group(1) if pattern.groups else match.group(0)):
                raise DataError(entry, f"file name does not match the identity pattern {identity_regex!r}")
            photos.append((entry.name, match.group(1) if pattern.groups else match.group(0)))
    if not photos:
        raise DataError(src, "no photos found (expected <src>/<identity>/<photo> or photos named by identity)")
    return photos


def align_folder(
    src: str | Path,
    dst: str | Path,
    landmark_source: LandmarkSource,
    landmarks_from: str,
    size: int = 112,
    identity_regex: str = DEFAULT_IDENTITY_REGEX,
    target_112: np.ndarray = ARCFACE_TEMPLATE_112,
) -> AlignReport:
    """Align every photo under `src` into `dst`/<identity>/; writes and returns the report. Raises if none aligned.

    `target_112` is where the source's landmarks go (see `transform.align_face`): the ArcFace template for
    insightface-convention points (a landmarks file), `DlibFaceLandmarker.target_112` for the detector's."""
    src, dst = Path(src), Path(dst)
    photos = list_photos(src, identity_regex, skip=dst.resolve())
    report = AlignReport(str(src), str(dst), landmarks_from, np.asarray(target_112).round(4).tolist())
    used_names: set[str] = set()
    log.info("aligning %d photos from %s into %s (%s)", len(photos), src, dst, landmarks_from)
    progress = tqdm(photos, desc="aligning", unit="photo", disable=None)
    last_line = time.monotonic()
    for done, (relative, identity) in enumerate(progress):
        if progress.disable and time.monotonic() - last_line >= PROGRESS_LOG_S:
            log.info("aligning: %d of %d photos done, %d faces aligned", done, len(photos), len(report.aligned))
            last_line = time.monotonic()
        try:
            image = read_face(src / relative, size=None)
        except UndecodableImage as error:
            log.warning("skipping unreadable photo %s: %s", src / relative, error.problem)
            report.unreadable[relative] = error.problem
            continue
        points, faces = landmark_source(relative, image)
        if points is None:
            report.not_found.append(relative)
            continue
        crop, residual = align_face(image, points, size, target_112)
        output = f"{identity}/{_output_name(Path(relative).name)}"
        if output in used_names:  # e.g. a.jpg and a.png of one person
            output = f"{identity}/{Path(relative).name}.png"
        used_names.add(output)
        write_bytes_atomic(dst / output, encode_face(crop, ".png"))
        report.aligned.append({"source": relative, "output": output, "identity": identity,
                               "residual_px": round(residual, 3), "faces_detected": faces})
    write_json_atomic(dst / REPORT_FILE, asdict(report))
    if not report.aligned:
        raise DataError(src, f"no face aligned in any of {report.photos} photos ({report.summary()})")
    return report


def landmarks_file_source(table: dict[str, np.ndarray]) -> LandmarkSource:
    """Landmarks looked up by relative path in a landmarks file's table (`landmarks.read_landmarks_file`)."""

    def lookup(relative: str, image: np.ndarray) -> tuple[np.ndarray | None, int]:
        points = table.get(relative)
        return points, int(points is not None)

    return lookup


def _output_name(name: str) -> str:
    suffix = Path(name).suffix.lower()
    return f"{Path(name).stem if suffix in IMAGE_EXTENSIONS else name}.png"


def _is_photo(path: Path) -> bool:
    if not path.is_file() or path.name.startswith("."):
        return False
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return True
    try:
        with open(path, "rb") as stream:
            head = stream.read(12)
    except OSError:
        return False
    return head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
