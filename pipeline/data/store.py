"""On-disk form of prepared data: plain .npy arrays, memory-mapped on read so stages share them cheaply."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.artifacts import atomic_path
from pipeline.data.arrays import FaceArrays, VerificationPairs
from pipeline.errors import DataError

TRAIN_IMAGES, TRAIN_LABELS = "train_images.npy", "train_labels.npy"


def save_array(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as temp:
        with open(temp, "wb") as stream:
            np.save(stream, array, allow_pickle=False)


def load_array(path: Path, mmap: bool = True) -> np.ndarray:
    if not path.is_file():
        raise DataError(path, "prepared data file is missing; rerun the data stage (`--from data`)")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(path, f"unreadable .npy ({exc})") from exc


def save_training_set(folder: Path, faces: FaceArrays) -> None:
    save_array(folder / TRAIN_IMAGES, faces.images)
    save_array(folder / TRAIN_LABELS, faces.labels.astype(np.int64))


def load_training_set(folder: Path) -> FaceArrays:
    return FaceArrays(load_array(folder / TRAIN_IMAGES), np.asarray(load_array(folder / TRAIN_LABELS, mmap=False)))


def save_verification_set(folder: Path, pairs: VerificationPairs) -> None:
    save_array(folder / f"verify_{pairs.name}_images.npy", pairs.images)
    save_array(folder / f"verify_{pairs.name}_issame.npy", pairs.issame.astype(bool))


def load_verification_sets(folder: Path) -> list[VerificationPairs]:
    """Every verification set prepared in `folder`, in name order."""
    sets = []
    for images_path in sorted(folder.glob("verify_*_images.npy")):
        name = images_path.name[len("verify_") : -len("_images.npy")]
        issame = np.asarray(load_array(folder / f"verify_{name}_issame.npy", mmap=False))
        sets.append(VerificationPairs(load_array(images_path), issame, name))
    if not sets:
        raise DataError(folder, "no verification sets prepared (verify_<name>_images.npy)")
    return sets
