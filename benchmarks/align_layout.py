"""Where dlib's derived 5 points fall on faces already aligned to the ArcFace template (needs the `align` extra).

Measures the constant `pipeline.align.landmarks.DLIB68_FIVE_POINTS_ON_ARCFACE_112`: the 10 % trimmed mean of the
points found on insightface-aligned crops (default: LFW train crops under $FACE_DATA_ROOT), and checks it on held-out
crops of other people (LFW dev), against the bare template. Prints figures; writes nothing.

    python -m benchmarks.align_layout --fit 800 --check 300
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pipeline.align.detector import DlibFaceLandmarker
from pipeline.align.landmarks import DLIB68_FIVE_POINTS_ON_ARCFACE_112
from pipeline.align.transform import ARCFACE_TEMPLATE_112
from pipeline.data.image_decode import read_face
from pipeline.data.real_data import expected_real_data_root


def points_on_crops(landmarker: DlibFaceLandmarker, files: list[Path]) -> np.ndarray:
    """(found, 5, 2) points on each aligned crop where a face was found."""
    found = [landmarker.landmarks_on_aligned_crop(read_face(path)) for path in files]
    return np.array([points for points in found if points is not None])


def trimmed_mean(points: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Per-coordinate mean without the `fraction` lowest and highest values (outlier detections)."""
    ordered = np.sort(points, axis=0)
    cut = int(len(points) * fraction)
    return ordered[cut : len(points) - cut].mean(axis=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.align_layout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=expected_real_data_root(), help="real data root holding lfw/")
    parser.add_argument("--fit", type=int, default=800, help="LFW train crops to measure on (a seeded sample)")
    parser.add_argument("--check", type=int, default=300, help="held-out LFW dev crops to check on")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(2)
    train = sorted((args.root / "lfw" / "train").rglob("*.jpg"))
    dev = sorted((args.root / "lfw" / "dev_images").rglob("*.jpg"))
    if not train or not dev:
        parser.error(f"no aligned LFW crops under {args.root / 'lfw'} (set --root or FACE_DATA_ROOT)")
    landmarker = DlibFaceLandmarker()
    fitted = points_on_crops(landmarker, [train[i] for i in rng.permutation(len(train))[: args.fit]])
    checked = points_on_crops(landmarker, [dev[i] for i in rng.permutation(len(dev))[: args.check]])
    measured = trimmed_mean(fitted)
    print(f"faces found: {len(fitted)} of {min(args.fit, len(train))} train crops, {len(checked)} of {min(args.check, len(dev))} dev crops")
    print("measured target (10% trimmed mean on train):", np.round(measured, 2).tolist())
    print("shipped DLIB68_FIVE_POINTS_ON_ARCFACE_112:    ", np.round(DLIB68_FIVE_POINTS_ON_ARCFACE_112, 2).tolist())
    for name, target in (("ArcFace template", ARCFACE_TEMPLATE_112), ("shipped dlib target", DLIB68_FIVE_POINTS_ON_ARCFACE_112)):
        offset = checked.mean(axis=0) - target
        print(f"dev crops vs {name}: mean offset per point (x, y) {np.round(offset, 2).tolist()}, "
              f"largest {np.abs(offset).max():.2f} px, per-face RMS {np.sqrt(((checked - target) ** 2).sum(axis=2).mean()):.2f} px")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
