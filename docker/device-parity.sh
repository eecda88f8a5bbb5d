#!/usr/bin/env bash
# Parity on this device (the Jetson image): TensorRT engines built here from the run's ONNX export, gated against
# the run's PyTorch embeddings like every backend; writes RUN_DIR/devices/parity/<name>.json (the parity schema).
# Needs torch in the image (build it with TORCH_INDEX_URL; the TensorRT runner needs torch anyway).
#   docker run --runtime nvidia -v $PWD/runs/default:/run --entrypoint docker/device-parity.sh face-distill:jetson /run
set -euo pipefail
usage="usage: device-parity.sh RUN_DIR [PROFILE] [python -m app.device_parity here options]"
run_dir=${1:?$usage}
profile=${2:-default}
shift $(( $# >= 2 ? 2 : 1 ))
exec python3 -m app.device_parity --run-dir "$run_dir" --profile "$profile" here --formats tensorrt "$@"
