#!/usr/bin/env bash
# Create .venv (Python >= 3.11) and install g2rl_core for the pipeline, at the exact versions of
# requirements/lock.txt (used as pip constraints).
#   bash scripts/setup.sh            # library + pipeline (dvc, dvclive, papermill) + notebooks (jupyterlab)
#                                    #   + trl + evol (sentence-transformers): everything `dvc repro` and the README use
#   bash scripts/setup.sh test       # ... plus the test tools (pytest, hypothesis, ruff, trackio, offline MiniLM)
#   G2RL_UNLOCKED=1 bash scripts/setup.sh   # the newest versions pyproject.toml's ranges allow (no lock)
# A library user needs none of this: `pip install .` installs only the core (see pyproject.toml).
# On a CPU-only machine without a local torch wheel, set
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
# first, or pip takes the multi-GB CUDA build of torch==2.13.0.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="pipeline,notebooks,trl,evol"
[ -n "${1:-}" ] && extras="$extras,$1"
python="${PYTHON:-python3}"
"$python" -c 'import sys; assert sys.version_info >= (3, 11), f"Python >= 3.11 needed, found {sys.version}"'
[ -x .venv/bin/python ] || "$python" -m venv .venv
lock=(-c requirements/lock.txt)
[ "${G2RL_UNLOCKED:-0}" = "1" ] && lock=()
.venv/bin/python -m pip install --quiet --disable-pip-version-check "${lock[@]}" -e ".[$extras]"
echo "g2rl_core installed in .venv (extras: $extras${lock[*]:+, versions from requirements/lock.txt})"
