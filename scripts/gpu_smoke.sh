#!/usr/bin/env bash
# GPU smoke test of the native trainer at Table 3 shapes, no hub needed (benchmarks/gpu_smoke.py):
# a random-initialised Qwen3-1.7B-shaped model, 2 training steps of 16 x 16 responses forced to ~8k
# tokens, bf16, gradient checkpointing, vLLM rollouts asleep during the update when vLLM is installed.
# Prints peak GPU memory, generation and training tokens/s, step time and Phi's share of the old-policy pass.
#
#   bash scripts/gpu_smoke.sh [--workdir DIR] [--steps 2] [--response-length 8000]   # one GPU, < 10 min (target)
#   bash scripts/gpu_smoke.sh --tiny --workdir /tmp/smoke                             # the same logic on CPU
#
# Status: the --tiny mode is run by tests/test_gpu_path.py; the GPU mode has NOT been run yet.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
args=("$@")
if [[ " $* " != *" --workdir "* ]]; then
  args+=(--workdir "$(mktemp -d)")
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec timeout 900 "$PYTHON" benchmarks/gpu_smoke.py "${args[@]}"
