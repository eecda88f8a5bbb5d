"""Bytes -> aligned RGB face, the one decoder every reader shares so all formats fail the same way.

OpenCV decodes (IMREAD_UNCHANGED, then we normalise channels and depth ourselves) so grey, palette, RGBA and
16-bit files all come out as (H, W, 3) uint8 RGB, the layout of `FaceArrays`. cv2 returns None for truncated
JPEG/PNG data, which we turn into `UndecodableImage`; a face of the wrong size is a `WrongFaceSize`, since it
almost always means the folder was never aligned.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import DataError

ALIGNED_SIZE: tuple[int, int] = (112, 112)
"""(height, width) of the ArcFace 5-point template crops that every model here is trained on."""


class UndecodableImage(DataError):
    """Bytes that are not a (complete) image: readers that tolerate a few bad files catch exactly this."""


class WrongFaceSize(DataError):
    """A decodable image of the wrong size: a dataset-wide problem (not aligned), so readers never skip it."""


def decode_face(data: bytes, source: str, size: tuple[int, int] | None = ALIGNED_SIZE) -> np.ndarray:
    """Decode encoded image bytes to (H, W, 3) uint8 RGB; `source` names the origin in errors.

    `size` is (height, width) like the array's shape; None accepts any size.
    """
    if len(data) == 0:
        raise UndecodableImage(source, "not a decodable image (empty)")
    try:
        decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as error:
        raise UndecodableImage(source, f"not a decodable image ({_short_reason(error)})") from None
    if decoded is None:
        raise UndecodableImage(source, "not a decodable image (unknown format, truncated or corrupt)")
    rgb = _to_rgb8(decoded, source)
    if size is not None and rgb.shape[:2] != tuple(size):
        height, width = rgb.shape[:2]
        raise WrongFaceSize(
            source,
            f"image is {width}x{height}, expected {size[1]}x{size[0]} aligned face; "
            "run `python -m pipeline align` first",
        )
    return rgb


def read_face(path: str | Path, size: tuple[int, int] | None = ALIGNED_SIZE) -> np.ndarray:
    """Read and decode one image file (see `decode_face`); a missing file is an `UndecodableImage` too."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise UndecodableImage(path, f"cannot read image ({error.strerror or error})") from None
    return decode_face(data, str(path), size)


def encode_face(image: np.ndarray, image_format: str = ".jpg", quality: int = 95) -> bytes:
    """Encode (H, W, 3) uint8 RGB as JPEG (lossy, like the insightface files) or PNG (exact round trips)."""
    image_format = image_format.lower()
    if image_format in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    elif image_format == ".png":
        params = []
    else:
        raise ValueError(f"image_format must be .jpg or .png, got {image_format!r}")
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    ok, encoded = cv2.imencode(image_format, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} image as {image_format}")
    return encoded.tobytes()


def _to_rgb8(decoded: np.ndarray, source: str) -> np.ndarray:
    """Grey -> RGB, BGR(A) -> RGB dropping alpha, 16-bit -> 8-bit; anything else is refused by name."""
    if decoded.dtype == np.uint16:
        decoded = (decoded >> 8).astype(np.uint8)
    elif decoded.dtype != np.uint8:
        raise UndecodableImage(source, f"not a decodable image (unsupported pixel type {decoded.dtype})")
    channels = 1 if decoded.ndim == 2 else decoded.shape[2]
    conversions = {1: cv2.COLOR_GRAY2RGB, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}
    if channels not in conversions:
        raise UndecodableImage(source, f"not a decodable image (unsupported {channels}-channel image)")
    if decoded.ndim == 3 and channels == 1:
        decoded = decoded[:, :, 0]
    return np.ascontiguousarray(cv2.cvtColor(decoded, conversions[channels]))


def _short_reason(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def check_unreadable_fraction(source: str | Path, unreadable: list[str], total: int, max_bad_fraction: float) -> None:
    """Raise when too many inputs could not be decoded: a few bad files in a scraped set are normal, many mean a
    broken download or the wrong folder, and silently training on what is left would hide that."""
    if not unreadable:
        return
    fraction = len(unreadable) / max(total, 1)
    if fraction > max_bad_fraction:
        raise DataError(
            source,
            f"{len(unreadable)} of {total} images unreadable ({fraction:.1%}), above the limit "
            f"{max_bad_fraction:.1%}: first bad: {unreadable[0]}",
        )
