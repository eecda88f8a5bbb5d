#!/usr/bin/env bash
# Time every export in EXPORT_DIR that runs on this device and write the latency JSON (schema: benchmarks/latency.py).
# Where TensorRT's trtexec exists (JetPack: /usr/src/tensorrt/bin/trtexec, or $TRTEXEC) it also builds fp32/fp16
# engines from the ONNX export into <OUT_JSON's folder>/engines and times them.
set -euo pipefail
usage="usage: device-benchmark.sh EXPORT_DIR OUT_JSON [python -m benchmarks.latency options]"
export_dir=${1:?$usage}
out=${2:?$usage}
shift 2
exec python3 -m benchmarks.latency "$export_dir" --out "$out" "$@"
