"""Training checkpoints as safetensors (tensors) + JSON (everything else): loading one never runs code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pipeline.artifacts import atomic_path, write_json_atomic
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
    """Write tensors then metadata, each atomically; the metadata names the tensor file's step so a torn pair is detected."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten_state("state", state, tensors)
    with atomic_path(folder / TENSORS_FILE) as temp:
        save_file(tensors, str(temp), metadata={"step": str(state.get("global_step", ""))})
    write_json_atomic(folder / META_FILE, {"skeleton": skeleton, "step": state.get("global_step")})


def load_checkpoint(folder: Path) -> dict[str, Any] | None:
    """The last complete checkpoint in `folder`, or None when there is none."""
    meta_path, tensor_path = folder / META_FILE, folder / TENSORS_FILE
    if not (meta_path.is_file() and tensor_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        tensors = load_file(str(tensor_path))
    except (OSError, ValueError) as exc:
        raise DataError(folder, f"checkpoint unreadable ({exc}); delete it to start over") from exc
    return unflatten_state(meta["skeleton"], tensors)


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
