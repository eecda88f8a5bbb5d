"""LFW-style pairs.txt over an image folder: the other common way verification sets are shipped.

Layout: an optional header of one or two integers ("2\t300", "10\t300"), then one pair per line, either
"name n1 n2" (same person) or "name1 n1 name2 n2" (different people), with images at
<root>/<name>/<name>_<NNNN>.jpg (n zero-padded to 4 digits). The header is not trusted for counts: the pair
lines are the truth, so files with a differing or missing header still load.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.data.arrays import VerificationPairs
from pipeline.data.image_decode import ALIGNED_SIZE, read_face
from pipeline.errors import DataError


def load_pairs_txt(
    pairs_path: str | Path,
    image_root: str | Path,
    size: tuple[int, int] | None = ALIGNED_SIZE,
    image_ext: str = ".jpg",
) -> VerificationPairs:
    """Load the pairs listed in `pairs_path` from `image_root`; name = stem of the pairs file."""
    pairs_path, image_root = Path(pairs_path), Path(image_root)
    image_paths, issame = parse_pairs_txt(pairs_path, image_root, image_ext)
    images = []
    progress = tqdm(image_paths, desc=f"decoding {pairs_path.name}", unit="img", disable=None, leave=False)
    for image_path, line_number in progress:
        if not image_path.is_file():
            raise DataError(image_path, f"image not found (listed on line {line_number} of {pairs_path})")
        images.append(read_face(image_path, size))
        if images[-1].shape != images[0].shape:
            first_image = image_paths[0][0]
            raise DataError(image_path, f"differs in size from {first_image} (line {line_number} of {pairs_path})")
    return VerificationPairs(images=np.stack(images), issame=np.array(issame, dtype=bool), name=pairs_path.stem)


def parse_pairs_txt(
    pairs_path: str | Path, image_root: str | Path, image_ext: str = ".jpg"
) -> tuple[list[tuple[Path, int]], list[bool]]:
    """Pairs file -> ([(image path, line number)] two per pair, issame); checks syntax, not the images."""
    pairs_path, image_root = Path(pairs_path), Path(image_root)
    try:
        lines = pairs_path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(pairs_path, "pairs file does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(pairs_path, f"cannot read pairs file ({error})") from None
    image_paths: list[tuple[Path, int]] = []
    issame: list[bool] = []
    for line_number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields or (line_number == 1 and _is_header(fields)):
            continue
        if len(fields) == 3:
            names_and_numbers = [(fields[0], fields[1]), (fields[0], fields[2])]
        elif len(fields) == 4:
            names_and_numbers = [(fields[0], fields[1]), (fields[2], fields[3])]
        else:
            raise DataError(
                pairs_path, f"line {line_number}: expected 'name n1 n2' or 'name1 n1 name2 n2', got {line.strip()!r}"
            )
        for name, number in names_and_numbers:
            if not number.isdigit():
                raise DataError(pairs_path, f"line {line_number}: image number {number!r} is not a whole number")
            image_paths.append((image_root / name / f"{name}_{int(number):04d}{image_ext}", line_number))
        issame.append(len(fields) == 3)
    if not issame:
        raise DataError(pairs_path, "lists no pairs")
    return image_paths, issame


def _is_header(fields: list[str]) -> bool:
    return len(fields) <= 2 and all(field.isdigit() for field in fields)
