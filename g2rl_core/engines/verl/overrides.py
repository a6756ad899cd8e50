"""Hydra overrides for verl's ``ppo_trainer``, generated from a profile of params.yaml.

    python -m g2rl_core.engines.verl.overrides paper-1_7b g2rl [TRAIN.parquet VAL.parquet]

params.yaml is the one source of Table 3: ``VERL_KEYS`` maps each ``TrainConfig`` field to
verl's key, so a verl run and a native run of one profile use the same values. ``VERL_FIXED``
holds verl settings that express how the paper's method runs on verl rather than a tunable
(GRPO estimator, k3 KL in the loss, ...).
"""

from __future__ import annotations

import sys
from pathlib import Path

from g2rl_core.config import TrainConfig, load_profile
from g2rl_core.errors import ConfigError
from g2rl_core.maths.methods import METHODS

PLUGIN_ENV = "VERL_USE_EXTERNAL_MODULES"
PLUGIN = "g2rl_core.engines.verl.trainer"
#: ``Method.verl`` values run by a trainer of ``PLUGIN`` (``trainer.v1.trainer_mode``); "grpo" is verl's own.
TRAINER_MODES = ("g2rl", "evol")
#: The verifier as verl's reward function (+-1, as in the native engine); verl loads it by file path.
REWARD_FUNCTION = {
    "reward.custom_reward_function.path": str(Path(__file__).resolve().with_name("reward.py")),
    "reward.custom_reward_function.name": "compute_score",
}

#: TrainConfig field -> verl key(s) (verl==0.9.1, config ppo_trainer).
VERL_KEYS = {
    "model": "actor_rollout_ref.model.path",
    "prompts_per_step": "data.train_batch_size",
    "max_response_length": "data.max_response_length",
    "rollouts_per_prompt": "actor_rollout_ref.rollout.n",
    "temperature": "actor_rollout_ref.rollout.temperature",
    "top_p": "actor_rollout_ref.rollout.top_p",
    "val_temperature": "actor_rollout_ref.rollout.val_kwargs.temperature",
    "val_samples": "actor_rollout_ref.rollout.val_kwargs.n",
    "ppo_mini_batch_size": "actor_rollout_ref.actor.ppo_mini_batch_size",
    "ppo_micro_batch_size": "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu",
    "ppo_epochs": "actor_rollout_ref.actor.ppo_epochs",
    "lr": "actor_rollout_ref.actor.optim.lr",
    "lr_warmup_steps": "actor_rollout_ref.actor.optim.lr_warmup_steps",
    "weight_decay": "actor_rollout_ref.actor.optim.weight_decay",
    "grad_clip": ("actor_rollout_ref.actor.grad_clip", "actor_rollout_ref.actor.optim.clip_grad"),  # legacy, engine
    "use_kl_loss": "actor_rollout_ref.actor.use_kl_loss",
    "kl_coef": "actor_rollout_ref.actor.kl_loss_coef",
    "clip_ratio": "actor_rollout_ref.actor.clip_ratio",
    "dual_clip_ratio": "actor_rollout_ref.actor.clip_ratio_c",
    "loss_agg_mode": "actor_rollout_ref.actor.loss_agg_mode",
    "steps": "trainer.total_training_steps",
    "val_every": "trainer.test_freq",
    "checkpoint_every": "trainer.save_freq",
    "keep_checkpoints": "trainer.max_actor_ckpt_to_keep",
    "gradient_checkpointing": "actor_rollout_ref.model.enable_gradient_checkpointing",
    "log_prob_micro_batch_size": (
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu",  # the old-policy (and Phi) pass
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu",
    ),
}

#: TrainConfig fields that reach verl another way, or have no verl counterpart, and why.
NOT_IN_VERL_KEYS = {
    "train_data": "data.train_files (prepared parquet)",
    "train_kind": "the data files",
    "val_data": "data.val_files (prepared parquet)",
    "val_kind": "the data files",
    "data_dir": "the data files",
    "val_problems": "the validation parquet holds them",
    "seed": "data.seed, below",
    "method": "the trainer mode and the entropy coefficient, below",
    "entropy_coeff": "actor.entropy_coeff, below (0 unless the method uses the bonus)",
    "shaping": "the +g2rl block, below",
    "encoder": "the +evol block, below (EvolTrainer loads it with models.sentence_encoder)",
    "rollout": "rollout.name, below",
    "feature_chunk_size": "verl computes Phi from its own logits (engine.PhiCaptureEngine)",
    "threads": "CPU threads of the native engine",
    "old_policy_from_rollout": "verl recomputes the old policy's log-probs (and Phi) in its own forward pass",
    "device": "verl places its workers on the Ray cluster's GPUs",
    "precision": "verl's FSDP engine has its own mixed-precision settings (bf16 compute by default)",
    "loggers": "verl's trainer.logger has its own names (console, wandb, ...)",
}

#: How the method runs on verl (not tunables of the paper).
VERL_FIXED = {
    "algorithm.adv_estimator": "grpo",
    "algorithm.use_kl_in_reward": False,
    "algorithm.norm_adv_by_std_in_grpo": True,
    "actor_rollout_ref.actor.kl_loss_type": "low_var_kl",  # k3
    "actor_rollout_ref.rollout.val_kwargs.do_sample": True,
    "actor_rollout_ref.model.use_remove_padding": True,
    "data.max_prompt_length": 1024,  # not stated in the paper
}


def _value(value) -> str:
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def verl_overrides(cfg: TrainConfig, *, train_files: str, val_files: str) -> list[str]:
    """verl's Hydra overrides for one run of ``cfg`` (its profile's settings, method and seed)."""
    method = METHODS[cfg.method]
    if method.verl is None:
        raise ConfigError(
            f"method {cfg.method!r} is not wired into the verl engine; use the native or TRL engine "
            "(g2rl train --engine native|trl)"
        )
    if cfg.rollout.backend != "vllm":
        raise ConfigError(f"rollout.backend = {cfg.rollout.backend!r}: the verl engine samples with vllm")
    values = {}
    for name, keys in VERL_KEYS.items():
        for key in (keys,) if isinstance(keys, str) else keys:
            values[key] = getattr(cfg, name)
    values.update(VERL_FIXED)
    values.update(REWARD_FUNCTION)
    values["actor_rollout_ref.rollout.name"] = cfg.rollout.backend
    values["actor_rollout_ref.actor.entropy_coeff"] = cfg.entropy_coeff if method.uses_entropy_bonus else 0
    values["data.seed"] = cfg.seed
    values.update({"data.train_files": train_files, "data.val_files": val_files})
    overrides = [f"{key}={_value(value)}" for key, value in values.items()]
    if method.verl in TRAINER_MODES:
        # G2RLTrainer / EvolTrainer (trainer.py): verl's sync V1 trainer with the method's rewards.
        # Every Ray process (the TaskRunner looks the trainer up by name) imports it through verl's
        # VERL_USE_EXTERNAL_MODULES hook.
        overrides += [
            f"trainer.v1.trainer_mode={method.verl}",
            f"+ray_kwargs.ray_init.runtime_env.env_vars.{PLUGIN_ENV}={PLUGIN}",
        ]
    if method.verl == "g2rl":
        overrides += [f"+g2rl.{key}={_value(value)}" for key, value in cfg.shaping.kwargs().items()]
    if method.verl == "evol":
        overrides.append(f"+evol.encoder={cfg.encoder}")
    return overrides


if __name__ == "__main__":
    profile, method = sys.argv[1], sys.argv[2]
    train, val = (sys.argv[3], sys.argv[4]) if len(sys.argv) > 4 else ("data/math_train.parquet", "data/aime25.parquet")
    try:
        print(" ".join(verl_overrides(load_profile(profile).train_config(method, 0), train_files=train, val_files=val)))
    except ConfigError as err:
        sys.exit(f"verl overrides: error: {err}")
