"""Stage `evaluate`: verification accuracy, TAR@FAR and ROC of teacher and students on every verification set.

The student's embeddings are kept: they are the PyTorch reference that every backend's parity compares against.
"""

from __future__ import annotations

import logging

import numpy as np

from deploy.runners.torch_runner import TorchRunner
from pipeline.data.store import load_verification_sets, save_array
from pipeline.evaluation.verification import evaluate_verification
from pipeline.models.saved import load_model
from pipeline.run_layout import METRICS_FILE, reference_embeddings_name
from pipeline.stages.common import run_preprocess_spec, write_json
from pipeline.stages.runner import StageContext

log = logging.getLogger(__name__)

EVALUATED_MODELS = (("teacher", "teacher", "teacher"), ("student_nokd", "baseline", "student_nokd"), ("student", "distill", "student"))


def run_evaluate_stage(context: StageContext) -> None:
    verification_sets = load_verification_sets(context.input_dir("data"))
    metrics: dict[str, dict] = {}
    for label, stage, stem in EVALUATED_MODELS:
        if label == "student_nokd" and not context.config.distill.train_baseline:
            continue
        model = load_model(context.input_dir(stage), stem)
        runner = TorchRunner(model, run_preprocess_spec(context.config, model.embedding_dim))
        for pairs in verification_sets:
            embeddings = runner.embed(np.asarray(pairs.images), batch_size=64, progress=True)
            result = evaluate_verification(embeddings, pairs.issame)
            metrics.setdefault(pairs.name, {})[label] = result.to_dict()
            log.info("evaluate %s on %s: accuracy %.2f%% ± %.2f, AUC %.4f", label, pairs.name, 100 * result.accuracy, 100 * result.accuracy_std, result.auc)
            if label == "student":
                save_array(context.out_dir / reference_embeddings_name(pairs.name), embeddings)
    write_json(context.out_dir, METRICS_FILE, metrics)
    context.summary["accuracy"] = {name: {label: round(100 * m["accuracy"], 2) for label, m in per_model.items()} for name, per_model in metrics.items()}
