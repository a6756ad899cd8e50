#!/usr/bin/env bash
# A separate environment, .venv-verl, for the verl adapter's CPU tests: verl==0.9.1 pins
# transformers < 5.11, below our main environment's 5.19.0.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
[ -x .venv-verl/bin/python ] || "$python" -m venv .venv-verl
pip=(.venv-verl/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" "torch==2.13.0" "verl==0.9.1" "transformers==5.10.2"
"${pip[@]}" --no-deps -e .
# cachetools, uvicorn, fastapi: imported by verl.trainer.ppo.ray_trainer but missing from verl's metadata
"${pip[@]}" "math-verify[antlr4_9_3]==0.9.0" "pytest==9.2.0" "hypothesis==6.155.2" \
  "cachetools==7.0.5" "uvicorn==0.54.0" "fastapi==0.165.0"
echo "verl environment ready in .venv-verl"
