"""ncnn runner, plus a reader of ncnn's .param text format for naming blobs and localising layer mismatches.

ncnn's defaults turn on fp16 storage and arithmetic wherever the CPU has them, so an "fp32" run would silently
be fp16 on ARM: the runner sets every precision option itself, from the precision it is asked for. "int8" runs
a model whose layers carry int8 scales (deploy/export/ncnn_int8.py) with int8 inference on and fp16 off, so
its error is the quantisation's alone.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np

from deploy.model_check import check_probe_embedding
from deploy.runners.base import Runner
from pipeline.preprocess import PreprocessSpec

logger = logging.getLogger(__name__)

NCNN_PARAM_MAGIC = 7767517
NCNN_PRECISIONS = ("fp32", "fp16", "int8")


class NcnnLayer(NamedTuple):
    """One layer line of a .param file: `type name n_in n_out inputs... outputs... key=value...`.

    `params` keeps the key=value pairs as written (keys as strings, arrays such as `-23309=2,1,2` verbatim),
    so a rewritten .param (the int8 writer) changes only what it means to change.
    """

    layer_type: str
    layer_name: str
    input_blobs: list[str]
    output_blobs: list[str]
    params: tuple[tuple[str, str], ...] = ()

    def param_int(self, key: int, default: int = 0) -> int:
        """A scalar integer parameter (ncnn's `pd.get(key, default)`)."""
        for name, value in self.params:
            if name == str(key):
                return int(float(value))
        return default


def read_param_layers(param_path: str | Path) -> list[NcnnLayer]:
    """Parse the layer lines of an ncnn .param text file (not the binary .param.bin form)."""
    param_path = Path(param_path)
    lines = [line.split() for line in param_path.read_text().splitlines() if line.strip()]
    if not lines or lines[0] != [str(NCNN_PARAM_MAGIC)]:
        raise ValueError(f"{param_path}: not an ncnn text .param (first line must be {NCNN_PARAM_MAGIC})")
    if len(lines) < 2 or len(lines[1]) != 2:
        raise ValueError(f"{param_path}: second line must be '<layer_count> <blob_count>'")
    layer_count = int(lines[1][0])
    layers = []
    for number, fields in enumerate(lines[2:], start=3):
        if len(fields) < 4:
            raise ValueError(f"{param_path}:{number}: layer line has fewer than 4 fields: {' '.join(fields)}")
        n_in, n_out = int(fields[2]), int(fields[3])
        blobs = fields[4 : 4 + n_in + n_out]
        if len(blobs) != n_in + n_out:
            raise ValueError(f"{param_path}:{number}: layer declares {n_in}+{n_out} blobs, line has {len(blobs)}")
        params = []
        for token in fields[4 + n_in + n_out :]:
            key, sep, value = token.partition("=")
            if not sep:
                raise ValueError(f"{param_path}:{number}: parameter {token!r} is not key=value")
            params.append((key, value))
        layers.append(NcnnLayer(fields[0], fields[1], blobs[:n_in], blobs[n_in:], tuple(params)))
    if len(layers) != layer_count:
        raise ValueError(f"{param_path}: header says {layer_count} layers, file has {len(layers)}")
    return layers


def list_blobs(param_path: str | Path) -> list[tuple[str, str, list[str]]]:
    """(layer_type, layer_name, output_blob_names) per layer, in file (execution) order."""
    return [(layer.layer_type, layer.layer_name, layer.output_blobs) for layer in read_param_layers(param_path)]


def io_blob_names(param_path: str | Path) -> tuple[str, str]:
    """(input blob, output blob) of a single-input single-output net, read from the graph, not assumed."""
    layers = read_param_layers(param_path)
    inputs = [blob for layer in layers if layer.layer_type == "Input" for blob in layer.output_blobs]
    consumed = {blob for layer in layers for blob in layer.input_blobs}
    outputs = [blob for layer in layers for blob in layer.output_blobs if blob not in consumed]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(
            f"{param_path}: expected one input and one output blob, found inputs {inputs}, outputs {outputs}"
        )
    return inputs[0], outputs[0]


class NcnnRunner(Runner):
    """Runs an ncnn param/bin pair one image at a time (ncnn Mats are 3-D: C, H, W)."""

    backend = "ncnn"

    def __init__(
        self,
        param_path: str | Path,
        bin_path: str | Path,
        spec: PreprocessSpec,
        precision: str = "fp32",
        threads: int = 1,
        input_blob: str | None = None,
        output_blob: str | None = None,
        use_fp16_arithmetic: bool | None = None,
    ) -> None:
        if precision not in NCNN_PRECISIONS:
            raise ValueError(f"ncnn precision must be one of {NCNN_PRECISIONS}, got {precision!r}")
        if spec.layout != "NCHW":
            raise ValueError(f"the ncnn runner feeds CHW images; spec layout is {spec.layout}")
        super().__init__(spec, precision, threads)
        self.param_path = Path(param_path)
        self.bin_path = Path(bin_path)
        default_input, default_output = io_blob_names(self.param_path)
        self.input_blob = input_blob or default_input
        self.output_blob = output_blob or default_output
        use_fp16 = precision == "fp16"
        self.use_fp16_arithmetic = use_fp16 if use_fp16_arithmetic is None else use_fp16_arithmetic
        import ncnn  # here, not at the top: the .param readers above serve machines without the ncnn package

        self._ncnn = ncnn
        self.net: ncnn.Net | None = ncnn.Net()
        # Options must be set before load_param/load_model: ncnn picks layer implementations at load time.
        opt = self.net.opt
        opt.num_threads = threads
        opt.use_vulkan_compute = False
        opt.use_fp16_storage = use_fp16
        opt.use_fp16_packed = use_fp16
        opt.use_fp16_arithmetic = self.use_fp16_arithmetic
        opt.use_bf16_storage = False
        opt.use_int8_inference = precision == "int8"
        if self.net.load_param(str(self.param_path)) != 0:
            raise RuntimeError(f"ncnn could not load param file {self.param_path}")
        if self.net.load_model(str(self.bin_path)) != 0:
            raise RuntimeError(f"ncnn could not load weights {self.bin_path} (does it match {self.param_path.name}?)")
        logger.info(
            "ncnn %s: loaded %s + %s, %s -> %s, threads=%d, fp16 storage=%s arithmetic=%s (cpu fp16 arithmetic: %s)",
            precision, self.param_path, self.bin_path, self.input_blob, self.output_blob, threads, use_fp16,
            self.use_fp16_arithmetic, bool(ncnn.cpu_support_arm_asimdhp()),
        )
        check_probe_embedding(self.param_path, spec, self._infer)  # unchecked: the probe reports a wrong output size itself

    def _extract(self, image_chw: np.ndarray, blob_names: list[str], light_mode: bool) -> dict[str, np.ndarray]:
        if self.net is None:
            raise RuntimeError(f"ncnn runner for {self.param_path} is closed")
        expected = (3, self.spec.height, self.spec.width)
        if image_chw.shape != expected:
            raise ValueError(f"ncnn input must be one CHW image of shape {expected}, got {image_chw.shape}")
        extractor = self.net.create_extractor()
        extractor.set_light_mode(light_mode)
        extractor.input(self.input_blob, self._ncnn.Mat(np.ascontiguousarray(image_chw, dtype=np.float32)))
        blobs = {}
        for name in blob_names:
            status, mat = extractor.extract(name)
            if status != 0:
                raise RuntimeError(f"ncnn extract({name!r}) failed with status {status} on {self.param_path}")
            blobs[name] = np.array(mat, dtype=np.float32)
        return blobs

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        embeddings = [self._extract(image, [self.output_blob], light_mode=True)[self.output_blob] for image in batch]
        return np.stack([embedding.reshape(-1) for embedding in embeddings])

    def extract_blobs(self, image_chw: np.ndarray, blob_names: list[str]) -> dict[str, np.ndarray]:
        """Intermediate blobs of one preprocessed CHW image, for finding the first layer that diverges.

        Light mode is off so blobs extracted earlier are not recycled while later ones are computed.
        """
        return self._extract(image_chw, list(blob_names), light_mode=False)

    def close(self) -> None:
        if self.net is not None:
            self.net.clear()
            self.net = None
