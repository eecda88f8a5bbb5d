"""Stage `native_parity`: the ncnn export through the project's C++ tool, on x86 and on ncnn's ARM kernels (emulated).

The Python binding is not what a phone runs. This stage runs deploy/native/face_embed, built against libncnn from
ncnn's sources, for each `native_parity.targets` entry: "host" (this machine) and "arm64:<cpu>" (the aarch64 build
under qemu-aarch64 -cpu <cpu>). The emulator computes the ARM kernels' real numbers (NEON, fp16 arithmetic,
dot-product int8), so the same numeric and accuracy gates apply; its timing is not latency and is not recorded.
Each target's row names the CPU features ncnn detected there and the kernel variants the build compiled in.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor

from deploy.localize import ncnn_layer_outputs
from deploy.native.tool_host import LocalHost, open_local_host
from deploy.parity import ParityResult
from deploy.parity_run import RunnerChoice, localise_failure, parity_for_record, subset_and_reference
from deploy.parity_run import parity_inputs
from deploy.runners.ncnn_native_runner import NativeNcnnRunner
from pipeline.preprocess import PreprocessSpec
from pipeline.run_layout import NATIVE_PARITY_FILE, read_export_records
from pipeline.stages.common import write_json
from pipeline.stages.runner import StageContext

log = logging.getLogger(__name__)


def native_runner_choice(host: LocalHost) -> RunnerChoice:
    """Parity's runner for an ncnn export record on `host`, with layer outputs for localisation from the same tool."""

    def make_runner(folder, record, spec: PreprocessSpec, threads: int) -> NativeNcnnRunner:
        param, weights = record["files"]
        return NativeNcnnRunner(host, folder / param, folder / weights, spec, record["precision"], threads)

    def layer_outputs(folder, record, spec: PreprocessSpec, batch):
        param, weights = record["files"]
        return ncnn_layer_outputs(folder / param, folder / weights, spec, record["precision"], batch,
                                  runner=make_runner(folder, record, spec, 1))

    return RunnerChoice(host.label, make_runner, layer_outputs)


def run_native_parity_stage(context: StageContext) -> None:
    settings = context.config.native_parity
    export_dir = context.input_dir("export")
    records = [r for r in read_export_records(export_dir)
               if r["format"] == "ncnn" and r["status"] == "exported" and r["precision"] in settings.precisions]
    payload: dict = {"verification_set": None, "targets": [], "results": []}
    if not settings.targets or not records:
        why = "no native_parity.targets" if not settings.targets else "no exported ncnn model at the configured precisions"
        log.info("native parity: nothing to do (%s)", why)
        context.summary["native_parity"] = f"skipped: {why}"
        write_json(context.out_dir, NATIVE_PARITY_FILE, payload | {"skipped": why})
        return
    spec, pairs, reference, student = parity_inputs(context.run_dir)
    subset, subset_reference = subset_and_reference(pairs, reference, settings.max_images)
    hosts = []
    for entry in settings.targets:  # builds (cached) one target at a time: each build already uses every core
        host, build_facts = open_local_host(entry)
        features = host.cpu_features()
        log.info("native parity on %s: ncnn detects %s", host.label, features)
        hosts.append(host)
        payload["targets"].append({"entry": entry, "label": host.label, "device": host.device, "cpu_features": features,
                                   "build": build_facts})
    # Emulation is slow and single-threaded (qemu-user gains nothing from ncnn's threads): rows run side by side, one
    # per core, without localisation; a failing row is localised afterwards, one at a time.
    parity = context.config.parity.model_copy(update={"max_images": settings.max_images, "localize": False})
    jobs = [(entry, host, target, record) for entry, host, target in zip(settings.targets, hosts, payload["targets"]) for record in records]

    def run_row(job) -> ParityResult:
        entry, host, target, record = job
        return parity_for_record(export_dir, record, spec, subset, subset_reference, parity, settings.threads, None,
                                 runner=native_runner_choice(host))

    workers = settings.workers or os.cpu_count() or 1
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(run_row, jobs))
        for (entry, host, target, record), result in zip(jobs, results):
            gate = parity.gates[record["precision"]]
            if context.config.parity.localize and result.cosine_min is not None and result.cosine_min < gate.min_cosine:
                localise_failure(result, native_runner_choice(host), export_dir, record, spec, subset, gate, student)
            result.details.update({"target": entry, "cpu_features": target["cpu_features"], "device": host.device,
                                   "timing": "not recorded: emulated time is not latency" if host.kind == "emulated" else "see benchmark"})
    finally:
        for host in hosts:
            host.close()
    payload["results"] = [r.to_dict() for r in results]
    write_json(context.out_dir, NATIVE_PARITY_FILE, payload)
    context.summary["native_parity"] = {r.label: r.status for r in results}
