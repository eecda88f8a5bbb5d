"""`python -m pipeline evaluate TARGET ... --bin FILE [--pairs FILE --image-root DIR]`: score anything on any set.

Why: users compare models on their own verification sets (CFP-FP, AgeDB-30, their own pairs) without editing a
profile and rerunning the pipeline. A TARGET is a run folder (its teacher, both students and every export the
run made), a stage folder or saved model (`<stem>.json` + `<stem>.safetensors`), an exported file (`.onnx`,
`.ncnn.param`, `.mlpackage`) or an outside checkpoint with `--model NAME` (e.g. EdgeFace's `edgeface_xs_q.pt`).
Every one is scored with the evaluate stage's protocol (`pipeline.evaluation.verification`: 10-fold accuracy at
thresholds chosen on the other folds, TAR@FAR, AUC), printed as one table and written as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploy.runners.base import Runner
from pipeline.artifacts import write_json_atomic
from pipeline.data.arrays import VerificationPairs
from pipeline.errors import ConfigError, DataError
from pipeline.evaluation.verification import evaluate_verification
from pipeline.preprocess import PreprocessSpec
from pipeline.run_layout import EXPORTS_FILE, MODEL_MANIFEST, RunLayout, read_export_records

log = logging.getLogger(__name__)
RUN_MODEL_FOLDERS = ("teacher", "baseline", "distill", "pareto")


@dataclass(frozen=True)
class Candidate:
    """One thing to score: how to open its runner, or why it cannot run here."""

    label: str
    backend: str
    precision: str
    open_runner: Callable[[], Runner] | None
    skip_reason: str = ""


def add_evaluate_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("evaluate", help="score run folders, saved models and exported files on verification sets",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="+", type=Path, metavar="TARGET", help="run folder, stage folder, saved model or exported file")
    parser.add_argument("--bin", dest="bins", action="append", default=[], type=Path, metavar="FILE", help="an insightface .bin set (repeatable)")
    parser.add_argument("--pairs", action="append", default=[], type=Path, metavar="FILE", help="an LFW-style pairs.txt (repeatable)")
    parser.add_argument("--image-root", action="append", default=[], type=Path, metavar="DIR",
                        help="the image folder of each --pairs, in the same order")
    parser.add_argument("--model", help="registered model name for an outside checkpoint (e.g. edgeface_xs)")
    parser.add_argument("--native", action="append", default=[], metavar="TARGET",
                        help="also run ncnn exports through the project's C++ tool: host, arm64:max, ... (builds it on first use)")
    parser.add_argument("--flip", action="store_true", help="score the sum of each face's and its mirror's embeddings")
    parser.add_argument("--threads", type=int, default=None, help="threads per runner (default: every usable core)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--json", type=Path, default=Path("evaluation.json"), help="where the results go (default: evaluation.json)")


def run_evaluate(args: argparse.Namespace) -> int:
    import os

    if not args.bins and not args.pairs:
        raise ConfigError("evaluate: give at least one verification set (--bin FILE, or --pairs FILE --image-root DIR)")
    if len(args.pairs) != len(args.image_root):
        raise ConfigError(f"evaluate: {len(args.pairs)} --pairs but {len(args.image_root)} --image-root; give one folder per pairs file")
    threads = args.threads or len(os.sched_getaffinity(0))
    candidates = [c for target in args.targets for c in candidates_for(target, args.model, threads, args.native)]
    sets = load_sets(args.bins, list(zip(args.pairs, args.image_root)), args.image_size)
    results = []
    for candidate in candidates:
        for pairs in sets:
            results.append(score(candidate, pairs, args.batch_size, args.flip))
    print_table(results)
    write_json_atomic(args.json, {"flip": args.flip, "sets": {p.name: p.num_pairs for p in sets}, "results": results})
    print(f"\nResults: {args.json.resolve()}")
    return 0


def load_sets(bins: list[Path], pairs_files: list[tuple[Path, Path]], image_size: int) -> list[VerificationPairs]:
    from pipeline.data.binset import load_bin
    from pipeline.data.pairs_txt import load_pairs_txt

    size = (image_size, image_size)
    sets = [VerificationPairs(*_images_issame(load_bin(path, size=size)), path.stem) for path in bins]
    sets += [VerificationPairs(*_images_issame(load_pairs_txt(path, root, size=size)), path.stem) for path, root in pairs_files]
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        sets = [VerificationPairs(s.images, s.issame, f"{s.name}#{i}") for i, s in enumerate(sets)]
    return sets


def _images_issame(pairs: VerificationPairs) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(pairs.images), np.asarray(pairs.issame)


def score(candidate: Candidate, pairs: VerificationPairs, batch_size: int, flip: bool) -> dict:
    row = {"model": candidate.label, "backend": candidate.backend, "precision": candidate.precision, "set": pairs.name,
           "pairs": pairs.num_pairs}
    if candidate.open_runner is None:
        return {**row, "status": "skipped", "reason": candidate.skip_reason}
    with candidate.open_runner() as runner:
        embeddings = runner.embed(pairs.images, batch_size=batch_size, progress=True)
        if flip:
            embeddings = embeddings + runner.embed(np.ascontiguousarray(pairs.images[:, :, ::-1]), batch_size=batch_size, progress=True)
    result = evaluate_verification(embeddings, pairs.issame)
    log.info("evaluate %s [%s/%s] on %s: %.2f%%", candidate.label, candidate.backend, candidate.precision, pairs.name, 100 * result.accuracy)
    return {**row, "status": "scored", "accuracy": result.accuracy, "accuracy_std": result.accuracy_std,
            "tar_at_far": result.tar_at_far, "auc": result.auc, "best_threshold": result.best_threshold}


def print_table(results: list[dict]) -> None:
    print("\n| model | backend/precision | set | accuracy % | TAR@FAR=1e-3 % | AUC |\n|---|---|---|---|---|---|")
    for r in results:
        if r["status"] != "scored":
            cells = [f"skipped: {r['reason']}", "—", "—"]
        else:
            tar = r["tar_at_far"].get("1e-3")
            cells = [f"{100 * r['accuracy']:.2f} ± {100 * r['accuracy_std']:.2f}", "—" if tar is None else f"{100 * tar:.2f}", f"{r['auc']:.4f}"]
        print(f"| {r['model']} | {r['backend']}/{r['precision']} | {r['set']} | " + " | ".join(cells) + " |")


def candidates_for(target: Path, model_name: str | None, threads: int, native: list[str]) -> list[Candidate]:
    """Everything `target` names that can be scored (see the module docstring for what a target may be)."""
    if not target.exists():
        raise DataError(target, "does not exist")
    if target.is_dir() and target.suffix != ".mlpackage":
        if any((target / name).is_dir() for name in RUN_MODEL_FOLDERS + ("export",)):
            folders = [target / name for name in RUN_MODEL_FOLDERS if (target / name).is_dir()]
            folders += sorted(p for p in (target / "pareto").glob("*") if p.is_dir())  # one folder per Pareto student
            found = [c for folder in folders for c in saved_model_candidates(folder, threads)]
            if RunLayout(target).exports_file.is_file():
                found += export_candidates(target / "export", threads, native)
        elif (target / EXPORTS_FILE).is_file():
            found = export_candidates(target, threads, native)
        else:
            found = saved_model_candidates(target, threads)
        if not found:
            raise DataError(target, f"holds no saved model (<stem>.json + <stem>.safetensors) and no {EXPORTS_FILE}")
        return found
    return [file_candidate(target, model_name, threads, native)]


def saved_model_candidates(folder: Path, threads: int) -> list[Candidate]:
    """Every `<stem>.json` naming a registered model with its `<stem>.safetensors` beside it."""
    found = []
    for spec_path in sorted(folder.glob("*.json")):
        try:
            described = json.loads(spec_path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(described, dict) and "model" in described and spec_path.with_suffix(".safetensors").is_file():
            label = spec_path.stem if folder.parent.name != "pareto" else folder.name
            found.append(Candidate(label, "pytorch", "fp32", lambda folder=folder, stem=spec_path.stem: _torch_runner_of_saved(folder, stem, threads)))
    return found


def _torch_runner_of_saved(folder: Path, stem: str, threads: int) -> Runner:
    from deploy.runners.torch_runner import TorchRunner
    from pipeline.models.saved import load_model

    model = load_model(folder, stem)
    return TorchRunner(model, PreprocessSpec(embedding_dim=model.embedding_dim), threads=threads)


def export_candidates(export_dir: Path, threads: int, native: list[str]) -> list[Candidate]:
    """One candidate per exported record (skipped ones say why), plus the native tool's rows for ncnn."""
    from deploy.formats import get_format

    records = read_export_records(export_dir)
    spec = _spec_beside(export_dir)
    found = []
    for record in records:
        label = f"student [{record['format']}/{record['precision']}]"
        if record.get("status") != "exported":
            found.append(Candidate(label, record["format"], record["precision"], None, f"export {record.get('status')}: {record.get('reason', record.get('error', ''))}"))
            continue
        export_format = get_format(record["format"])
        runnable, why_not = export_format.runnable_here()
        opener = (lambda f=export_format, r=record: f.make_runner(export_dir, r, spec, threads)) if runnable else None
        found.append(Candidate(label, record["format"], record["precision"], opener, why_not))
        if record["format"] == "ncnn":
            found += [_native_candidate(label, target, export_dir / record["files"][0], export_dir / record["files"][1], spec,
                                        record["precision"], threads) for target in native]
    return found


def _native_candidate(label: str, target: str, param: Path, weights: Path, spec: PreprocessSpec, precision: str, threads: int) -> Candidate:
    def open_runner() -> Runner:
        from deploy.native.tool_host import open_local_host
        from deploy.runners.ncnn_native_runner import NativeNcnnRunner

        host, _ = open_local_host(target)
        return NativeNcnnRunner(host, param, weights, spec, precision, threads)

    return Candidate(label, f"ncnn-native:{target}", precision, open_runner)


def _spec_beside(folder: Path) -> PreprocessSpec:
    """The preprocessing manifest the export stage wrote beside the exports; the training default where none is."""
    manifest = folder / MODEL_MANIFEST
    if manifest.is_file():
        return PreprocessSpec.load(manifest)
    log.warning("%s: no %s beside the model; assuming the pipeline's preprocessing (RGB, (pixel - 127.5) / 127.5)", folder, MODEL_MANIFEST)
    return PreprocessSpec()


def file_candidate(path: Path, model_name: str | None, threads: int, native: list[str]) -> Candidate:
    """One file: an exported model by its suffix, a saved model, or an outside checkpoint (`--model NAME`)."""
    from deploy.formats import get_format

    name = path.name
    spec = _spec_beside(path.parent) if not name.endswith((".pt", ".pth", ".safetensors")) else PreprocessSpec()
    if name.endswith(".onnx"):
        record = {"format": "onnx", "precision": "int8" if "int8" in name else "fp32", "files": [name]}
    elif name.endswith(".param"):
        weights = path.with_suffix(".bin")
        if not weights.is_file():
            raise DataError(path, f"ncnn weights {weights.name} not found beside the param file")
        precision = next((p for p in ("int8", "fp16") if p in name), "fp32")
        record = {"format": "ncnn", "precision": precision, "files": [name, weights.name]}
        if native:
            return _native_candidate(name, native[0], path, weights, spec, precision, threads)
    elif path.suffix == ".mlpackage":
        record = {"format": "coreml", "precision": "fp16" if "fp16" in name else "fp32", "files": [name]}
    elif path.suffix == ".safetensors" and path.with_suffix(".json").is_file() and model_name is None:
        return Candidate(path.stem, "pytorch", "fp32", lambda: _torch_runner_of_saved(path.parent, path.stem, threads))
    elif path.suffix in (".pt", ".pth", ".safetensors"):
        if model_name is None:
            raise ConfigError(f"{path}: an outside checkpoint needs --model NAME (a registered model, e.g. edgeface_xs)")
        return Candidate(f"{path.name} ({model_name})", "pytorch", "fp32", lambda: _torch_runner_of_checkpoint(path, model_name, threads))
    else:
        raise DataError(path, "not a model this command knows (.onnx, .ncnn.param, .mlpackage, a saved model or a checkpoint with --model)")
    export_format = get_format(record["format"])
    runnable, why_not = export_format.runnable_here()
    opener = (lambda: export_format.make_runner(path.parent, record, spec, threads)) if runnable else None
    return Candidate(name, record["format"], record["precision"], opener, why_not)


def _torch_runner_of_checkpoint(path: Path, model_name: str, threads: int) -> Runner:
    from deploy.runners.torch_runner import TorchRunner
    from pipeline.distill.checkpoint import load_module_weights
    from pipeline.models.registry import create_model
    from pipeline.models.saved import load_external_weights

    model = create_model(model_name)
    load_module_weights(model, load_external_weights(path), path)
    return TorchRunner(model.eval(), PreprocessSpec(embedding_dim=model.embedding_dim), threads=threads)
