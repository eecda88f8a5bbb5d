"""Stage `data`: turn the configured source (generated synthetic set, or a user's data) into prepared arrays."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.artifacts import sha256_json
from pipeline.config import DataConfig, ExtraSourceConfig, RunConfig
from pipeline.data.arrays import FaceArrays, VerificationPairs
from pipeline.data.store import save_training_set, save_verification_set
from pipeline.errors import ConfigError
from pipeline.inputs import check_input_paths
from pipeline.stages.fingerprint import InputDigest
from pipeline.stages.runner import StageContext

log = logging.getLogger(__name__)


def load_sources(config: RunConfig) -> tuple[FaceArrays, list[VerificationPairs], dict[str, dict]]:
    """Read the training set (main source, then every extra source appended) and the verification sets the config
    names; also return, per training source, how many faces and identities it gave."""
    main, verification = load_main_source(config)
    parts = [(config.data.source if config.data.source == "synthetic" else Path(config.data.train_path).name, main)]
    size = (config.data.image_size, config.data.image_size)
    for index, extra in enumerate(config.data.extra_sources):
        parts.append((extra.display_name, load_extra_source(extra, size, config.data.max_bad_fraction, config.seed + 1 + index)))
    return concatenate_sources(parts), verification, source_counts(parts)


def load_main_source(config: RunConfig) -> tuple[FaceArrays, list[VerificationPairs]]:
    data = config.data
    size = (data.image_size, data.image_size)
    if data.source == "synthetic":
        from pipeline.data.synthetic import generate_dataset

        train_set, pairs = generate_dataset(data.synthetic, image_size=data.image_size, seed=config.seed, progress=True)
        verification = [pairs, *load_user_verification_sets(data, size)]
        return train_set, verification
    if data.train_path is None:
        raise ConfigError(f"data.source is {data.source!r} but data.train_path is not set")
    check_input_paths(config)  # the runner checks before any stage too; this serves direct callers
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


def load_extra_source(extra: ExtraSourceConfig, size: tuple[int, int], max_bad_fraction: float, seed: int) -> FaceArrays:
    """One extra training source as faces, labelled 0..C-1 or, when unlabelled, -1; the first `max_images` only."""
    if extra.kind == "synthetic":
        from pipeline.data.synthetic import generate_training_set

        faces = generate_training_set(extra.synthetic, image_size=size[0], seed=seed, progress=True)
    elif extra.kind == "unlabelled_folder":
        from pipeline.data.image_folder import load_unlabelled_folder

        faces = load_unlabelled_folder(Path(extra.path), size=size, max_bad_fraction=max_bad_fraction)
    elif extra.kind == "image_folder":
        from pipeline.data.image_folder import load_image_folder

        faces = load_image_folder(Path(extra.path), size=size, max_bad_fraction=max_bad_fraction).faces
    else:
        from pipeline.data.recordio import load_recordio

        faces = load_recordio(Path(extra.path), size=size, max_bad_fraction=max_bad_fraction)
    if extra.max_images is not None and extra.max_images < len(faces.labels):
        faces = FaceArrays(faces.images[: extra.max_images], faces.labels[: extra.max_images])
    if not extra.is_labelled:
        faces = FaceArrays(faces.images, np.full(len(faces.labels), -1, dtype=np.int64))
    return faces


def concatenate_sources(parts: list[tuple[str, FaceArrays]]) -> FaceArrays:
    """One training set: each labelled source's identities numbered after those of the sources before it (the same
    person in two sources counts as two identities); unlabelled faces keep -1."""
    if len(parts) == 1:
        return parts[0][1]
    images, labels, offset = [], [], 0
    for _, faces in parts:
        labelled = faces.labels >= 0
        shifted = np.where(labelled, faces.labels + offset, -1)
        offset += int(faces.labels[labelled].max()) + 1 if labelled.any() else 0
        images.append(np.asarray(faces.images))
        labels.append(shifted.astype(np.int64))
    return FaceArrays(np.concatenate(images), np.concatenate(labels))


def source_counts(parts: list[tuple[str, FaceArrays]]) -> dict[str, dict]:
    counts = {}
    for name, faces in parts:
        labelled = faces.labels >= 0
        counts[name if name not in counts else f"{name}#{len(counts)}"] = {
            "images": int(len(faces.labels)), "labelled": int(labelled.sum()),
            "identities": int(len(np.unique(faces.labels[labelled]))),
        }
    return counts


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


def load_user_verification_sets(data: DataConfig, size: tuple[int, int]) -> list[VerificationPairs]:
    sets = []
    for entry in data.verification:
        if entry.kind == "bin":
            from pipeline.data.binset import load_bin

            pairs = load_bin(Path(entry.path), size=size)
        elif entry.kind == "folder_pairs":
            from pipeline.data.folder_pairs import load_folder_pairs

            pairs = load_folder_pairs(Path(entry.path), entry.num_pairs, entry.pair_seed, size=size,
                                      max_bad_fraction=data.max_bad_fraction, name=entry.name)
        else:
            from pipeline.data.pairs_txt import load_pairs_txt

            if entry.image_root is None:
                raise ConfigError(f"verification set {entry.path}: kind pairs_txt needs image_root")
            pairs = load_pairs_txt(Path(entry.path), Path(entry.image_root), size=size)
        if entry.name:
            pairs = VerificationPairs(pairs.images, pairs.issame, entry.name)
        sets.append(pairs)
    return sets


def data_input_digests(config: RunConfig, hash_file: Callable[[Path], str]) -> dict[str, InputDigest]:
    """The data stage's named inputs (`Stage.input_digests`): per data source, a digest of its listing
    (`pipeline.data.source_listing`) and its file count, so added, removed or replaced data reruns this stage and every
    stage after it, and the runner's log names the source. Sources under the data root are named relative to it."""
    from pipeline.data.real_data import expected_real_data_root
    from pipeline.data.source_listing import data_source_paths, list_source

    root = expected_real_data_root()
    digests: dict[str, InputDigest] = {}
    for source in data_source_paths(config.data):
        listing = list_source(source, hash_file)
        name = str(source.relative_to(root)) if source.is_relative_to(root) else str(source)
        digests[name if name not in digests else str(source)] = InputDigest(sha256_json(listing), len(listing) if source.is_dir() else None)
    return digests


def run_data_stage(context: StageContext) -> None:
    train_set, verification, per_source = load_sources(context.config)
    save_training_set(context.out_dir, train_set)
    for pairs in verification:
        save_verification_set(context.out_dir, pairs)
    context.summary.update({
        "source": context.config.data.source,
        "train_images": int(len(train_set.labels)),
        "train_identities": train_set.num_identities,
        "train_unlabelled_images": int((train_set.labels < 0).sum()),
        "train_sources": per_source,
        "verification_sets": {p.name: {"pairs": p.num_pairs, "same": int(p.issame.sum())} for p in verification},
    })
    log.info("data: %d training images of %d identities (%s); verification: %s", len(train_set.labels), train_set.num_identities,
             ", ".join(f"{name}: {c['images']} images, {c['identities']} identities" for name, c in per_source.items()),
             ", ".join(f"{p.name} ({p.num_pairs} pairs)" for p in verification))
