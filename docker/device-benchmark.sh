#!/usr/bin/env bash
# Time every export in EXPORT_DIR that runs on this device and write the latency JSON (schema: benchmarks/latency.py).
# A TensorRT engine only loads on the GPU and TensorRT that built it, so EXPORT_DIR's engines (built on the host, if
# at all) are never timed: first `python3 -m deploy.export.tensorrt_export` builds each TensorRT export's engine here
# from the run's ONNX export into <OUT_JSON's folder>/device-export (EXPORT_DIR's other files linked, exports.json
# rewritten; where TensorRT, a GPU or torch is missing, those rows say so), then that folder is timed. Where TensorRT's
# trtexec exists (JetPack: /usr/src/tensorrt/bin/trtexec, or $TRTEXEC) it also builds fp32/fp16 engines from the ONNX
# export into <OUT_JSON's folder>/engines and times them. The result names EXPORT_DIR's export records (exports_digest),
# so the run's report can tell these times from those of an earlier export.
set -euo pipefail
usage="usage: device-benchmark.sh EXPORT_DIR OUT_JSON [python -m benchmarks.latency options]"
export_dir=${1:?$usage}
out=${2:?$usage}
shift 2
here="$(dirname "$out")/device-export"
python3 -m deploy.export.tensorrt_export "$export_dir" --out "$here"
exec python3 -m benchmarks.latency "$here" --out "$out" --run-exports "$export_dir" "$@"
