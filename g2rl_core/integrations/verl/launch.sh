#!/usr/bin/env bash
# Launch verl's PPO trainer with Table 3 for a paper profile and method, on a GPU cluster.
#   bash g2rl_core/integrations/verl/launch.sh paper-1.7b g2rl data/math_train.parquet data/aime25.parquet [extra overrides]
# Needs verl==0.9.1 and its GPU dependencies (see the README's verl section). The G2RL shaping
# hook and Phi capture are not yet wired into verl's Ray workers: for method g2rl this script
# stops with that message rather than silently training plain GRPO.
set -euo pipefail
profile="$1"; method="$2"; train="$3"; val="$4"; shift 4
if [ "$method" = "g2rl" ] || [ "$method" = "evol" ]; then
  echo "verl launch: method '$method' needs the Phi capture inside verl's actor workers, which is not wired yet." >&2
  echo "Use the TRL engine (g2rl train --engine trl) or our trainer for $method; grpo and entropy run here." >&2
  exit 2
fi
overrides=$(python -m g2rl_core.integrations.verl.overrides "$profile" "$method" "$train" "$val")
# shellcheck disable=SC2086
exec python -m verl.trainer.main_ppo $overrides trainer.project_name=g2rl trainer.experiment_name="$profile-$method" "$@"
