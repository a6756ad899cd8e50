"""verl's synchronous V1 PPO trainer with G2RL or EVOL-RL: ``trainer.v1.trainer_mode=g2rl|evol`` (verl==0.9.1).

``launch.sh`` loads this module in every verl process (``VERL_USE_EXTERNAL_MODULES``), so the
Ray TaskRunner finds the trainers by name. Both replace the verifier's scores before verl's GRPO
estimator (``RescoringTrainer._compute_advantage``): they read the step's fields from the
TransferQueue, recompute the rewards group by group (grouped by ``uid`` over the final output of
each session, as verl's GRPO groups them; verl's synthetic padding samples are left out), let
verl's own GRPO estimator compute the advantages from them, and put the verifier scores back so
verl's score metrics stay the verifier's.

``G2RLTrainer`` changes two more steps of verl's ``PPOTrainerSync``:

- ``_init_resource_pool_mgr``: the actor runs as ``G2RLActorRolloutRefWorker``, whose FSDP engine
  can return Phi from its log-prob pass (``engine.PhiCaptureEngine``).
- ``_compute_old_log_prob``: asks for Phi in that pass only (``PHI_FLAG``); the worker writes it
  to the TransferQueue under ``PHI_KEY`` beside ``log_probs``.

Its rewards are ``adapter.shape_outcome_scores`` (eq. 9-13); the ``g2rl:`` block of the config
gives lam, variant, normalize and clip (``overrides.py``).

``EvolTrainer`` decodes the responses with verl's tokenizer and rewards them with
``adapter.evol_outcome_scores`` (EVOL-RL, ``maths.methods.evol_rewards``), embedding them with the
sentence encoder of ``evol.encoder`` (the profile's ``encoder``), loaded by
``models.sentence_encoder`` in the process that runs the trainer (verl's TaskRunner). verl 0.9.1's
reward managers cannot hold it: its agent loop scores each session alone
(``AgentLoopWorker._compute_score`` -> ``RewardLoopWorker.compute_score``), and EVOL-RL compares
the responses of a group.
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
from g2rl_core.engines.verl.adapter import (
    PHI_FLAG,
    PHI_KEY,
    decode_responses,
    evol_outcome_scores,
    shape_outcome_scores,
)
from g2rl_core.engines.verl.engine import G2RLActorRolloutRefWorker
from g2rl_core.maths.methods import Encoder
from g2rl_core.maths.shaping import ShapingConfig
from g2rl_core.models import sentence_encoder

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


def evol_encoder(config) -> str:
    """The sentence encoder named by the ``evol:`` block of a verl config (``evol.encoder``)."""
    name = OmegaConf.select(config, "evol.encoder")
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"evol.encoder = {name!r}: trainer.v1.trainer_mode=evol needs a sentence encoder's name or path; "
            "see g2rl_core/engines/verl/overrides.py"
        )
    return name


class RescoringTrainer(PPOTrainerSync):
    """verl's sync V1 trainer whose GRPO advantages come from rewards recomputed by ``rescore``."""

    #: TransferQueue fields ``rescore`` reads besides uid, response_mask and rm_scores.
    rescore_fields: tuple[str, ...] = ()

    def rescore(self, fields: TensorDict, keys: list[str], tags: list[dict]):
        """New ``rm_scores`` (nested, like verl's) for the step's fields, and metrics."""
        raise NotImplementedError

    def _compute_advantage(self, batch, metrics):
        fields = tq.kv_batch_get(
            keys=batch.keys,
            partition_id=batch.partition_id,
            select_fields=["uid", "response_mask", VERIFIER_SCORES_KEY, *self.rescore_fields],
        )
        verifier_scores = fields[VERIFIER_SCORES_KEY]
        rescored, stats = self.rescore(fields, batch.keys, batch.tags)
        tq.kv_batch_put(
            keys=batch.keys,
            partition_id=batch.partition_id,
            fields=TensorDict({VERIFIER_SCORES_KEY: rescored}, batch_size=len(batch)),
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


@register_trainer("g2rl")
class G2RLTrainer(RescoringTrainer):
    rescore_fields = (PHI_KEY,)

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

    def rescore(self, fields, keys, tags):
        return shape_batch(fields, keys, tags, self.shaping)


@register_trainer("evol")
class EvolTrainer(RescoringTrainer):
    rescore_fields = ("responses",)

    def __init__(self, config):
        self.encode = sentence_encoder(evol_encoder(config))
        super().__init__(config)

    def rescore(self, fields, keys, tags):
        return evol_batch(fields, keys, tags, self.tokenizer, self.encode)


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


def rescore_final_outputs(fields: TensorDict, keys: list[str], tags: list[dict], rescore):
    """``rm_scores`` (nested, like verl's) with the rows of the real, final outputs replaced, and metrics.

    ``rescore(padded, rows, uid)`` gets the step's fields padded, the rows it replaces and their
    uids, and returns their new token scores [len(rows), R] and metrics. Groups are the final
    outputs of each session sharing a uid. verl's synthetic padding samples (tag ``is_padding``;
    0.9.1 builds them from a real sample's fields under a uid of their own) keep their zero score
    and stay out of every group by their tag, as do non-final outputs of multi-output sessions.
    """
    padded = fields.to_padded_tensor()
    uid = np.array(padded.pop("uid").tolist(), dtype=object)
    real = np.array([not tag.get("is_padding", False) for tag in tags], dtype=bool)
    rows = np.nonzero(real & final_outputs(keys))[0]
    scores = padded[VERIFIER_SCORES_KEY].float().clone()
    scores[rows], stats = rescore(padded, rows, uid[rows])
    return response_to_nested(scores, fields["response_mask"]), stats


def shape_batch(fields: TensorDict, keys: list[str], tags: list[dict], cfg: ShapingConfig):
    """G2RL's shaped ``rm_scores`` for the TransferQueue fields of one step (``rescore_final_outputs``)."""
    return rescore_final_outputs(
        fields,
        keys,
        tags,
        lambda padded, rows, uid: shape_outcome_scores(
            padded[VERIFIER_SCORES_KEY][rows].float(), padded["response_mask"][rows], padded[PHI_KEY][rows], uid, cfg
        ),
    )


def evol_batch(fields: TensorDict, keys: list[str], tags: list[dict], tokenizer, encode: Encoder):
    """EVOL-RL's ``rm_scores`` for the TransferQueue fields of one step (``rescore_final_outputs``);
    the responses are decoded from their unpadded token ids (``adapter.decode_responses``)."""
    texts = decode_responses(tokenizer, fields["responses"].unbind())
    return rescore_final_outputs(
        fields,
        keys,
        tags,
        lambda padded, rows, uid: evol_outcome_scores(
            padded[VERIFIER_SCORES_KEY][rows].float(),
            padded["response_mask"][rows],
            [texts[i] for i in rows],
            uid,
            encode,
        ),
    )
