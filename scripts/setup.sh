#!/usr/bin/env bash
# Create .venv (Python >= 3.11) and install g2rl_core with the given extras, pinned.
#   bash scripts/setup.sh            # the library and the pipeline
#   bash scripts/setup.sh test       # ... plus the test tools
# On a CPU-only machine without a local torch wheel, set
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
# first, or pip takes the multi-GB CUDA build of torch==2.13.0.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3}"
"$python" -c 'import sys; assert sys.version_info >= (3, 11), f"Python >= 3.11 needed, found {sys.version}"'
[ -x .venv/bin/python ] || "$python" -m venv .venv
spec="."
[ -n "$extras" ] && spec=".[$extras]"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec"
echo "g2rl_core installed in .venv (extras: ${extras:-none})"
