"""Find the first layer whose output diverges from PyTorch when a backend fails numeric parity.

Both sides are reduced to a list of layer outputs in execution order, each with a *kind* (conv, prelu, add,
flatten, ...) and an element count:

- PyTorch: forward hooks on every module. A BatchNorm right after a convolution is merged into it (every
  exporter folds it), a container whose output is a new tensor (a residual block's `x + out`) is an "add";
  containers that just pass their last child's output on add nothing.
- ONNX Runtime: every node output is made a graph output (QuantizeLinear/DequantizeLinear and shape plumbing
  are not layers); node names from torch.onnx carry the module path (/stages/stages.0/...). A marked output
  keeps ORT from fusing across it, so an int8 QDQ model is seen as its quantise-dequantise simulation.
- ncnn: every layer's top blob, extracted by name (Split and Input are plumbing); a Convolution with a fused
  activation (param 9) is compared with the activation after it.

The two kind sequences are aligned (difflib: a layer one side has and the other lacks is left out), then each
aligned pair is compared on one image; the first pair whose cosine falls below the tolerance is reported with
both names, its op and the error, and so is the pair before it, which still agreed.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.preprocess import PreprocessSpec, preprocess

TORCH_KINDS = {
    "Conv1d": "conv", "Conv2d": "conv", "ConvTranspose2d": "deconv", "Linear": "fc", "PReLU": "prelu", "ReLU": "relu",
    "ReLU6": "clip", "LeakyReLU": "leakyrelu", "Sigmoid": "sigmoid", "Hardswish": "hardswish", "SiLU": "swish",
    "GELU": "gelu", "Flatten": "flatten", "BatchNorm1d": "bn", "BatchNorm2d": "bn", "MaxPool2d": "pool",
    "AvgPool2d": "pool", "AdaptiveAvgPool2d": "pool", "Softmax": "softmax", "LayerNorm": "layernorm",
}
PASS_THROUGH_MODULES = {"Identity", "Dropout", "Dropout2d"}
ONNX_KINDS = {
    "Conv": "conv", "ConvTranspose": "deconv", "Gemm": "fc", "MatMul": "fc", "PRelu": "prelu", "Relu": "relu",
    "Clip": "clip", "LeakyRelu": "leakyrelu", "Sigmoid": "sigmoid", "HardSwish": "hardswish", "Gelu": "gelu",
    "Add": "add", "Flatten": "flatten", "Reshape": "flatten", "BatchNormalization": "bn", "MaxPool": "pool",
    "AveragePool": "pool", "GlobalAveragePool": "pool", "Softmax": "softmax", "LayerNormalization": "layernorm",
}
NCNN_KINDS = {
    "Convolution": "conv", "ConvolutionDepthWise": "conv", "Deconvolution": "deconv", "InnerProduct": "fc",
    "PReLU": "prelu", "ReLU": "relu", "Clip": "clip", "Sigmoid": "sigmoid", "HardSwish": "hardswish",
    "Swish": "swish", "GELU": "gelu", "Flatten": "flatten", "Reshape": "flatten", "BatchNorm": "bn",
    "Pooling": "pool", "Softmax": "softmax", "LayerNorm": "layernorm",
}
ACTIVATION_KINDS = {"relu", "prelu", "leakyrelu", "clip", "sigmoid", "hardswish", "swish", "gelu"}


@dataclass
class LayerOutput:
    """One layer's output on one image; `name`/`op` are what the user looks for in that backend's model."""

    name: str
    op: str
    kind: str
    value: np.ndarray
    fused_activation: bool = False

    @property
    def token(self) -> str:
        return f"{self.kind}:{self.value.size}"


@dataclass
class Divergence:
    """The first aligned layer pair that disagrees beyond tolerance (or none), and what was compared."""

    found: bool
    backend_layer: str | None
    backend_op: str | None
    torch_module: str | None
    torch_op: str | None
    cosine: float | None
    max_abs: float | None
    relative_error: float | None
    position: int | None
    layers_compared: int
    tolerance_cosine: float
    last_agreeing_layer: str | None = None
    last_agreeing_cosine: float | None = None
    image: str | int | None = None

    def summary(self) -> str:
        if not self.found:
            return (f"no single layer diverges below cosine {self.tolerance_cosine} "
                    f"({self.layers_compared} layers compared; the error accumulates)")
        before = (f"; last agreeing layer {self.last_agreeing_layer} (cosine {self.last_agreeing_cosine:.6f})"
                  if self.last_agreeing_layer else "")
        return (f"first divergent layer: {self.backend_layer} ({self.backend_op}) = torch {self.torch_module} "
                f"({self.torch_op}), layer {self.position} of {self.layers_compared} compared: cosine {self.cosine:.6f} "
                f"< {self.tolerance_cosine}, max abs {self.max_abs:.3g} (relative {self.relative_error:.3g}){before}")

    def to_dict(self) -> dict:
        return {**asdict(self), "summary": self.summary()}


def torch_layer_outputs(model: nn.Module, batch: torch.Tensor) -> list[LayerOutput]:
    """Every module's output on a one-image batch, in completion order, folded as the exporters fold."""
    records: list[tuple[str, nn.Module, tuple, object]] = []
    handles = [
        module.register_forward_hook(lambda module, inputs, output, name=name: records.append((name, module, inputs, output)))
        for name, module in model.named_modules()
    ]
    try:
        with torch.no_grad():
            model.eval()(batch)
    finally:
        for handle in handles:
            handle.remove()
    outputs: list[LayerOutput] = []
    tensors: list[torch.Tensor] = []
    for name, module, inputs, output in records:
        if not isinstance(output, torch.Tensor):
            continue
        op = type(module).__name__
        is_leaf = next(module.children(), None) is None
        if any(output is seen for seen in tensors) or op in PASS_THROUGH_MODULES:
            continue  # a container handing on its last child's output, or an identity
        first_input = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        if op.startswith("BatchNorm") and outputs and outputs[-1].kind in ("conv", "fc") and first_input is tensors[-1]:
            outputs[-1] = LayerOutput(f"{outputs[-1].name}+{name}", f"{outputs[-1].op}+{op}", outputs[-1].kind, _numpy(output))
            tensors[-1] = output
            continue
        if is_leaf:
            kind = TORCH_KINDS.get(op, op.lower())
        else:
            # A container whose output no hooked child produced computed it with functional ops in its forward;
            # in a CNN, one that keeps its input's shape is a residual add (x + block(x)).
            kind = "add" if first_input is not None and first_input.shape == output.shape else op.lower()
            op = f"{op} output"
        outputs.append(LayerOutput(name or "<model>", op, kind, _numpy(output)))
        tensors.append(output)
    return outputs


def onnx_layer_outputs(onnx_path: str | Path, batch: np.ndarray) -> list[LayerOutput]:
    """Every layer node's output, by running a copy of the model with all node outputs marked as graph outputs."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    nodes = [node for node in model.graph.node if node.op_type in ONNX_KINDS]
    existing = {output.name for output in model.graph.output}
    for node in nodes:
        for name in node.output:
            if name and name not in existing:
                model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
                existing.add(name)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [node.output[0] for node in nodes]
    values = session.run(names, {session.get_inputs()[0].name: np.ascontiguousarray(batch, np.float32)})
    return [LayerOutput(node.name or node.output[0], node.op_type, ONNX_KINDS[node.op_type], np.asarray(value, np.float32))
            for node, value in zip(nodes, values, strict=True)]


def onnx_module_path(node_name: str) -> str:
    """The PyTorch module path in a torch.onnx node name: /stages/stages.0/stages.0.0/block/block.0/Conv ->
    stages.0.0.block.0 (each scope repeats its parent's attribute name when it indexes into it)."""
    path, previous = "", ""
    for segment in node_name.strip("/").split("/")[:-1]:
        if previous and segment.startswith(previous + "."):
            path += segment[len(previous):]
        else:
            path = f"{path}.{segment}" if path else segment
        previous = segment
    return path


def ncnn_layer_outputs(param_path: str | Path, bin_path: str | Path, spec: PreprocessSpec, precision: str,
                       batch: np.ndarray, runner=None) -> list[LayerOutput]:
    """Every layer's top blob, extracted by name from one run of the net (light mode off).

    `runner`: anything with `extract_blobs(image_chw, names)` (the native tool's runner); default the Python binding.
    """
    from deploy.runners.ncnn_runner import NcnnRunner, read_param_layers

    layers = [layer for layer in read_param_layers(param_path) if _ncnn_kind(layer) is not None]
    # A runner handed in is the caller's to close; only the one made here closes on the way out.
    with NcnnRunner(param_path, bin_path, spec, precision) if runner is None else nullcontext(runner) as active:
        blobs = active.extract_blobs(batch[0], [layer.output_blobs[0] for layer in layers])
    return [LayerOutput(layer.layer_name, layer.layer_type, _ncnn_kind(layer), blobs[layer.output_blobs[0]],
                        fused_activation=layer.param_int(9) != 0)
            for layer in layers]


def _ncnn_kind(layer) -> str | None:
    if layer.layer_type == "BinaryOp":
        return "add" if layer.param_int(0) == 0 else "binaryop"
    return NCNN_KINDS.get(layer.layer_type)


def align(reference: list[LayerOutput], candidate: list[LayerOutput]) -> list[tuple[LayerOutput, LayerOutput]]:
    """Pairs of (torch, backend) outputs that are the same layer: equal kind and size, in the same order."""
    matcher = difflib.SequenceMatcher(None, [o.token for o in reference], [o.token for o in candidate], autojunk=False)
    pairs = []
    for block in matcher.get_matching_blocks():
        for offset in range(block.size):
            torch_index, backend_index = block.a + offset, block.b + offset
            torch_output, backend_output = reference[torch_index], candidate[backend_index]
            following = reference[torch_index + 1] if torch_index + 1 < len(reference) else None
            if (backend_output.fused_activation and following is not None and following.kind in ACTIVATION_KINDS
                    and following.value.size == torch_output.value.size):
                torch_output = LayerOutput(f"{torch_output.name}+{following.name}", f"{torch_output.op}+{following.op}",
                                           torch_output.kind, following.value)
            pairs.append((torch_output, backend_output))
    return pairs


def compare(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float, float]:
    """(cosine, max abs difference, max abs difference / max |reference|) of two same-size tensors."""
    ref = reference.astype(np.float64).reshape(-1)
    cand = candidate.astype(np.float64).reshape(-1)
    if not np.all(np.isfinite(cand)):
        return float("nan"), float("inf"), float("inf")
    norms = np.linalg.norm(ref) * np.linalg.norm(cand)
    cosine = 1.0 if norms == 0 and not ref.any() and not cand.any() else float(ref @ cand / max(norms, 1e-300))
    max_abs = float(np.abs(ref - cand).max()) if ref.size else 0.0
    return cosine, max_abs, max_abs / max(float(np.abs(ref).max()), 1e-12)


def first_divergent_layer(
    model: nn.Module,
    backend_outputs: Callable[[np.ndarray], list[LayerOutput]],
    image_rgb: np.ndarray,
    spec: PreprocessSpec,
    min_cosine: float,
    image_label: str | int | None = None,
) -> Divergence:
    """Run PyTorch and the backend on one (H, W, 3) uint8 face and report the first layer below `min_cosine`."""
    batch = preprocess(np.asarray(image_rgb)[None], spec)
    reference = torch_layer_outputs(model, torch.from_numpy(batch))
    pairs = align(reference, backend_outputs(batch))
    last_good: tuple[LayerOutput, float] | None = None
    for position, (torch_output, backend_output) in enumerate(pairs, start=1):
        cosine, max_abs, relative = compare(torch_output.value, backend_output.value)
        if not cosine >= min_cosine:  # also catches NaN
            return Divergence(
                True, backend_output.name, backend_output.op, torch_output.name, torch_output.op, cosine, max_abs, relative,
                position, len(pairs), min_cosine, last_good[0].name if last_good else None,
                last_good[1] if last_good else None, image_label,
            )
        last_good = (backend_output, cosine)
    return Divergence(False, None, None, None, None, None, None, None, None, len(pairs), min_cosine, image=image_label)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()
