#!/usr/bin/env bash
# Launch verl's PPO trainer with Table 3 for a paper profile and method, on a GPU cluster.
#   bash g2rl_core/engines/verl/launch.sh paper-1_7b g2rl data/math_train.parquet data/aime25.parquet [extra overrides]
# Needs verl==0.9.1 and its GPU dependencies (see docs/engines.md). g2rl and evol run verl's sync V1
# trainer as G2RLTrainer / EvolTrainer (trainer.py), which every Ray process imports through verl's
# VERL_USE_EXTERNAL_MODULES hook (set here and in the Ray runtime env by overrides.py).
# A method the registry does not run on verl (Method.verl is None) is refused by overrides.py.
# Rewards: reward.py (+-1), wired by overrides.py.
# The pipeline stage is run.py (train_with_verl): data, main_ppo with these overrides, the merger, log.jsonl.
set -euo pipefail
profile="$1"; method="$2"; train="$3"; val="$4"; shift 4
overrides=$(python -m g2rl_core.engines.verl.overrides "$profile" "$method" "$train" "$val")
case " $overrides " in
  *" trainer.v1.trainer_mode="*) export VERL_USE_EXTERNAL_MODULES=g2rl_core.engines.verl.trainer ;;
esac
# shellcheck disable=SC2086
exec python -m verl.trainer.main_ppo $overrides trainer.project_name=g2rl trainer.experiment_name="$profile-$method" "$@"
