"""ncnn's layer type names, so that a config can tell a mistyped layer type from a real one before any stage runs.

ncnn's Python package looks a name up (`ncnn.layer_to_index`) but cannot list its registry, and an error should say
what is allowed: `NCNN_LAYER_TYPES` is ncnn's registry in index order (the `ncnn_add_layer` list of ncnn's
src/CMakeLists.txt, ncnn 1.0.20260526; tests/test_ncnn_coreml.py checks each index against the installed package). A type that an
installed ncnn newer than this list registers is accepted too.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

NCNN_LAYER_TYPES: tuple[str, ...] = (
    "AbsVal", "ArgMax", "BatchNorm", "Bias", "BNLL", "Concat", "Convolution", "Crop", "Deconvolution", "Dropout",
    "Eltwise", "ELU", "Embed", "Exp", "Flatten", "InnerProduct", "Input", "Log", "LRN", "MemoryData", "MVN",
    "Pooling", "Power", "PReLU", "Proposal", "Reduction", "ReLU", "Reshape", "ROIPooling", "Scale", "Sigmoid",
    "Slice", "Softmax", "Split", "SPP", "TanH", "Threshold", "Tile", "RNN", "LSTM", "BinaryOp", "UnaryOp",
    "ConvolutionDepthWise", "Padding", "Squeeze", "ExpandDims", "Normalize", "Permute", "PriorBox",
    "DetectionOutput", "Interp", "DeconvolutionDepthWise", "ShuffleChannel", "InstanceNorm", "Clip", "Reorg",
    "YoloDetectionOutput", "Quantize", "Dequantize", "Yolov3DetectionOutput", "PSROIPooling", "ROIAlign", "Packing",
    "Requantize", "Cast", "HardSigmoid", "SELU", "HardSwish", "Noop", "PixelShuffle", "DeepCopy", "Mish",
    "StatisticsPooling", "Swish", "Gemm", "GroupNorm", "LayerNorm", "Softplus", "GRU", "MultiHeadAttention", "GELU",
    "Convolution1D", "Pooling1D", "ConvolutionDepthWise1D", "Convolution3D", "ConvolutionDepthWise3D", "Pooling3D",
    "MatMul", "Deconvolution1D", "DeconvolutionDepthWise1D", "Deconvolution3D", "DeconvolutionDepthWise3D",
    "Einsum", "DeformableConv2D", "GLU", "Fold", "Unfold", "GridSample", "CumulativeSum", "CopyTo", "Erf", "Diag",
    "CELU", "Shrink", "RMSNorm", "Spectrogram", "InverseSpectrogram", "Flip", "SDPA", "RotaryEmbed",
)

# ncnn's types are one capitalised word (ConvolutionDepthWise); the layer names pnnx writes are not (convdw_12)
_TYPE_SHAPED = re.compile(r"[A-Z][A-Za-z0-9]*")


def names_a_layer_type(selector: str) -> bool:
    """Whether a layer selector (a layer type or a layer name of a .param) is spelled as a layer type."""
    return _TYPE_SHAPED.fullmatch(selector) is not None


def unknown_layer_types(selectors: Iterable[str]) -> list[str]:
    """The selectors spelled as a layer type that ncnn has no layer type of (a typo such as Convolutoin)."""
    return [s for s in selectors if names_a_layer_type(s) and s not in NCNN_LAYER_TYPES and not _installed_ncnn_knows(s)]


def layer_type_problem(selectors: Iterable[str]) -> str | None:
    """What is wrong with the layer types among `selectors`, in one line that lists the allowed names; None if nothing."""
    unknown = unknown_layer_types(selectors)
    if not unknown:
        return None
    named = ", ".join(f"{s!r}{_did_you_mean(s)}" for s in unknown)
    return (f"unknown ncnn layer type {named}; ncnn's layer types: {', '.join(sorted(NCNN_LAYER_TYPES, key=str.lower))} "
            "(or a layer name of the exported .param, such as convdw_12)")


def _did_you_mean(selector: str) -> str:
    close = difflib.get_close_matches(selector, NCNN_LAYER_TYPES, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _installed_ncnn_knows(layer_type: str) -> bool:
    try:
        import ncnn
    except ImportError:  # a machine that only validates configs
        return False
    return ncnn.layer_to_index(layer_type) >= 0
