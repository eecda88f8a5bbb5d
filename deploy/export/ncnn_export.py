"""Export the student to ncnn (param + bin) with pnnx, keeping only the two files a deployer needs.

pnnx is run as its own executable rather than through `pnnx.export`, because that wrapper drops pnnx's exit
status and output (a failed conversion surfaces later as an unrelated import error), imports the generated
`_pnnx.py` into `sys.modules`, and only writes fp16 weights for `fp16=True` exactly (`fp16=1` gives fp32).
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pnnx
import torch

from deploy.export.ncnn_model import mask_fp16_arithmetic
from deploy.runners.ncnn_runner import io_blob_names, read_param_layers
from pipeline.artifacts import atomic_path
from pipeline.config import ExportConfig
from pipeline.preprocess import PreprocessSpec

logger = logging.getLogger(__name__)

# What pnnx itself writes; int8 is made from the fp32 export by deploy/export/ncnn_int8.py.
PNNX_PRECISIONS = ("fp32", "fp16")

# pnnx reports ops it could not map with lines like these; they are worth a warning, not silence.
_PNNX_PROBLEM = re.compile(r"ignore|unsupported|not supported|fallback|error|fail", re.IGNORECASE)


def ncnn_file_names(name: str, precision: str) -> tuple[str, str]:
    """File names that say the precision, e.g. student_fp16.ncnn.param / student_fp16.ncnn.bin."""
    return f"{name}_{precision}.ncnn.param", f"{name}_{precision}.ncnn.bin"


def export_ncnn(
    model: torch.nn.Module,
    spec: PreprocessSpec,
    out_dir: Path,
    precision: str = "fp32",
    name: str = "student",
    fp16_arithmetic_off: tuple[str, ...] | None = None,
) -> dict:
    """Trace `model` at batch 1 and convert it with pnnx; fp16 stores weights as fp16 (pnnx fp16=1).

    `fp16_arithmetic_off` (fp16 only): layer types or names that run without fp16 arithmetic on CPUs that have it;
    None: the config's default (`ExportConfig.ncnn_fp16_arithmetic_off`), so a direct call exports what a run would.
    Returns the written paths, the blob names read back from the .param, sizes and timings.
    """
    if precision not in PNNX_PRECISIONS:
        raise ValueError(f"pnnx writes ncnn precisions {PNNX_PRECISIONS}, got {precision!r} (int8: deploy/export/ncnn_int8.py)")
    if spec.layout != "NCHW":
        raise ValueError(f"ncnn export needs an NCHW spec, got {spec.layout}")
    if fp16_arithmetic_off is None:
        fp16_arithmetic_off = tuple(ExportConfig.model_fields["ncnn_fp16_arithmetic_off"].default)
    out_dir = Path(out_dir)
    param_name, bin_name = ncnn_file_names(name, precision)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pnnx-") as work:
        work_dir = Path(work)
        traced_path = work_dir / f"{name}.pt"
        _trace_to_file(model, spec, traced_path)
        pnnx_log = _run_pnnx(traced_path, spec, work_dir, precision)
        converted_param, converted_bin = work_dir / f"{name}.ncnn.param", work_dir / f"{name}.ncnn.bin"
        if not converted_param.is_file() or not converted_bin.is_file():
            raise RuntimeError(f"pnnx wrote no ncnn param/bin for {traced_path}; its output ends:\n{pnnx_log[-2000:]}")
        masked = mask_fp16_arithmetic(converted_param, fp16_arithmetic_off) if precision == "fp16" and fp16_arithmetic_off else []
        input_blob, output_blob = io_blob_names(converted_param)
        layer_count = len(read_param_layers(converted_param))
        # Weights first, param last: a reader that finds the param finds the weights that go with it.
        param_path, bin_path = out_dir / param_name, out_dir / bin_name
        with atomic_path(bin_path) as temp_bin:
            shutil.copyfile(converted_bin, temp_bin)
        with atomic_path(param_path) as temp_param:
            shutil.copyfile(converted_param, temp_param)
    seconds = time.perf_counter() - started
    result = {
        "param": param_path,
        "bin": bin_path,
        "input_blob": input_blob,
        "output_blob": output_blob,
        "precision": precision,
        "input_shape": [3, spec.height, spec.width],
        "layers": layer_count,
        "param_bytes": param_path.stat().st_size,
        "bin_bytes": bin_path.stat().st_size,
        "export_seconds": round(seconds, 3),
        "pnnx_version": getattr(pnnx, "__version__", "unknown"),
        **({"fp16_arithmetic_off_layers": masked} if masked else {}),
    }
    logger.info(
        "ncnn %s export: wrote %s (%d B) and %s (%d B), %d layers, %s -> %s, in %.1f s",
        precision, param_path, result["param_bytes"], bin_path, result["bin_bytes"], layer_count, input_blob,
        output_blob, seconds,
    )
    return result


def _trace_to_file(model: torch.nn.Module, spec: PreprocessSpec, traced_path: Path) -> None:
    """TorchScript-trace the model in eval mode at batch 1 (ncnn runs one image at a time)."""
    was_training = model.training
    model.eval()
    try:
        example_input = torch.randn(1, 3, spec.height, spec.width, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            traced = torch.jit.trace(model, example_input)
        traced.save(str(traced_path))
    finally:
        model.train(was_training)
    logger.debug("traced %s at input %s -> %s", type(model).__name__, tuple(example_input.shape), traced_path)


def _run_pnnx(traced_path: Path, spec: PreprocessSpec, work_dir: Path, precision: str) -> str:
    """Run the pnnx executable with every output named inside `work_dir`; return its combined output."""
    stem = traced_path.stem
    command = [
        pnnx.EXEC_PATH,
        str(traced_path),
        f"inputshape=[1,3,{spec.height},{spec.width}]f32",
        "device=cpu",
        "optlevel=2",
        f"fp16={1 if precision == 'fp16' else 0}",
        f"pnnxparam={work_dir / f'{stem}.pnnx.param'}",
        f"pnnxbin={work_dir / f'{stem}.pnnx.bin'}",
        f"pnnxpy={work_dir / f'{stem}_pnnx.py'}",
        f"pnnxonnx={work_dir / f'{stem}.pnnx.onnx'}",
        f"ncnnparam={work_dir / f'{stem}.ncnn.param'}",
        f"ncnnbin={work_dir / f'{stem}.ncnn.bin'}",
        f"ncnnpy={work_dir / f'{stem}_ncnn.py'}",
    ]
    completed = subprocess.run(command, cwd=work_dir, capture_output=True, text=True, check=False)
    output = completed.stdout + completed.stderr
    if completed.returncode != 0:
        raise RuntimeError(
            f"pnnx failed (exit {completed.returncode}) on {traced_path}; output ends:\n{output[-2000:]}"
        )
    for line in output.splitlines():
        if _PNNX_PROBLEM.search(line):
            logger.warning("pnnx: %s", line.strip())
    logger.debug("pnnx output:\n%s", output)
    return output
