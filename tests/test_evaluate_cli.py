"""`python -m pipeline evaluate`: a run folder, saved models and exported files scored on any .bin / pairs.txt set with
the evaluate stage's protocol: same images in, same accuracy out; what cannot run here says why."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from app.cli import main
from pipeline.data.store import load_verification_sets
from tests.conftest import read_json


def write_bin(path: Path, images: np.ndarray, issame: np.ndarray) -> Path:
    """An insightface .bin of lossless PNGs (RGB faces stored as BGR files, as insightface's are)."""
    encoded = [cv2.imencode(".png", image[:, :, ::-1])[1].tobytes() for image in images]
    path.write_bytes(pickle.dumps((encoded, [bool(flag) for flag in issame]), protocol=4))
    return path


def write_pairs_txt(folder: Path, images: np.ndarray, issame: np.ndarray) -> tuple[Path, Path]:
    """An LFW-style pairs.txt over <root>/<name>/<name>_NNNN.jpg: each pair's faces filed under one or two names."""
    root = folder / "images"
    lines = [f"1\t{len(issame)}"]
    for pair, same in enumerate(issame):
        first, second = f"p{pair}a", f"p{pair}b"
        names = [(first, 1), (first, 2)] if same else [(first, 1), (second, 1)]
        for (name, number), image in zip(names, images[2 * pair : 2 * pair + 2]):
            (root / name).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / name / f"{name}_{number:04d}.jpg"), image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 98])
        lines.append(f"{first}\t1\t2" if same else f"{first}\t1\t{second}\t1")
    (folder / "pairs.txt").write_text("\n".join(lines) + "\n")
    return folder / "pairs.txt", root


def test_run_folder_scores_as_the_evaluate_stage_did(tiny_run: dict, tmp_path, capsys):
    run_dir = tiny_run["run_dir"]
    pairs = load_verification_sets(run_dir / "data")[0]
    bin_path = write_bin(tmp_path / "same_pairs.bin", np.asarray(pairs.images), pairs.issame)
    out = tmp_path / "evaluation.json"
    assert main(["evaluate", str(run_dir), "--bin", str(bin_path), "--json", str(out), "--threads", "1"]) == 0
    results = json.loads(out.read_text())["results"]
    metrics = read_json(run_dir / "evaluate" / "metrics.json")[pairs.name]
    by_model = {r["model"]: r for r in results if r["backend"] == "pytorch"}
    for stem in ("teacher", "student_nokd", "student"):
        assert by_model[stem]["accuracy"] == pytest.approx(metrics[stem]["accuracy"], abs=1e-9), stem
    exports = {(r["backend"], r["precision"]): r for r in results if r["backend"] != "pytorch"}
    assert exports[("onnx", "fp32")]["status"] == "scored"
    assert exports[("onnx", "fp32")]["accuracy"] == pytest.approx(metrics["student"]["accuracy"], abs=0.02)
    assert exports[("coreml", "fp32")]["status"] == "skipped" and "macOS" in exports[("coreml", "fp32")]["reason"]
    printed = capsys.readouterr().out
    assert "| student | pytorch/fp32 | same_pairs |" in printed and f"Results: {out.resolve()}" in printed


def test_exported_file_and_pairs_txt(tiny_run: dict, tmp_path):
    run_dir = tiny_run["run_dir"]
    pairs = load_verification_sets(run_dir / "data")[0]
    pairs_path, root = write_pairs_txt(tmp_path, np.asarray(pairs.images), pairs.issame)
    out = tmp_path / "evaluation.json"
    onnx = run_dir / "export" / "student_fp32.onnx"
    param = run_dir / "export" / "student_fp32.ncnn.param"
    saved = run_dir / "distill" / "student.safetensors"
    assert main(["evaluate", str(onnx), str(param), str(saved), "--pairs", str(pairs_path), "--image-root", str(root),
                 "--json", str(out), "--flip", "--threads", "1"]) == 0
    document = json.loads(out.read_text())
    assert document["flip"] is True and document["sets"] == {"pairs": len(pairs.issame)}
    scored = {r["backend"]: r for r in document["results"]}
    assert set(scored) == {"onnx", "ncnn", "pytorch"} and all(r["status"] == "scored" for r in scored.values())
    assert scored["onnx"]["accuracy"] == pytest.approx(scored["pytorch"]["accuracy"], abs=0.03)


def test_bad_targets_are_one_line(tmp_path, capsys):
    bin_path = tmp_path / "x.bin"
    bin_path.write_bytes(b"")
    assert main(["evaluate", str(tmp_path / "missing.onnx"), "--bin", str(bin_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing.onnx'}: does not exist"
    checkpoint = tmp_path / "weights.pt"
    checkpoint.write_bytes(b"")
    assert main(["evaluate", str(checkpoint), "--bin", str(bin_path)]) == 2
    assert "needs --model NAME" in capsys.readouterr().err
    assert main(["evaluate", str(checkpoint)]) == 2
    assert "give at least one verification set" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["evaluate", str(empty), "--bin", str(bin_path)]) == 2
    assert capsys.readouterr().err.strip().endswith("and no exports.json")  # the file's name, not a placeholder
