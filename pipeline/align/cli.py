"""`python -m pipeline align SRC DST`: align a folder of raw photos into an identity folder of 112x112 crops."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.align.detector import DETECT_MAX_SIDE
from pipeline.align.folder import DEFAULT_IDENTITY_REGEX, REPORT_FILE, align_folder, landmarks_file_source
from pipeline.align.transform import ARCFACE_TEMPLATE_112
from pipeline.errors import ConfigError


def add_align_parser(commands: argparse._SubParsersAction) -> None:
    align = commands.add_parser("align", help="align raw face photos to the 112x112 ArcFace layout (SRC/<identity>/<photo> -> DST)",
                                description=__doc__)
    align.add_argument("src", type=Path, help="photos: SRC/<identity>/<photo>, or photos named by identity directly in SRC")
    align.add_argument("dst", type=Path, help="output identity folder: DST/<identity>/<name>.png and DST/" + REPORT_FILE)
    align.add_argument("--landmarks", type=Path, help="CSV relative_path,x1,y1,...,x5,y5 (eye centres, nose tip, mouth corners); "
                                                      "no detector is used (and none need be installed)")
    align.add_argument("--detector", choices=["hog", "cnn"], default="hog", help="dlib face detector (cnn: slower, finds more)")
    align.add_argument("--upsample", type=int, default=1, help="times dlib upsamples the photo to find small faces")
    align.add_argument("--detect-max-side", type=int, default=DETECT_MAX_SIDE, metavar="PIXELS",
                       help="search faces on a copy of larger photos scaled down to this longest side (landmarks are still "
                            "placed at full resolution); 0: search the full photo, slow on large ones")
    align.add_argument("--size", type=int, default=112, help="output crop size (the template scales with it)")
    align.add_argument("--identity-regex", default=DEFAULT_IDENTITY_REGEX,
                       help="for photos directly in SRC: the identity is this regex's first group (or match) in the file name")


def run_align(args: argparse.Namespace) -> int:
    """Align and print the summary line; 0 when at least one face was aligned (errors raise PipelineError)."""
    if args.landmarks is not None:
        from pipeline.align.landmarks import read_landmarks_file

        source, described = landmarks_file_source(read_landmarks_file(args.landmarks)), f"landmarks file {args.landmarks}"
        target_112 = ARCFACE_TEMPLATE_112
    else:
        from pipeline.align.detector import DlibFaceLandmarker

        if args.detect_max_side < 0:
            raise ConfigError(f"--detect-max-side {args.detect_max_side}: must be a pixel count, or 0 to search the full photo")
        landmarker = DlibFaceLandmarker(args.detector, args.upsample, args.detect_max_side)
        searched = f"faces searched at <= {args.detect_max_side} px" if args.detect_max_side else "faces searched at full size"
        source = lambda relative, image: landmarker.landmarks(image)  # noqa: E731
        described = f"dlib {args.detector} detector ({searched}) + 68-point landmarks"
        target_112 = landmarker.target_112
    report = align_folder(args.src, args.dst, source, described, args.size, args.identity_regex, target_112)
    print(report.summary())
    print(f"report: {Path(args.dst) / REPORT_FILE}")
    return 0
