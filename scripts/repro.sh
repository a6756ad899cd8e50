#!/usr/bin/env bash
# Run the pipeline (dvc repro) with the package's environment on PATH; arguments go to dvc repro.
# On an x86-64 CPU with AVX2 and FMA, the CPU code paths are pinned (PINNED_CPU_ENV in
# g2rl_core/provenance.py) before any stage loads torch; elsewhere (no AVX2: torch would die of an
# illegal instruction; ARM: no MKL) the stages run unpinned, and their run_info.json says so.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" TOKENIZERS_PARALLELISM=false HF_HUB_DISABLE_PROGRESS_BARS=1
if [ "$(uname -m)" = x86_64 ] && grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo; then
  pins=$(python -m g2rl_core.provenance)
  eval "$pins"
else
  echo "scripts/repro.sh: no AVX2/FMA on this CPU: running with the CPU's own code paths (other bits)" >&2
fi
start=$(date +%s)
dvc repro "$@"
echo "dvc repro: $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s in all" >&2
