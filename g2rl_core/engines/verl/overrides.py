"""Hydra overrides for verl's ``ppo_trainer`` from table3.yaml.

python -m g2rl_core.engines.verl.overrides paper-1.7b g2rl
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

TABLE3 = Path(__file__).with_name("table3.yaml")
PLUGIN_ENV = "VERL_USE_EXTERNAL_MODULES"
PLUGIN = "g2rl_core.engines.verl.trainer"


def _value(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def verl_overrides(
    profile: str, method: str, *, train_files: str, val_files: str, lam: float = 1.0, variant: str = "equation"
) -> list[str]:
    table = yaml.safe_load(TABLE3.read_text())
    if profile not in table["models"]:
        raise ValueError(f"profile {profile!r}: choose one of {sorted(table['models'])}")
    if method not in table["methods"]:
        raise ValueError(f"method {method!r}: choose one of {sorted(table['methods'])}")
    values = {
        **table["common"],
        **table["models"][profile],
        **table["methods"][method],
        "data.train_files": train_files,
        "data.val_files": val_files,
    }
    overrides = [f"{key}={_value(value)}" for key, value in values.items()]
    if method == "g2rl":
        # G2RLTrainer (trainer.py) is verl's sync V1 trainer plus Phi capture and shaping.
        # Every Ray process (the TaskRunner looks the trainer up by name) imports it through verl's
        # VERL_USE_EXTERNAL_MODULES hook.
        overrides += [
            "trainer.v1.trainer_mode=g2rl",
            f"+ray_kwargs.ray_init.runtime_env.env_vars.{PLUGIN_ENV}={PLUGIN}",
            f"+g2rl.lam={lam}",
            f"+g2rl.variant={variant}",
            "+g2rl.normalize=minmax",
            "+g2rl.clip=3.0",
        ]
    return overrides


if __name__ == "__main__":
    profile, method = sys.argv[1], sys.argv[2]
    train, val = (sys.argv[3], sys.argv[4]) if len(sys.argv) > 4 else ("data/math_train.parquet", "data/aime25.parquet")
    print(" ".join(verl_overrides(profile, method, train_files=train, val_files=val)))
