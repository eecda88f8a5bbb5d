"""Training checkpoints as safetensors (tensors) + JSON (everything else): loading one never runs code.

The JSON part travels inside the safetensors header too, so one atomic rename commits a whole checkpoint: a
kill between two file writes can never pair new tensors with an old step count. state.json is a readable copy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from pipeline.artifacts import write_json_atomic, write_safetensors_atomic
from pipeline.errors import DataError

TENSORS_FILE = "state.safetensors"
META_FILE = "state.json"


def flatten_state(prefix: str, state: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Move every tensor of a nested dict/list into `tensors` under a dotted key; return the JSON-able rest."""
    if isinstance(state, torch.Tensor):
        tensors[prefix] = state.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(state, dict):
        return {"__dict__": [[_json_key(k), flatten_state(f"{prefix}.{k}", v, tensors)] for k, v in state.items()]}
    if isinstance(state, (list, tuple)):
        return [flatten_state(f"{prefix}.{i}", v, tensors) for i, v in enumerate(state)]
    return state


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict) and "__tensor__" in skeleton:
        return tensors[skeleton["__tensor__"]]
    if isinstance(skeleton, dict) and "__dict__" in skeleton:
        return {_python_key(k): unflatten_state(v, tensors) for k, v in skeleton["__dict__"]}
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


def _json_key(key: Any) -> Any:
    return {"int": key} if isinstance(key, int) else key


def _python_key(key: Any) -> Any:
    return key["int"] if isinstance(key, dict) else key


def save_checkpoint(folder: Path, state: dict[str, Any]) -> None:
    """Write the tensors with the JSON skeleton in their header (one atomic file), then the readable state.json."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten_state("state", state, tensors)
    write_safetensors_atomic(folder / TENSORS_FILE, tensors,
                             metadata={"step": str(state.get("global_step", "")), "skeleton": json.dumps(skeleton)})
    write_json_atomic(folder / META_FILE, {"skeleton": skeleton, "step": state.get("global_step")})


def load_checkpoint(folder: Path) -> dict[str, Any] | None:
    """The last complete checkpoint in `folder`, or None when there is none."""
    tensor_path = folder / TENSORS_FILE
    if not tensor_path.is_file():
        return None
    try:
        with safe_open(str(tensor_path), framework="pt") as stored:
            skeleton = json.loads((stored.metadata() or {})["skeleton"])
        tensors = load_file(str(tensor_path))
        return unflatten_state(skeleton, tensors)
    except Exception as exc:  # safetensors, json and a mangled skeleton raise several unrelated types
        raise DataError(tensor_path, f"checkpoint unreadable ({exc.__class__.__name__}: {str(exc)[:200]}); delete {folder} to start over") from exc


def load_module_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor], source: str | Path) -> None:
    """Strict load that names the missing, unexpected and mis-shaped keys instead of a bare RuntimeError."""
    own = module.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    mis_shaped = [f"{k}: file {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}" for k in own if k in weights and weights[k].shape != own[k].shape]
    if missing or unexpected or mis_shaped:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {', '.join(unexpected[:3])})")
        if mis_shaped:
            parts.append(f"shape mismatch ({'; '.join(mis_shaped[:3])})")
        raise DataError(source, "weights do not fit the model: " + ", ".join(parts))
    module.load_state_dict(weights)
