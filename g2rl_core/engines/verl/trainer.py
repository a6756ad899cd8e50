"""verl's synchronous V1 PPO trainer with G2RL, registered as ``trainer.v1.trainer_mode=g2rl`` (verl==0.9.1).

``launch.sh`` loads this module in every verl process (``VERL_USE_EXTERNAL_MODULES``), so the
Ray TaskRunner finds the trainer by name. Against verl's ``PPOTrainerSync`` it changes three
steps and nothing else:

- ``_init_resource_pool_mgr``: the actor runs as ``G2RLActorRolloutRefWorker``, whose FSDP engine
  can return Phi from its log-prob pass (``engine.PhiCaptureEngine``).
- ``_compute_old_log_prob``: asks for Phi in that pass only (``PHI_FLAG``); the worker writes it
  to the TransferQueue under ``PHI_KEY`` beside ``log_probs``.
- ``_compute_advantage``: reads the verifier scores and Phi, shapes the rewards group by group
  (``adapter.shape_outcome_scores``, grouped by ``uid`` over the final output of each session, as
  verl's GRPO groups them; verl's synthetic padding samples are left out), lets verl's own GRPO
  estimator compute the advantages from the shaped scores, and
  puts the verifier scores back so verl's score metrics stay the verifier's.

The ``g2rl:`` block of the config gives lam, variant, normalize and clip (``overrides.py``).
"""

from __future__ import annotations

import numpy as np
import ray
import transfer_queue as tq
from omegaconf import OmegaConf
from tensordict import TensorDict
from verl.trainer.ppo.utils import Role
from verl.trainer.ppo.v1 import PPOTrainerSync, register_trainer
from verl.workers.utils.padding import response_to_nested

from g2rl_core.config import from_mapping
from g2rl_core.engines.verl.adapter import PHI_FLAG, PHI_KEY, shape_outcome_scores
from g2rl_core.engines.verl.engine import G2RLActorRolloutRefWorker
from g2rl_core.maths.shaping import ShapingConfig

VERIFIER_SCORES_KEY = "rm_scores"
ACTOR_ROLES = (Role.Actor, Role.ActorRollout, Role.ActorRolloutRef)


def shaping_config(config) -> ShapingConfig:
    """The validated ``g2rl:`` block of a verl config; errors name the bad key."""
    block = OmegaConf.select(config, "g2rl")
    if block is None:
        raise ValueError(
            "trainer.v1.trainer_mode=g2rl needs a g2rl: block (lam, variant, normalize, clip); "
            "see g2rl_core/engines/verl/overrides.py"
        )
    rollout_correction = OmegaConf.select(config, "algorithm.rollout_correction.bypass_mode", default=False)
    if rollout_correction:
        raise ValueError(
            "G2RL takes Phi from the old-policy log-prob pass; algorithm.rollout_correction.bypass_mode=true skips it"
        )
    return from_mapping(ShapingConfig, OmegaConf.to_container(block, resolve=True), where="g2rl")


@register_trainer("g2rl")
class G2RLTrainer(PPOTrainerSync):
    def __init__(self, config):
        self.shaping = shaping_config(config)
        super().__init__(config)

    def _init_resource_pool_mgr(self):
        super()._init_resource_pool_mgr()
        for role in ACTOR_ROLES:
            if role in self.role_worker_mapping:
                self.role_worker_mapping[role] = ray.remote(G2RLActorRolloutRefWorker)

    def _compute_old_log_prob(self, batch, metrics):
        batch.extra_info[PHI_FLAG] = True
        try:
            out = super()._compute_old_log_prob(batch, metrics)
        finally:
            batch.extra_info.pop(PHI_FLAG, None)  # the reference pass must not overwrite Phi
        out.extra_info.pop(PHI_FLAG, None)
        return out

    def _compute_advantage(self, batch, metrics):
        fields = tq.kv_batch_get(
            keys=batch.keys,
            partition_id=batch.partition_id,
            select_fields=["uid", "response_mask", VERIFIER_SCORES_KEY, PHI_KEY],
        )
        verifier_scores = fields[VERIFIER_SCORES_KEY]
        shaped, stats = shape_batch(fields, batch.keys, batch.tags, self.shaping)
        tq.kv_batch_put(
            keys=batch.keys,
            partition_id=batch.partition_id,
            fields=TensorDict({VERIFIER_SCORES_KEY: shaped}, batch_size=len(batch)),
        )
        try:
            batch = super()._compute_advantage(batch, metrics)
        finally:
            tq.kv_batch_put(
                keys=batch.keys,
                partition_id=batch.partition_id,
                fields=TensorDict({VERIFIER_SCORES_KEY: verifier_scores}, batch_size=len(batch)),
            )
        metrics.update(stats)
        return batch


def final_outputs(keys: list[str]) -> np.ndarray:
    """True for the last output of each agent-loop session (keys ``{uid}_{session}_{index}``).

    verl's GRPO uses only these and broadcasts their advantage to the session's other outputs;
    the groups of eq. 9-13 are built from the same outputs.
    """
    last: dict[str, tuple[int, int]] = {}
    for row, key in enumerate(keys):
        session, _, index = key.rpartition("_")
        if not session or "_" not in session:
            raise ValueError(f"TransferQueue key {key!r} is not {{uid}}_{{session}}_{{index}}")
        if session not in last or last[session][0] < int(index):
            last[session] = (int(index), row)
    final = np.zeros(len(keys), dtype=bool)
    final[[row for _, row in last.values()]] = True
    return final


def shape_batch(fields: TensorDict, keys: list[str], tags: list[dict], cfg: ShapingConfig):
    """Shaped ``rm_scores`` (nested, like verl's) for the TransferQueue fields of one step, and metrics.

    Groups are the final outputs of each session sharing a uid. verl's synthetic padding samples
    (tag ``is_padding``) copy a real sample's uid; they keep their zero score and stay out of
    every group, as do non-final outputs of multi-output sessions.
    """
    padded = fields.to_padded_tensor()
    uid = np.array(padded.pop("uid").tolist(), dtype=object)
    scores = padded[VERIFIER_SCORES_KEY].float()
    real = np.array([not tag.get("is_padding", False) for tag in tags], dtype=bool)
    idx = np.nonzero(real & final_outputs(keys))[0]
    shaped = scores.clone()
    shaped[idx], stats = shape_outcome_scores(
        scores[idx], padded["response_mask"][idx], padded[PHI_KEY][idx], uid[idx], cfg
    )
    return response_to_nested(shaped, fields["response_mask"]), stats
