"""CoreML runner, and a validator of saved .mlpackages that works where CoreML cannot predict (Linux).

coremltools is imported inside the functions: its import takes seconds and prints warnings, and asking
whether this backend can run here should cost neither.
"""

from __future__ import annotations

import collections
import json
import logging
import platform
from pathlib import Path

import numpy as np

from deploy.runners.base import Runner
from pipeline.preprocess import PreprocessSpec

logger = logging.getLogger(__name__)

COREML_NOT_MACOS = "needs macOS (CoreML prediction is only supported on macOS)"
COREML_MIN_MACOS = 13  # the exports target iOS16 (ML program spec 7), which macOS 13 is the first to run
# MIL ops that move data without computing; their dtypes say nothing about the compute precision.
_NON_COMPUTE_OPS = {"const", "cast", "reshape", "flatten", "squeeze", "expand_dims", "transpose"}


def coreml_prediction_available() -> tuple[bool, str]:
    """(True, "") where CoreML can predict; otherwise (False, the reason to report when skipping)."""
    if platform.system() != "Darwin":
        return False, COREML_NOT_MACOS
    release = platform.mac_ver()[0]
    major_text = release.split(".")[0]
    major = int(major_text) if major_text.isdigit() else 0
    if major < COREML_MIN_MACOS:
        return False, (f"needs macOS {COREML_MIN_MACOS} or newer to run the exported iOS16-spec models "
                       f"(this is macOS {release or 'of unknown version'})")
    try:
        from coremltools import libcoremlpython  # noqa: F401 - the native bridge predict() needs
    except ImportError as error:
        return False, f"coremltools' native CoreML bridge failed to load: {error}"
    return True, ""


def validate_coreml_package(path: str | Path, spec: PreprocessSpec, precision: str | None = None) -> dict:
    """Check a saved .mlpackage against the preprocessing spec without loading it into CoreML.

    Checks input/output names, the input shape (batch 1 or a batch range, 3, H, W), the embedding size, the
    `preprocess` metadata, and (when given) the precision. The precision is read from the ML Program itself:
    the dtype of every computing op's output and of every weight constant, fp16 when all are fp16.
    Raises ValueError naming the path and every mismatch; returns the validated facts.
    """
    import coremltools as ct

    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: no .mlpackage folder there")
    try:
        model_spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    except Exception as error:  # noqa: BLE001 - any load failure is "not a valid package"
        raise ValueError(f"{path}: coremltools could not read the package: {error}") from error

    problems: list[str] = []
    facts: dict = {
        "path": path, "model_type": model_spec.WhichOneof("Type"), "spec_version": model_spec.specificationVersion
    }
    description = model_spec.description
    input_names = [feature.name for feature in description.input]
    output_names = [feature.name for feature in description.output]
    if input_names != [spec.input_name]:
        problems.append(f"inputs are {input_names}, spec expects [{spec.input_name!r}]")
    if output_names != [spec.output_name]:
        problems.append(f"outputs are {output_names}, spec expects [{spec.output_name!r}]")

    if description.input:
        facts.update(_input_facts(description.input[0]))
        shape = facts["input_shape"]
        if len(shape) != 4 or list(shape[1:]) != [3, spec.height, spec.width]:
            problems.append(f"input shape is {shape}, spec expects (N, 3, {spec.height}, {spec.width})")
        if facts["batch_range"][0] != 1:
            problems.append(f"input batch range {facts['batch_range']} does not include batch 1")

    program_facts = _program_facts(model_spec) if facts["model_type"] == "mlProgram" else {}
    facts.update(program_facts)
    output_shape = program_facts.get("output_shape") or (
        list(description.output[0].type.multiArrayType.shape) if description.output else []
    )
    facts["output_shape"] = output_shape
    if not output_shape or output_shape[-1] != spec.embedding_dim:
        problems.append(f"output shape is {output_shape}, spec expects (N, {spec.embedding_dim})")

    metadata = dict(description.metadata.userDefined)
    declared = metadata.get("preprocess")
    expected = json.loads(json.dumps(spec.to_dict()))
    if declared is None:
        problems.append("metadata has no 'preprocess' entry")
    elif (declared_spec := json.loads(declared)) != expected:
        keys = expected.keys() | declared_spec.keys()
        differing = sorted(key for key in keys if declared_spec.get(key) != expected.get(key))
        problems.append(
            "metadata preprocess differs from spec in "
            + ", ".join(f"{key} (package {declared_spec.get(key)!r}, spec {expected.get(key)!r})" for key in differing)
        )
    facts["preprocess"] = json.loads(declared) if declared else None
    facts["declared_precision"] = metadata.get("precision")

    detected = facts.get("precision")
    if precision is not None and detected != precision:
        problems.append(f"program computes in {detected}, expected {precision}")
    if facts["declared_precision"] and detected and facts["declared_precision"] != detected:
        problems.append(f"metadata says {facts['declared_precision']} but the program computes in {detected}")

    if problems:
        raise ValueError(f"{path}: CoreML package does not match the spec: " + "; ".join(problems))
    logger.info("validated CoreML package %s: %s", path, {k: v for k, v in facts.items() if k != "preprocess"})
    return facts


def _input_facts(feature) -> dict:
    """Default input shape and batch range (lower, upper; upper -1 = unbounded) of a multi-array input."""
    array_type = feature.type.multiArrayType
    shape = list(array_type.shape)
    batch_range = [shape[0], shape[0]] if shape else [0, 0]
    if array_type.WhichOneof("ShapeFlexibility") == "shapeRange":
        first = array_type.shapeRange.sizeRanges[0]
        batch_range = [first.lowerBound, first.upperBound]
    elif array_type.WhichOneof("ShapeFlexibility") == "enumeratedShapes":
        batches = [s.shape[0] for s in array_type.enumeratedShapes.shapes]
        batch_range = [min(batches), max(batches)]
    return {"input_shape": shape, "batch_range": batch_range, "input_dtype": _array_dtype_name(array_type.dataType)}


def _array_dtype_name(data_type: int) -> str:
    from coremltools.proto import FeatureTypes_pb2

    return FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(data_type)


def _program_facts(model_spec) -> dict:
    """Output shape and compute precision read from the ML Program's main function."""
    from coremltools.proto import MIL_pb2

    function = model_spec.mlProgram.functions["main"]
    block = function.block_specializations[function.opset]
    compute_dtypes: collections.Counter = collections.Counter()
    weight_dtypes: collections.Counter = collections.Counter()
    var_types = {}
    for op in block.operations:
        for output in op.outputs:
            tensor_type = output.type.tensorType
            var_types[output.name] = tensor_type
            dtype = MIL_pb2.DataType.Name(tensor_type.dataType)
            if op.type == "const":
                if tensor_type.rank > 0 and dtype.startswith(("FLOAT", "BFLOAT")):
                    weight_dtypes[dtype] += 1
            elif op.type not in _NON_COMPUTE_OPS:
                compute_dtypes[dtype] += 1
    float_dtypes = {dtype for dtype in compute_dtypes | weight_dtypes if "FLOAT" in dtype}
    precision = "mixed"
    if len(float_dtypes) == 1:
        precision = {"FLOAT16": "fp16", "FLOAT32": "fp32"}.get(float_dtypes.pop(), "mixed")
    output_shape = []
    if block.outputs and block.outputs[0] in var_types:
        output_shape = [
            dimension.constant.size if dimension.WhichOneof("dimension") == "constant" else -1
            for dimension in var_types[block.outputs[0]].dimensions
        ]
    return {
        "opset": function.opset,
        "precision": precision,
        "precision_evidence": {"compute_op_output_dtypes": dict(compute_dtypes), "weight_dtypes": dict(weight_dtypes)},
        "op_counts": dict(collections.Counter(op.type for op in block.operations)),
        "output_shape": output_shape,
    }


class CoreMLRunner(Runner):
    """Runs a validated .mlpackage with MLModel.predict; on Linux it loads nothing and `infer` says why."""

    backend = "coreml"

    def __init__(
        self, package_path: str | Path, spec: PreprocessSpec, precision: str = "fp32", threads: int = 1,
        compute_units: str = "CPU_ONLY",
    ) -> None:
        super().__init__(spec, precision, threads)
        self.package_path = Path(package_path)
        self.facts = validate_coreml_package(self.package_path, spec, precision)
        self.available, self.unavailable_reason = coreml_prediction_available()
        self._model = None
        if self.available:
            import coremltools as ct

            self._model = ct.models.MLModel(str(self.package_path), compute_units=ct.ComputeUnit[compute_units])

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        if self._model is None:
            raise RuntimeError(f"cannot run CoreML package {self.package_path}: {self.unavailable_reason}")
        lower, upper = self.facts["batch_range"]
        if lower <= len(batch) and (upper == -1 or len(batch) <= upper):
            chunks = [batch]
        else:
            chunks = [batch[i : i + 1] for i in range(len(batch))]
        embeddings = []
        for chunk in chunks:
            output = self._model.predict({self.spec.input_name: np.ascontiguousarray(chunk, np.float32)})
            embeddings.append(np.asarray(output[self.spec.output_name], np.float32).reshape(len(chunk), -1))
        return np.concatenate(embeddings)

    def close(self) -> None:
        self._model = None
