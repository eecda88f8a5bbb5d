"""Stage `data`: turn the configured source (generated synthetic set, or a user's data) into prepared arrays."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.config import DataConfig, RunConfig
from pipeline.data.arrays import FaceArrays, VerificationPairs
from pipeline.data.store import save_training_set, save_verification_set
from pipeline.errors import ConfigError, DataError
from pipeline.stages.runner import StageContext

log = logging.getLogger(__name__)


def load_sources(config: RunConfig) -> tuple[FaceArrays, list[VerificationPairs]]:
    """Read the training set and verification sets the config names."""
    data = config.data
    size = (data.image_size, data.image_size)
    if data.source == "synthetic":
        from pipeline.data.synthetic import SyntheticFaceConfig, generate_dataset

        synthetic = SyntheticFaceConfig(**data.synthetic.model_dump(), image_size=data.image_size, seed=config.seed)
        train_set, pairs = generate_dataset(synthetic, progress=True)
        verification = [pairs, *load_user_verification_sets(data, size)]
        return train_set, verification
    if data.train_path is None:
        raise ConfigError(f"data.source is {data.source!r} but data.train_path is not set")
    check_real_data_paths(data)
    if data.source == "image_folder":
        from pipeline.data.image_folder import load_image_folder

        train_set = load_image_folder(Path(data.train_path), size=size, max_bad_fraction=data.max_bad_fraction).faces
    else:
        from pipeline.data.recordio import load_recordio

        train_set = load_recordio(Path(data.train_path), size=size, max_bad_fraction=data.max_bad_fraction)
    train_set = select_identities(train_set, data.min_images_per_identity, data.max_identities)
    verification = load_user_verification_sets(data, size)
    if not verification:
        raise ConfigError("data.verification is empty: a user data source needs at least one verification set")
    return train_set, verification


def select_identities(faces: FaceArrays, min_images: int, max_identities: int | None) -> FaceArrays:
    """Identities with at least `min_images` images, the first `max_identities` of them by label, relabelled 0..C-1."""
    counts = np.bincount(faces.labels, minlength=faces.num_identities)
    kept = np.flatnonzero(counts >= min_images)[:max_identities]
    if len(kept) == len(counts):
        return faces
    if len(kept) == 0:
        raise ConfigError(f"data.min_images_per_identity {min_images}: no training identity has that many images")
    new_label = np.full(len(counts), -1, dtype=np.int64)
    new_label[kept] = np.arange(len(kept))
    rows = np.flatnonzero(new_label[faces.labels] >= 0)
    log.info("data: kept %d of %d identities (min %d images, max %s identities)", len(kept), len(counts), min_images, max_identities)
    return FaceArrays(faces.images[rows], new_label[faces.labels[rows]])


def check_real_data_paths(data: DataConfig) -> None:
    """A missing path under the real-data root (${FACE_DATA_ROOT}) fails naming the variable that points there."""
    from pipeline.data.real_data import expected_real_data_root

    root = expected_real_data_root()
    paths = [data.train_path] + [p for entry in data.verification for p in (entry.path, entry.image_root) if p]
    for path in paths:
        if Path(path).is_relative_to(root) and not Path(path).exists():
            raise DataError(path, f"does not exist: the real face data root {root} (FACE_DATA_ROOT, default shared/data "
                                  "beside the repository) does not hold it; set FACE_DATA_ROOT to the folder with lfw/")


def load_user_verification_sets(data: DataConfig, size: tuple[int, int]) -> list[VerificationPairs]:
    sets = []
    for entry in data.verification:
        if entry.kind == "bin":
            from pipeline.data.binset import load_bin

            pairs = load_bin(Path(entry.path), size=size)
        else:
            from pipeline.data.pairs_txt import load_pairs_txt

            if entry.image_root is None:
                raise ConfigError(f"verification set {entry.path}: kind pairs_txt needs image_root")
            pairs = load_pairs_txt(Path(entry.path), Path(entry.image_root), size=size)
        if entry.name:
            pairs = VerificationPairs(pairs.images, pairs.issame, entry.name)
        sets.append(pairs)
    return sets


def run_data_stage(context: StageContext) -> None:
    train_set, verification = load_sources(context.config)
    save_training_set(context.out_dir, train_set)
    for pairs in verification:
        save_verification_set(context.out_dir, pairs)
    context.summary.update({
        "source": context.config.data.source,
        "train_images": int(len(train_set.labels)),
        "train_identities": train_set.num_identities,
        "verification_sets": {p.name: {"pairs": p.num_pairs, "same": int(p.issame.sum())} for p in verification},
    })
    log.info("data: %d training images of %d identities; verification: %s", len(train_set.labels), train_set.num_identities,
             ", ".join(f"{p.name} ({p.num_pairs} pairs)" for p in verification))
