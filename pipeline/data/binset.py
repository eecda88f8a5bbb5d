"""insightface verification `.bin` sets (lfw.bin, agedb_30.bin, ...): a pickle of (list of encoded images, issame).

These files are downloaded from the internet and a pickle can run any code while loading, so they are read with
`_BinUnpickler`, which resolves no global except a short whitelist of harmless constructors:

* `_codecs.encode` restricted to (str, "latin1"): how Python 3 writes `bytes` at pickle protocol <= 2 (the
  LFW dev.bin in shared/data is written that way);
* numpy boolean/integer arrays and scalars (`numpy[._]core.multiarray._reconstruct`/`scalar`, `numpy.ndarray`,
  `numpy.dtype`), which some writers used for the issame list or for the image buffers. The dtype constructor
  accepts only b1/i*/u* names, so object arrays (and with them arbitrary nested objects) cannot be built.

Everything else (os.system, builtins.eval, any class) is refused before it is resolved, so nothing runs.
Python 2 pickles (py2 `str` images) are read with encoding="latin1", which maps each byte to one code point, and
turned back into the same bytes; numpy recommends latin1 for its py2 arrays too.
"""

from __future__ import annotations

import functools
import io
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.artifacts import write_bytes_atomic
from pipeline.data.arrays import VerificationPairs
from pipeline.data.image_decode import ALIGNED_SIZE, decode_face, encode_face
from pipeline.errors import DataError

_SAFE_DTYPE_NAME = re.compile(r"^(b1|[iu][1248])$")


def load_bin(path: str | Path, size: tuple[int, int] | None = ALIGNED_SIZE) -> VerificationPairs:
    """Load an insightface `.bin` verification set without executing anything in it; name = file stem."""
    path = Path(path)
    try:
        payload = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "verification .bin file does not exist") from None
    except OSError as error:
        raise DataError(path, f"cannot read verification .bin ({error.strerror or error})") from None
    encoded_images, issame = _parse_structure(path, _safe_unpickle(path, payload))
    images = _decode_all(path, encoded_images, size)
    return VerificationPairs(images=images, issame=issame, name=path.stem)


def write_bin(path: str | Path, pairs: VerificationPairs, quality: int = 95, image_format: str = ".jpg") -> Path:
    """Write `pairs` in the standard layout (list of JPEG bytes, list of bools), pickle protocol 4, atomically.

    `image_format=".png"` stores lossless images (exact round trips); insightface tools read both.
    """
    encoded_images = [encode_face(image, image_format, quality) for image in pairs.images]
    issame = [bool(same) for same in pairs.issame]
    return write_bytes_atomic(path, pickle.dumps((encoded_images, issame), protocol=4))


def _safe_unpickle(path: Path, payload: bytes) -> Any:
    try:
        return _BinUnpickler(io.BytesIO(payload), path).load()
    except DataError:
        raise
    except Exception as error:  # a hostile or damaged pickle can fail in many ways; all mean "not a .bin"
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(path, f"not a readable .bin pickle ({type(error).__name__}: {reason[:200]})") from None


class _BinUnpickler(pickle._Unpickler):
    """Unpickler that resolves only the whitelisted harmless constructors (see module docstring).

    It subclasses the pure-Python `pickle._Unpickler` (the class `pickle.Unpickler` falls back to), not the C one:
    the C unpickler sizes its memo table from indices in the data, so a crafted LONG_BINPUT can make it allocate
    gigabytes, while the Python one keeps the memo in a dict. On the 18 MB LFW dev.bin it is as fast (~0.2 s).
    """

    def __init__(self, stream: io.BytesIO, path: Path) -> None:
        super().__init__(stream, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str) -> Callable[..., Any]:
        safe = _SAFE_GLOBALS.get((module, name))
        if safe is None:
            raise DataError(
                self._path,
                f"refused to unpickle {module}.{name}: .bin files may only hold bytes, lists and bools",
            )
        return _bind_path(safe, self._path)


def _bind_path(constructor: Callable[..., Any], path: Path) -> Callable[..., Any]:
    """Let a whitelisted constructor refuse bad arguments with an error that names the file."""

    @functools.wraps(constructor)
    def checked(*args: Any) -> Any:
        try:
            return constructor(*args)
        except _Refused as refused:
            problem = f"refused to unpickle {refused}: .bin files may only hold bytes, lists and bools"
            raise DataError(path, problem) from None

    return checked


class _Refused(Exception):
    """A whitelisted constructor called with arguments outside what .bin files need."""


def _latin1_encode(text: Any, encoding: str = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode with {type(text).__name__}, {encoding!r}")
    return text.encode("latin1")


def _safe_dtype(name: Any, align: Any = False, copy: Any = False) -> np.dtype:
    """Return numpy's shared builtin dtype (never a copy): its __setstate__ is a no-op, so BUILD cannot set
    object flags on it."""
    if not isinstance(name, str) or not _SAFE_DTYPE_NAME.match(name):
        raise _Refused(f"numpy.dtype({name!r})")
    return np.dtype(name)


def _ndarray_marker(*args: Any) -> Any:
    """Stands for `numpy.ndarray`, which pickles only pass to _reconstruct: calling it directly is refused."""
    raise _Refused("numpy.ndarray(...)")


def _empty_array(subtype: Any, shape: Any = (0,), typecode: Any = b"b") -> np.ndarray:
    """Stand-in for numpy's _reconstruct: the following BUILD (ndarray.__setstate__) sets shape, dtype, data."""
    if getattr(subtype, "__wrapped__", None) is not _ndarray_marker:
        raise _Refused(f"numpy _reconstruct of {subtype!r}")
    return np.empty(0, dtype=np.uint8)


def _safe_scalar(dtype: Any, data: Any = b"") -> Any:
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biu":
        raise _Refused(f"numpy scalar of {dtype!r}")
    raw = data.encode("latin1") if isinstance(data, str) else data
    if not isinstance(raw, bytes) or len(raw) != dtype.itemsize:
        raise _Refused(f"numpy scalar with {len(raw) if isinstance(raw, bytes) else type(raw).__name__} bytes")
    return np.frombuffer(raw, dtype=dtype)[0]


_SAFE_GLOBALS: dict[tuple[str, str], Callable[..., Any]] = {
    ("_codecs", "encode"): _latin1_encode,
    ("numpy", "dtype"): _safe_dtype,
    ("numpy", "ndarray"): _ndarray_marker,
    **{(module, "_reconstruct"): _empty_array for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "scalar"): _safe_scalar for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
}


def _parse_structure(path: Path, loaded: Any) -> tuple[list[bytes], np.ndarray]:
    """Check the (bins, issame) shape insightface writes and normalise it to (list of bytes, bool array)."""
    if not isinstance(loaded, (tuple, list)) or len(loaded) != 2:
        raise DataError(path, f"expected a pickled (images, issame) pair, got {_describe(loaded)}")
    images, issame = loaded
    if not isinstance(images, (list, tuple)):
        raise DataError(path, f"expected a list of encoded images, got {_describe(images)}")
    if not isinstance(issame, (list, tuple, np.ndarray)) or np.ndim(issame) != 1:
        raise DataError(path, f"expected a list of issame bools, got {_describe(issame)}")
    issame_flags = []
    for pair_index, flag in enumerate(issame):
        if not isinstance(flag, (bool, int, np.bool_, np.integer)) or int(flag) not in (0, 1):
            raise DataError(path, f"issame[{pair_index}] is {_describe(flag)}, expected a bool")
        issame_flags.append(bool(flag))
    if len(issame_flags) == 0:
        raise DataError(path, "holds no pairs")
    if len(images) != 2 * len(issame_flags):
        raise DataError(path, f"{len(images)} images for {len(issame_flags)} pairs (need exactly 2 per pair)")
    return [_as_bytes(path, index, image) for index, image in enumerate(images)], np.array(issame_flags)


def _as_bytes(path: Path, index: int, image: Any) -> bytes:
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, str):  # a Python 2 str, read as latin1: one code point per byte
        try:
            return image.encode("latin1")
        except UnicodeEncodeError:
            pass
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 1:
        return image.tobytes()
    raise DataError(path, f"image {index} is {_describe(image)}, expected encoded image bytes")


def _decode_all(path: Path, encoded_images: list[bytes], size: tuple[int, int] | None) -> np.ndarray:
    decoded = []
    progress = tqdm(encoded_images, desc=f"decoding {path.name}", unit="img", disable=None, leave=False)
    for index, data in enumerate(progress):
        try:
            decoded.append(decode_face(data, str(path), size))
        except DataError as error:
            raise type(error)(path, f"image {index} (pair {index // 2}): {error.problem}") from None
        if decoded[-1].shape != decoded[0].shape:
            (height, width), (first_height, first_width) = decoded[-1].shape[:2], decoded[0].shape[:2]
            raise DataError(
                path, f"image {index} (pair {index // 2}) is {width}x{height}, image 0 is {first_width}x{first_height}"
            )
    return np.stack(decoded)


def _describe(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)}"
    if isinstance(value, (int, float, str)):
        return f"{type(value).__name__} {str(value)[:40]!r}"
    return type(value).__name__
