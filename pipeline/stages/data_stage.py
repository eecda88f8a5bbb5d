"""Stage `data`: turn the configured source (generated synthetic set, or a user's data) into prepared arrays."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.config import DataConfig, RunConfig
from pipeline.data.arrays import FaceArrays, VerificationPairs
from pipeline.data.store import save_training_set, save_verification_set
from pipeline.errors import ConfigError
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
    if data.source == "image_folder":
        from pipeline.data.image_folder import load_image_folder

        train_set = load_image_folder(Path(data.train_path), size=size, max_bad_fraction=data.max_bad_fraction).faces
    else:
        from pipeline.data.recordio import load_recordio

        train_set = load_recordio(Path(data.train_path), size=size, max_bad_fraction=data.max_bad_fraction)
    verification = load_user_verification_sets(data, size)
    if not verification:
        raise ConfigError("data.verification is empty: a user data source needs at least one verification set")
    return train_set, verification


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
