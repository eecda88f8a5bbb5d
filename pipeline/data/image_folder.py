"""Training faces from a folder per identity (<root>/<identity>/<image>) or from a list file of "path label" lines.

Both return `LabeledFaces`: the `FaceArrays` plus the identity name behind each label index (so a trained model's
classes can be named) and the files that were skipped. Scraped datasets always hold a few broken files, so
undecodable ones are skipped, logged and counted, and only a fraction above `max_bad_fraction` is an error; a face
of the wrong size is never skipped, since it means the whole set is not aligned.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.data.arrays import FaceArrays
from pipeline.data.image_decode import ALIGNED_SIZE, UndecodableImage, check_unreadable_fraction, read_face
from pipeline.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".gif"})
_HEADER_PATH_NAMES = frozenset({"path", "file", "filename", "image", "image_path", "relative_path", "img"})


@dataclass(frozen=True)
class LabeledFaces:
    """Faces with named identities: `identity_names[label]` is the folder (or list-file label) of that label."""

    faces: FaceArrays
    identity_names: tuple[str, ...]
    skipped_files: tuple[str, ...] = ()


def load_image_folder(
    root: str | Path,
    size: tuple[int, int] | None = ALIGNED_SIZE,
    max_bad_fraction: float = 0.01,
    min_images_per_identity: int = 1,
) -> LabeledFaces:
    """Load <root>/<identity>/<image>; identities sorted by folder name become labels 0..C-1.

    Identities with fewer than `min_images_per_identity` readable images are dropped (labels stay contiguous).
    Hidden files and files without an image extension are ignored.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(root, "dataset folder does not exist")
    if not root.is_dir():
        raise DataError(root, "is a file, expected a dataset folder of <identity>/<image> files")
    listed: list[tuple[Path, str]] = []
    for identity_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for image_path in sorted(identity_dir.iterdir()):
            if image_path.is_file() and not image_path.name.startswith(".") and _is_image_name(image_path):
                listed.append((image_path, identity_dir.name))
    if not listed:
        raise DataError(root, "no images found (expected <root>/<identity>/<image>)")
    return _decode_labeled(root, listed, size, max_bad_fraction, min_images_per_identity, numeric_labels=False)


def load_unlabelled_folder(root: str | Path, size: tuple[int, int] | None = ALIGNED_SIZE, max_bad_fraction: float = 0.01) -> FaceArrays:
    """Every image under `root`, at any depth (sorted paths), as faces labelled -1: faces without identities, which
    only distillation can learn from."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "unlabelled face folder does not exist" if not root.exists() else "is a file, expected a folder of face images")
    listed = [(path, "") for path in sorted(root.rglob("*"))
              if path.is_file() and _is_image_name(path) and not any(part.startswith(".") for part in path.relative_to(root).parts)]
    if not listed:
        raise DataError(root, "no images found")
    faces = _decode_labeled(root, listed, size, max_bad_fraction, 1, numeric_labels=False).faces
    return FaceArrays(faces.images, np.full(len(faces.labels), -1, dtype=np.int64))


def load_list_file(
    list_path: str | Path,
    root: str | Path,
    size: tuple[int, int] | None = ALIGNED_SIZE,
    max_bad_fraction: float = 0.01,
    min_images_per_identity: int = 1,
) -> LabeledFaces:
    """Load the images listed in `list_path`, relative to `root`, one per line.

    Accepted lines: "relative/path label" (whitespace), "relative/path,label" (CSV, optional header row) and
    mxnet im2rec .lst lines "index<TAB>label<TAB>relative/path". Labels may be integers (ordered numerically) or
    names (ordered as strings); they are remapped to 0..C-1 and kept as `identity_names`. A listed file that is
    missing counts as unreadable.
    """
    list_path, root = Path(list_path), Path(root)
    try:
        lines = list_path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(list_path, "list file does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(list_path, f"cannot read list file ({error})") from None
    listed: list[tuple[Path, str]] = []
    for line_number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        relative_path, label = _split_list_line(list_path, line_number, line)
        if line_number == 1 and relative_path.lower() in _HEADER_PATH_NAMES:
            continue
        listed.append((root / relative_path, label))
    if not listed:
        raise DataError(list_path, "lists no images")
    numeric = all(_integral_label(label) is not None for _, label in listed)
    if numeric:  # "3" and im2rec's "3.000000" are the same identity
        listed = [(path, str(_integral_label(label))) for path, label in listed]
    return _decode_labeled(list_path, listed, size, max_bad_fraction, min_images_per_identity, numeric_labels=numeric)


def _split_list_line(list_path: Path, line_number: int, line: str) -> tuple[str, str]:
    tab_fields = line.rstrip("\r\n").split("\t")
    if len(tab_fields) >= 3 and tab_fields[0].strip().isdigit():  # im2rec .lst: index, label(s), path
        return tab_fields[-1].strip(), tab_fields[1].strip()
    separator = "," if "," in line else None
    fields = line.strip().rsplit(separator, 1)
    if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
        raise DataError(list_path, f"line {line_number}: expected 'relative/path label', got {line.strip()!r}")
    return fields[0].strip(), fields[1].strip()


def _decode_labeled(
    source: Path,
    listed: list[tuple[Path, str]],
    size: tuple[int, int] | None,
    max_bad_fraction: float,
    min_images_per_identity: int,
    numeric_labels: bool,
) -> LabeledFaces:
    """Decode every listed image, skip and count unreadable ones, then keep identities with enough images."""
    images: list[np.ndarray] = []
    identities: list[str] = []
    unreadable: list[str] = []
    for image_path, identity in tqdm(listed, desc=f"decoding {source.name}", unit="img", disable=None, leave=False):
        try:
            image = read_face(image_path, size)
        except UndecodableImage as error:
            logger.warning("skipping unreadable image %s: %s", image_path, error.problem)
            unreadable.append(str(image_path))
            continue
        if images and image.shape != images[0].shape:
            raise DataError(
                image_path,
                f"image is {image.shape[1]}x{image.shape[0]}, unlike the "
                f"{images[0].shape[1]}x{images[0].shape[0]} images before it",
            )
        images.append(image)
        identities.append(identity)
    check_unreadable_fraction(source, unreadable, len(listed), max_bad_fraction)
    image_counts = Counter(identities)
    kept_names = [name for name, count in image_counts.items() if count >= min_images_per_identity]
    kept_names.sort(key=int if numeric_labels else None)
    if not kept_names:
        raise DataError(source, f"no identity has at least {min_images_per_identity} readable images")
    label_of = {name: label for label, name in enumerate(kept_names)}
    keep = [index for index, identity in enumerate(identities) if identity in label_of]
    faces = FaceArrays(
        images=np.stack([images[index] for index in keep]),
        labels=np.array([label_of[identities[index]] for index in keep], dtype=np.int64),
    )
    return LabeledFaces(faces=faces, identity_names=tuple(kept_names), skipped_files=tuple(unreadable))


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _integral_label(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None
