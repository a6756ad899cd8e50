"""G2RL shaping on verl's batch layout, grouped by verl's ``uid`` (verl==0.9.1). Imports no verl.

verl's order within a step (V1 trainer): rollout -> reward (``rm_scores``: the verifier's
reward at each response's last token) -> old-policy log-prob pass -> reference pass ->
``compute_advantage`` (GRPO: group statistics by ``uid``). G2RL takes Phi from the old-policy
pass (``engine.PhiCaptureEngine``) and shapes the outcome reward before the advantage
(``trainer.G2RLTrainer``); verl's own GRPO estimator then computes eq. 2 from the shaped
rewards. This module holds the keys they share and the pure shaping step.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from g2rl_core.maths.shaping import ShapingConfig, exploration_scores, shape_rewards

#: Batch field holding Phi [B, d] per response, next to verl's ``log_probs`` and ``entropy``.
PHI_KEY = "g2rl_phi"
#: Non-tensor flag on a batch: the actor engine computes Phi in this log-prob pass.
PHI_FLAG = "calculate_g2rl_phi"


def last_token_index(response_mask: Tensor) -> Tensor:
    """Index of each response's last valid token (verl puts outcome rewards there)."""
    positions = torch.arange(response_mask.shape[1], device=response_mask.device)
    return (response_mask.bool() * (positions + 1)).amax(dim=1).clamp(min=1) - 1


def shape_outcome_scores(
    token_scores: Tensor, response_mask: Tensor, phi: Tensor, uid: np.ndarray, cfg: ShapingConfig
) -> tuple[Tensor, dict[str, float]]:
    """Shaped token-level scores [B, R] and metrics, grouping responses by ``uid``.

    ``token_scores`` [B, R] holds the verifier reward (summed over each response's tokens);
    ``phi`` [B, d] the responses' features. Responses of one prompt share a uid and may sit
    anywhere in the batch, in groups of any size. The shaped reward of eq. 13 lands on each
    response's last token, 0 elsewhere, which is where verl's GRPO estimator reads it.
    """
    rewards = (token_scores * response_mask).sum(-1).float()
    phi = phi.float()
    uid = np.asarray(uid)
    if len(uid) != len(rewards) or phi.shape[0] != len(rewards):
        raise ValueError(
            f"uid ({len(uid)}), phi ({phi.shape[0]}) and scores ({len(rewards)}) disagree on the batch size"
        )
    shaped = rewards.clone()
    nu_all = torch.zeros_like(rewards)
    for group in np.unique(uid):
        idx = torch.as_tensor(np.nonzero(uid == group)[0], device=rewards.device)
        r, f = rewards[idx].unsqueeze(0), phi[idx].unsqueeze(0)
        nu = exploration_scores(f, r)
        shaped[idx] = shape_rewards(r, nu, **cfg.kwargs())[0]
        nu_all[idx] = nu[0]
    out = torch.zeros_like(token_scores, dtype=torch.float32)
    out[torch.arange(len(shaped)), last_token_index(response_mask)] = shaped
    metrics = {
        "g2rl/nu_mean": nu_all.mean().item(),
        "g2rl/shaped_reward_mean": shaped.mean().item(),
        "g2rl/verifier_reward_mean": rewards.mean().item(),
    }
    return out, metrics
