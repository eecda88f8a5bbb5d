"""Training checkpoints as safetensors (tensors) + JSON (everything else): loading one never runs code.

The JSON part travels inside the safetensors header too, so one atomic rename commits a whole checkpoint: a
kill between two file writes can never pair new tensors with an old step count. state.json is a readable copy.

The header also holds a sha256 of every tensor, checked before a resume: bits flipped on disk would otherwise be
trained on, promoted to the stage's model and exported. Each save keeps the checkpoint it replaces as
state.prev.safetensors, so a damaged newest one falls back to the one before it rather than to step 0.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from pipeline.artifacts import write_json_atomic, write_safetensors_atomic
from pipeline.errors import DataError

log = logging.getLogger(__name__)
TENSORS_FILE = "state.safetensors"
PREVIOUS_FILE = "state.prev.safetensors"
META_FILE = "state.json"
DIGEST_KEY = "tensors_sha256"


class CheckpointDamaged(DataError):
    """A checkpoint whose tensors no longer match the digest recorded when it was written."""


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


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over each tensor's name, dtype, shape and bytes, in name order (the layout of the file plays no part)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(folder: Path, state: dict[str, Any]) -> None:
    """Keep the current checkpoint as the previous one, write the tensors with the JSON skeleton and their digest in
    their header (one atomic file), then the readable state.json."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten_state("state", state, tensors)
    metadata = {"step": str(state.get("global_step", "")), "skeleton": json.dumps(skeleton), DIGEST_KEY: tensors_digest(tensors)}
    _keep_as_previous(folder / TENSORS_FILE, folder / PREVIOUS_FILE)
    write_safetensors_atomic(folder / TENSORS_FILE, tensors, metadata=metadata)
    write_json_atomic(folder / META_FILE, {"skeleton": skeleton, "step": state.get("global_step")})


def _keep_as_previous(current: Path, previous: Path) -> None:
    """Make `previous` the file `current` is now, without a moment where `current` is missing: a hard link (no copy)
    where the file system has them; the new checkpoint then replaces `current` by rename and the link keeps the old."""
    if not current.is_file():
        return
    staged = previous.with_name(f".{previous.name}.tmp")
    staged.unlink(missing_ok=True)
    try:
        os.link(current, staged)
    except OSError:
        shutil.copyfile(current, staged)
    os.replace(staged, previous)


def load_checkpoint(folder: Path) -> dict[str, Any] | None:
    """The checkpoint in `folder` (its newest), or None when there is none; raises `DataError` when it is unreadable
    and `CheckpointDamaged` when its tensors do not match their recorded digest."""
    tensor_path = folder / TENSORS_FILE
    return read_checkpoint(tensor_path) if tensor_path.is_file() else None


def read_checkpoint(tensor_path: Path) -> dict[str, Any]:
    """One checkpoint file's state, its tensors verified against their recorded digest (older files have none)."""
    try:
        with safe_open(str(tensor_path), framework="pt") as stored:
            metadata = stored.metadata() or {}
        skeleton = json.loads(metadata["skeleton"])
        tensors = load_file(str(tensor_path))
    except Exception as exc:  # safetensors, json and a mangled skeleton raise several unrelated types
        raise DataError(tensor_path, f"checkpoint unreadable ({exc.__class__.__name__}: {_one_line(exc)})") from exc
    recorded = metadata.get(DIGEST_KEY)
    if recorded is not None and recorded != tensors_digest(tensors):
        raise CheckpointDamaged(tensor_path, "its tensors do not match the sha256 recorded when it was written (damaged on disk)")
    try:
        return unflatten_state(skeleton, tensors)
    except Exception as exc:
        raise DataError(tensor_path, f"checkpoint unreadable ({exc.__class__.__name__}: {_one_line(exc)})") from exc


def resume_checkpoint(folder: Path, discard_bad: bool = True) -> dict[str, Any] | None:
    """The newest checkpoint in `folder` that reads back intact: the current one, else the previous one, else None.

    A damaged or unreadable one is deleted (`discard_bad`; under torchrun only rank 0 deletes) with one warning that
    names it and says what training does instead."""
    candidates = [path for path in (folder / TENSORS_FILE, folder / PREVIOUS_FILE) if path.is_file()]
    for index, path in enumerate(candidates):
        try:
            return read_checkpoint(path)
        except DataError as exc:
            fallback = (f"falling back to the previous checkpoint {candidates[index + 1].name}" if index + 1 < len(candidates)
                        else "no earlier checkpoint, so training starts from step 0")
            log.warning("%s: discarded: %s; %s", path, exc.problem, fallback)
            if discard_bad:
                path.unlink(missing_ok=True)
    return None


def _one_line(exc: BaseException) -> str:
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


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
