#!/usr/bin/env bash
# Run the pipeline (dvc repro) with the package's environment on PATH; arguments go to dvc repro.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" TOKENIZERS_PARALLELISM=false HF_HUB_DISABLE_PROGRESS_BARS=1
exec dvc repro "$@"
