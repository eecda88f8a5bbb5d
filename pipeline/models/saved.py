"""Trained models on disk: weights in safetensors, the architecture (registry name + args) in JSON beside them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from pipeline.artifacts import sha256_file, write_json_atomic, write_safetensors_atomic
from pipeline.distill.checkpoint import load_module_weights
from pipeline.errors import DataError, PipelineError
from pipeline.models.registry import create_model


class NonFiniteWeightsError(PipelineError):
    """A model whose weights hold NaN or Inf: never written as a stage's result, so it is never exported."""


def non_finite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors in `state` that hold a NaN or an Inf."""
    return [name for name, tensor in state.items()
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]


def save_weights(path: Path, module: nn.Module) -> None:
    write_safetensors_atomic(path, {k: v.detach().contiguous() for k, v in module.state_dict().items()})


def save_model(folder: Path, stem: str, model: nn.Module, name: str, args: dict[str, Any]) -> None:
    """Write <stem>.safetensors and <stem>.json (how to rebuild it); a model with non-finite weights is refused."""
    bad = non_finite_tensors(model.state_dict())
    if bad:
        raise NonFiniteWeightsError(f"{stem} ({name}): {len(bad)} weight tensors hold NaN or Inf (e.g. {', '.join(bad[:3])}); "
                                    "refusing to save it as the stage's result")
    save_weights(folder / f"{stem}.safetensors", model)
    write_json_atomic(folder / f"{stem}.json", {"model": name, "model_args": args})


def load_model(folder: Path, stem: str) -> nn.Module:
    """Rebuild a saved model in eval mode."""
    spec_path = folder / f"{stem}.json"
    if not spec_path.is_file():
        raise DataError(spec_path, "model description missing")
    spec = json.loads(spec_path.read_text())
    model = create_model(spec["model"], **spec["model_args"])
    weights_path = folder / f"{stem}.safetensors"
    load_module_weights(model, load_file(str(weights_path)), weights_path)
    return model.eval()


def load_external_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint from outside: safetensors, or a torch file loaded with weights_only=True (never a bare pickle)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint file not found")
    try:
        if path.suffix == ".safetensors":
            loaded = load_file(str(path))
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a bad or unsafe file
        raise DataError(path, f"cannot load checkpoint safely ({exc.__class__.__name__}: {torch_load_refusal(exc)})") from exc
    for key in ("state_dict", "model", "trainable", "state_dict_backbone"):  # the last: arcface_torch checkpoint_gpu_*.pt
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if isinstance(loaded, dict):
        loaded = dequantize_packed_linears(loaded, path)
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise DataError(path, "checkpoint is not a mapping of parameter names to tensors")
    bad = non_finite_tensors(loaded)
    if bad:
        raise DataError(path, f"{len(bad)} weight tensors hold NaN or Inf (e.g. {', '.join(bad[:3])})")
    return loaded


def check_sha256(path: str | Path, expected: str) -> None:
    """Refuse a checkpoint whose sha256 is not the one the profile pins (a stale or swapped teacher teaches silently)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint file not found")
    actual = sha256_file(path)
    if actual != expected.lower():
        raise DataError(path, f"sha256 {actual[:16]}... is not teacher.checkpoint_sha256 {expected[:16]}...: rebuild it with "
                              "`make teacher-pretrain`, or pin the new file's hash (--set teacher.checkpoint_sha256=null skips the check)")


def torch_load_refusal(exc: BaseException) -> str:
    """torch.load's error as one line that keeps what matters: why it refused (the blocked global or opcode, its first
    sentence) and torch's warning that weights_only=False would run the file's code; history notes, allow-listing
    advice and links are left out."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    warning = re.search(r"Re-running `torch\.load` with `weights_only` set to `False`.*?trusted source\.", text, re.DOTALL)
    if not text.startswith("Weights only load failed") or warning is None:
        return "; ".join(line.strip() for line in text.splitlines() if line.strip())
    if "WeightsUnpickler error:" in text:
        cause = text.split("WeightsUnpickler error:", 1)[1]
    else:
        cause = re.sub(r"In PyTorch 2\.6.*?trusted source\.", "", text.removeprefix("Weights only load failed."), flags=re.DOTALL)
    cause = " ".join(cause.split("Check the documentation")[0].split())
    cause = cause.split(". ")[0].rstrip(".")
    return " ".join(["Weights only load failed:", *([f"{cause}."] if cause else []), " ".join(warning.group(0).split())])


_PACKED = "._packed_params._packed_params"
_PACKED_SIDE_KEYS = ("._packed_params.dtype", ".scale", ".zero_point")


def dequantize_packed_linears(state: dict, source: str | Path) -> dict:
    """A state dict whose Linears were quantised (`torch.ao.quantization.quantize_dynamic`, e.g. EdgeFace's `_q` files)
    -> float `<name>.weight` / `<name>.bias` for each, so the float model loads it; other entries pass unchanged."""
    packed = [key[: -len(_PACKED)] for key in state if key.endswith(_PACKED)]
    if not packed:
        return state
    side_keys = {prefix + suffix for prefix in packed for suffix in _PACKED_SIDE_KEYS}
    floats = {key: value for key, value in state.items() if not key.endswith(_PACKED) and key not in side_keys}
    for prefix in packed:
        value = state[prefix + _PACKED]
        if not (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], torch.Tensor) and value[0].is_quantized):
            raise DataError(source, f"{prefix}{_PACKED}: expected (quantised weight, bias), got {type(value).__name__}")
        weight, bias = value
        floats[f"{prefix}.weight"] = weight.dequantize()
        if bias is not None:
            floats[f"{prefix}.bias"] = bias.detach().float()
    return floats
