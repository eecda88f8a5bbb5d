"""ONNX export: opset >= 17, named input/output, dynamic batch, then simplified with onnxsim and checked."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import onnx
import torch
from torch import nn

from pipeline.artifacts import atomic_path
from pipeline.preprocess import PreprocessSpec

log = logging.getLogger(__name__)


def export_onnx(model: nn.Module, spec: PreprocessSpec, out_path: Path, opset: int = 17, simplify: bool = True) -> dict:
    """Trace the eval-mode model to ONNX (TorchScript exporter: stable, one file) and simplify it."""
    started = time.perf_counter()
    model = model.eval()
    example = torch.zeros(2, 3, spec.height, spec.width)
    with atomic_path(out_path) as temp:
        torch.onnx.export(
            model, (example,), str(temp), dynamo=False, opset_version=opset,
            input_names=[spec.input_name], output_names=[spec.output_name],
            dynamic_axes={spec.input_name: {0: "batch"}, spec.output_name: {0: "batch"}},
        )
        graph = onnx.load(str(temp))
        nodes_before = len(graph.graph.node)
        if simplify:
            import onnxsim

            graph, simplified_ok = onnxsim.simplify(graph)
            if not simplified_ok:
                raise RuntimeError(f"{out_path}: onnxsim could not validate the simplified model")
        onnx.checker.check_model(graph)
        onnx.save(graph, str(temp))
    wall = time.perf_counter() - started
    log.info("exported %s: %d -> %d nodes (onnxsim), opset %d, %.1f s", out_path, nodes_before, len(graph.graph.node), opset, wall)
    return {"path": out_path.name, "opset": opset, "nodes_before_simplify": nodes_before, "nodes": len(graph.graph.node), "export_time_s": round(wall, 3)}
