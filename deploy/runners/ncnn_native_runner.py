"""ncnn through the project's C++ tool (deploy/native/face_embed.cpp), on this machine, under qemu, or on a phone.

Unlike the Python binding's runner, `embed` hands the tool raw uint8 faces and the manifest's preprocessing, so
the pixel conversion is ncnn's own (Mat::from_pixels + substract_mean_normalize, as an app does it): a wrong
mean, scale or channel order on the device shows up in parity. `infer` (already preprocessed tensors) serves
the layer-by-layer localisation, which compares from the same input as PyTorch.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from deploy.native.tool_host import ToolHost, ToolRunError
from deploy.runners.base import Runner
from deploy.runners.ncnn_runner import NCNN_PRECISIONS, io_blob_names
from pipeline.preprocess import PreprocessSpec


class NativeNcnnRunner(Runner):
    """One ncnn param/bin pair run by face_embed on `host`; every call is one run of the tool over all images."""

    def __init__(self, host: ToolHost, param_path: str | Path, bin_path: str | Path, spec: PreprocessSpec,
                 precision: str = "fp32", threads: int = 1, fp16_arithmetic: bool | None = None) -> None:
        if precision not in NCNN_PRECISIONS:
            raise ValueError(f"ncnn precision must be one of {NCNN_PRECISIONS}, got {precision!r}")
        if spec.layout != "NCHW":
            raise ValueError(f"the native ncnn tool feeds CHW images; spec layout is {spec.layout}")
        super().__init__(spec, precision, threads)
        self.backend = host.label
        self.host = host
        self.param_path, self.bin_path = Path(param_path), Path(bin_path)
        self.input_blob, self.output_blob = io_blob_names(self.param_path)
        self.fp16_arithmetic = fp16_arithmetic
        self.last_run: dict = {}  # the tool's result line: detected CPU features, options, counts

    def _common_arguments(self) -> list[str]:
        arguments = ["--param", self.host.place(self.param_path), "--bin", self.host.place(self.bin_path),
                     "--precision", self.precision, "--threads", str(self.threads),
                     "--in-blob", self.input_blob, "--out-blob", self.output_blob]
        if self.fp16_arithmetic is not None:
            arguments += ["--fp16-arithmetic", str(int(self.fp16_arithmetic))]
        return arguments

    def _run(self, array: np.ndarray, extra: list[str]) -> None:
        with tempfile.TemporaryDirectory(prefix="face-native-in-") as folder:
            input_path = Path(folder) / "faces.npy"
            np.save(input_path, np.ascontiguousarray(array))
            self.last_run = self.host.run_json([*self._common_arguments(), "--input", self.host.place(input_path), *extra])

    def _embeddings(self, array: np.ndarray, extra: list[str] | None = None) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="face-native-out-") as folder:
            remote = self.host.output_path("embeddings.npy")
            self._run(array, [*(extra or []), "--output", remote])
            local = Path(folder) / "embeddings.npy"
            self.host.fetch(remote, local)
            embeddings = np.load(local)
        if embeddings.shape[0] != len(array):
            raise ToolRunError(f"{self.host.label}: {embeddings.shape[0]} embeddings for {len(array)} faces")
        return embeddings.astype(np.float32)

    def embed_rows(self, images_rgb: np.ndarray, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Raw faces in: the tool preprocesses them (mean, std, channel order from the manifest). One tool run per
        `batch_size` faces, so a slow host (qemu, a phone) shows progress."""
        if images_rgb.ndim != 4 or images_rgb.shape[1:] != (self.spec.height, self.spec.width, 3):
            raise ValueError(f"expected (N, {self.spec.height}, {self.spec.width}, 3) uint8 faces, got {images_rgb.shape}")
        if len(images_rgb) == 0:
            return np.zeros((0, self.spec.embedding_dim), np.float32)
        spec = self.spec
        preprocessing = ["--mean", ",".join(map(str, spec.mean)), "--std", ",".join(map(str, spec.std)), "--color", spec.color_order]
        starts = range(0, len(images_rgb), max(1, batch_size))
        chunks = [self._embeddings(np.asarray(images_rgb[start : start + batch_size], dtype=np.uint8), preprocessing)
                  for start in tqdm(starts, desc=f"embed {self.label}", disable=not progress, leave=False)]
        return np.concatenate(chunks)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self._embeddings(batch)

    def extract_blobs(self, image_chw: np.ndarray, blob_names: list[str]) -> dict[str, np.ndarray]:
        """Named blobs of one preprocessed image, for localising the first layer that diverges on this host."""
        with tempfile.TemporaryDirectory(prefix="face-native-blobs-") as folder:
            remote_dir = self.host.output_dir("blobs")
            self._run(np.asarray(image_chw, dtype=np.float32)[None], ["--blobs", ",".join(blob_names), "--blobs-dir", remote_dir])
            blobs = {}
            for index, name in enumerate(blob_names):
                local = Path(folder) / f"blob_{index}.npy"
                self.host.fetch(f"{remote_dir}/blob_{index}.npy", local)
                blobs[name] = _squeeze_ncnn_blob(np.load(local))
        return blobs


def _squeeze_ncnn_blob(blob_cdhw: np.ndarray) -> np.ndarray:
    """The tool writes every blob as (c, d, h, w); drop the axes ncnn's Mat did not have, as the Python binding does."""
    c, d, h, w = blob_cdhw.shape
    if d == 1 and h == 1 and c == 1:
        return blob_cdhw.reshape(w)
    if d == 1 and c == 1:
        return blob_cdhw.reshape(h, w)
    if d == 1:
        return blob_cdhw.reshape(c, h, w)
    return blob_cdhw
