"""Read and write an ncnn model (text .param + .bin) as layers with their weight arrays.

ncnn's .bin has no index: each layer's `load_model` reads its arrays in a fixed order whose sizes come from the
layer's params (src/layer/*.cpp). This module knows that order for the layers a CNN exported by pnnx uses, so
the int8 writer can re-encode weights and a test can corrupt one layer's weights; a layer type whose weight
layout it does not know is an error, never a guess.

An array read with ModelBin type 0 starts with a 4-byte tag: 0 for raw float32, 0x01306B47 for float16 and
0x000D4B38 for int8 (both padded to 4 bytes); type 1 arrays are raw float32 without a tag.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deploy.runners.ncnn_runner import NCNN_PARAM_MAGIC, NcnnLayer, read_param_layers
from pipeline.artifacts import atomic_path
from pipeline.ncnn_layer_types import layer_type_problem, names_a_layer_type

TAG_FP16 = 0x01306B47
TAG_INT8 = 0x000D4B38
TAG_FP32_SCALED = 0x0002C056

# Layer types whose load_model reads nothing.
WEIGHTLESS_LAYERS = frozenset({
    "Input", "Split", "BinaryOp", "UnaryOp", "Flatten", "Reshape", "Pooling", "ReLU", "Sigmoid", "Swish", "HardSwish",
    "HardSigmoid", "Clip", "Concat", "Eltwise", "Softmax", "Permute", "Crop", "Interp", "Noop", "Dropout", "Padding",
    "Slice", "Squeeze", "ExpandDims", "TanH", "ELU", "GELU", "Mish", "Normalize", "ShuffleChannel", "PixelShuffle",
    "Reorg",
})
CONVOLUTIONS = frozenset({"Convolution", "ConvolutionDepthWise"})
QUANTISABLE_LAYERS = frozenset({"Convolution", "ConvolutionDepthWise", "InnerProduct"})


@dataclass
class WeightArray:
    """One array of a layer's weights, decoded to float32 (or kept int8), and how it is stored in the .bin."""

    values: np.ndarray
    tagged: bool  # read with ModelBin type 0 (starts with a tag) or type 1 (raw float32)
    storage: str = "fp32"  # "fp32" | "fp16" | "int8"; only tagged arrays may be fp16 or int8


@dataclass
class NcnnModelLayer:
    layer: NcnnLayer
    weights: list[WeightArray] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.layer.layer_name

    @property
    def layer_type(self) -> str:
        return self.layer.layer_type


@dataclass
class NcnnModel:
    layers: list[NcnnModelLayer]
    blob_count: int

    def layer(self, name: str) -> NcnnModelLayer:
        for entry in self.layers:
            if entry.name == name:
                return entry
        raise KeyError(f"no ncnn layer named {name!r}")


def weight_layout(layer: NcnnLayer) -> list[tuple[int, bool]]:
    """(element count, tagged) of every array `layer` reads from the .bin, in ncnn's load_model order."""
    kind, p = layer.layer_type, layer.param_int
    if kind in WEIGHTLESS_LAYERS:
        return []
    if kind in CONVOLUTIONS or kind == "InnerProduct":
        if p(19) and kind in CONVOLUTIONS:  # dynamic weight: the weights are an input blob
            return []
        num_output, scale_term = p(0), p(8)
        arrays = [(p(6), True)]
        if p(5):
            arrays.append((num_output, False))
        if scale_term and kind == "ConvolutionDepthWise":
            arrays += [(p(7, 1) if scale_term in (1, 101) else 1, False), (1, False)]
        elif scale_term:
            arrays += [(num_output, False), (1, False)]
        if scale_term > 100 and kind != "InnerProduct":
            arrays.append((1, False))
        return arrays
    if kind == "PReLU":
        return [(p(0), False)]
    if kind == "BatchNorm":
        return [(p(0), False)] * 4
    if kind == "Scale":
        if p(0) == -233:
            return []
        return [(p(0), False)] * (2 if p(1) else 1)
    if kind == "MemoryData":
        dims = [d for d in (p(0), p(1), p(11), p(2)) if d]
        return [(int(np.prod(dims)) if dims else 1, p(21, 1) == 0)]
    raise ValueError(f"layer {layer.layer_name}: weight layout of ncnn layer type {kind!r} is not known here")


def read_ncnn_model(param_path: str | Path, bin_path: str | Path) -> NcnnModel:
    """Parse `param_path` and split `bin_path` into each layer's arrays; the whole .bin must be accounted for."""
    param_path, bin_path = Path(param_path), Path(bin_path)
    layers = read_param_layers(param_path)
    header = param_path.read_text().split("\n", 2)[1].split()
    data = bin_path.read_bytes()
    offset = 0
    entries = []
    for layer in layers:
        try:
            layout = weight_layout(layer)
        except ValueError as error:
            raise ValueError(f"{param_path}: {error}") from None
        arrays = []
        for count, tagged in layout:
            try:
                array, offset = _read_array(data, offset, count, tagged)
            except ValueError as error:
                raise ValueError(f"{bin_path}: layer {layer.layer_name} ({layer.layer_type}): {error}") from None
            arrays.append(array)
        entries.append(NcnnModelLayer(layer, arrays))
    if offset != len(data):
        raise ValueError(f"{bin_path}: {len(data) - offset} bytes left after reading every layer of {param_path.name}")
    return NcnnModel(entries, int(header[1]))


def _read_array(data: bytes, offset: int, count: int, tagged: bool) -> tuple[WeightArray, int]:
    if not tagged:
        end = offset + 4 * count
        if end > len(data):
            raise ValueError(f"needs {4 * count} bytes at offset {offset}, file ends at {len(data)}")
        return WeightArray(np.frombuffer(data, "<f4", count, offset).copy(), False), end
    if offset + 4 > len(data):
        raise ValueError(f"no array tag at offset {offset}, file ends at {len(data)}")
    tag = int.from_bytes(data[offset : offset + 4], "little")
    offset += 4
    if tag == TAG_FP16:
        values = np.frombuffer(data, "<f2", count, offset).astype(np.float32)
        return WeightArray(values, True, "fp16"), offset + _aligned(2 * count)
    if tag == TAG_INT8:
        values = np.frombuffer(data, np.int8, count, offset).copy()
        return WeightArray(values, True, "int8"), offset + _aligned(count)
    if tag in (0, TAG_FP32_SCALED):
        return WeightArray(np.frombuffer(data, "<f4", count, offset).copy(), True), offset + 4 * count
    raise ValueError(f"array tag {tag:#010x} at offset {offset - 4} is not one this reader decodes (fp32, fp16, int8)")


def _aligned(size: int) -> int:
    return (size + 3) // 4 * 4


def encode_weights(model: NcnnModel) -> bytes:
    """The .bin bytes of `model`, each array in its storage."""
    chunks = []
    for entry in model.layers:
        for array in entry.weights:
            if not array.tagged:
                chunks.append(np.ascontiguousarray(array.values, "<f4").tobytes())
                continue
            if array.storage == "fp32":
                chunks += [(0).to_bytes(4, "little"), np.ascontiguousarray(array.values, "<f4").tobytes()]
                continue
            tag, raw = (
                (TAG_FP16, np.ascontiguousarray(array.values, "<f2").tobytes()) if array.storage == "fp16"
                else (TAG_INT8, np.ascontiguousarray(array.values, np.int8).tobytes())
            )
            chunks += [tag.to_bytes(4, "little"), raw, b"\0" * (_aligned(len(raw)) - len(raw))]
    return b"".join(chunks)


def encode_param(model: NcnnModel) -> str:
    return _param_text([entry.layer for entry in model.layers], model.blob_count)


def _param_text(layers: list[NcnnLayer], blob_count: int) -> str:
    lines = [str(NCNN_PARAM_MAGIC), f"{len(layers)} {blob_count}"]
    for layer in layers:
        fields = [f"{layer.layer_type:<24}", f"{layer.layer_name:<24}", str(len(layer.input_blobs)), str(len(layer.output_blobs)),
                  *layer.input_blobs, *layer.output_blobs, *(f"{key}={value}" for key, value in layer.params)]
        lines.append(" ".join(fields))
    return "\n".join(lines) + "\n"


FEATMASK_KEY = 31  # ncnn's per-layer option mask (net.cpp get_masked_option)
FEATMASK_NO_FP16_ARITHMETIC = 1 << 0


def mask_fp16_arithmetic(param_path: str | Path, selectors: tuple[str, ...]) -> list[str]:
    """Run the layers whose type or name is in `selectors` without fp16 arithmetic (fp16 storage stays): ncnn's
    per-layer featmask, param 31 bit 0. Rewrites the .param in place; returns the names of the layers changed.

    Why: ncnn's ARMv8.2 fp16-arithmetic kernels can lose more than the fp16 gate allows in a few layer types
    (measured under qemu -cpu max: ConvolutionDepthWise, see README), while x86 has no fp16 arithmetic to notice.
    """
    param_path = Path(param_path)
    layers = read_param_layers(param_path)
    blob_count = int(param_path.read_text().splitlines()[1].split()[1])
    types, names = {layer.layer_type for layer in layers}, {layer.layer_name for layer in layers}
    # A layer type the model lacks is fine (an IResNet has no depthwise convolutions); a name that is not there, or a
    # type ncnn does not have, is a typo.
    unknown = [s for s in selectors if s not in types and s not in names and not names_a_layer_type(s)]
    if unknown:
        raise ValueError(f"{param_path}: no layer named {', '.join(unknown)} to run without fp16 arithmetic")
    problem = layer_type_problem(selectors)
    if problem is not None:
        raise ValueError(f"{param_path}: {problem}")
    changed, masked = [], []
    for layer in layers:
        if layer.layer_type in selectors or layer.layer_name in selectors:
            layer = with_param(layer, FEATMASK_KEY, str(layer.param_int(FEATMASK_KEY) | FEATMASK_NO_FP16_ARITHMETIC))
            changed.append(layer.layer_name)
        masked.append(layer)
    with atomic_path(param_path) as temp_param:
        temp_param.write_text(_param_text(masked, blob_count))
    return changed


def write_ncnn_model(model: NcnnModel, param_path: str | Path, bin_path: str | Path) -> None:
    """Weights first, param last (both atomic): a reader that finds the param finds the weights that go with it."""
    with atomic_path(bin_path) as temp_bin:
        temp_bin.write_bytes(encode_weights(model))
    with atomic_path(param_path) as temp_param:
        temp_param.write_text(encode_param(model))


def with_param(layer: NcnnLayer, key: int, value: str) -> NcnnLayer:
    """`layer` with param `key` set to `value` (added at the end when absent)."""
    params = [(k, v) for k, v in layer.params if k != str(key)]
    return layer._replace(params=(*params, (str(key), value)))
