#!/usr/bin/env bash
# `dvc exp run -S profile=paper-smoke` (every stage of the paper profiles' pipeline at toy size, on CPU)
# in a scratch copy of this working tree, so that the repository's dvc.lock and outputs stay as they are.
# tests/test_paper_smoke.py runs it in CI. Needs .venv (scripts/setup.sh) and ../shared/data.
# G2RL_SMOKE_DIR=DIR keeps the copy in DIR (a rerun goes on from there); G2RL_SMOKE_SHARE_CACHE=1 lets the copy read and write this repository's DVC cache, so stages already
# run here (the tiny base) are restored instead of rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
shared=$(cd "$repo/.." && pwd)/shared/data
[ -d "$shared" ] || { echo "scripts/smoke_pipeline.sh: no benchmark data at $shared" >&2; exit 2; }
if [ -n "${G2RL_SMOKE_DIR:-}" ]; then  # a kept copy: a rerun goes on from the stages already run there
  scratch=$G2RL_SMOKE_DIR && mkdir -p "$scratch"
else
  scratch=$(mktemp -d "${TMPDIR:-/tmp}/g2rl-smoke.XXXXXX")
  trap 'rm -rf "$scratch"' EXIT
fi
git ls-files -co --exclude-standard -z | tar --null -T - -cf - | tar -xf - -C "$scratch"
ln -sfn "$repo/.venv" "$scratch/.venv"
cd "$scratch"
[ -d .git ] || git init -q
git add -A && git -c user.name=g2rl -c user.email=g2rl@localhost commit -qm "working tree" --allow-empty
if [ "${G2RL_SMOKE_SHARE_CACHE:-0}" = 1 ]; then .venv/bin/dvc cache dir --local "$repo/.dvc/cache"; fi
bash scripts/repro.sh exp run -S profile=paper-smoke -S "profiles.paper-smoke.train.data_dir=$shared"
# every table and figure of the profile, and the index that lists them
for f in table1_main_results.md table2_general_reasoning.md fig2_training_dynamics.png fig3_geometry.md \
         ablation_shaping.md phi_vs_gradient.md; do
  [ -s "results/paper-smoke/$f" ] || { echo "scripts/smoke_pipeline.sh: results/paper-smoke/$f missing" >&2; exit 1; }
done
grep -q "paper-smoke" results/README.md
.venv/bin/dvc exp show --no-pager --md > /dev/null
echo "scripts/smoke_pipeline.sh: dvc exp run of paper-smoke passed"
