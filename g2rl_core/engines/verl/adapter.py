"""G2RL shaping and EVOL-RL rewards on verl's batch layout, grouped by verl's ``uid`` (verl==0.9.1). Imports no verl.

verl's order within a step (V1 trainer): rollout -> reward (``rm_scores``: the verifier's
reward at each response's last token) -> old-policy log-prob pass -> reference pass ->
``compute_advantage`` (GRPO: group statistics by ``uid``). G2RL takes Phi from the old-policy
pass (``engine.PhiCaptureEngine``) and shapes the outcome reward before the advantage
(``trainer.G2RLTrainer``); EVOL-RL replaces it with its novelty rewards at the same point
(``trainer.EvolTrainer``); verl's own GRPO estimator then computes eq. 2 from the new rewards.
This module holds the keys they share and the pure steps.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from g2rl_core.errors import ConfigError
from g2rl_core.maths.methods import Encoder, _embed_valid, evol_rewards
from g2rl_core.maths.shaping import ShapingConfig, exploration_scores, pairwise_cosine, shape_rewards
from g2rl_core.text import has_boxed_digit, text_after_think

#: Batch field holding Phi [B, d] per response, next to verl's ``log_probs`` and ``entropy``.
PHI_KEY = "g2rl_phi"
#: Non-tensor flag on a batch: the actor engine computes Phi in this log-prob pass.
PHI_FLAG = "calculate_g2rl_phi"


def last_token_index(response_mask: Tensor) -> Tensor:
    """Index of each response's last valid token (verl puts outcome rewards there)."""
    positions = torch.arange(response_mask.shape[1], device=response_mask.device)
    return (response_mask.bool() * (positions + 1)).amax(dim=1).clamp(min=1) - 1


def outcome_rewards(token_scores: Tensor, response_mask: Tensor) -> Tensor:
    """Each response's outcome reward [B]: its token scores [B, R] summed over ``response_mask``."""
    return (token_scores * response_mask).sum(-1).float()


def at_last_token(rewards: Tensor, response_mask: Tensor) -> Tensor:
    """Token scores [B, R]: ``rewards`` [B] on each response's last token, 0 elsewhere (where verl's
    GRPO estimator reads an outcome reward)."""
    out = torch.zeros(response_mask.shape, dtype=torch.float32, device=rewards.device)
    out[torch.arange(len(rewards), device=rewards.device), last_token_index(response_mask)] = rewards.float()
    return out


def check_verifier_scale(rewards: Tensor) -> None:
    """Refuse outcome rewards that are not +-1 (eq. 10-12 assume r in {-1, +1}).

    On a {0, 1} scale eq. 10's weights become exp(0) against e and eq. 12 gives every incorrect
    response rtilde = 0 * f = 0, so shaping would silently change meaning; ``reward.compute_score``
    is the scorer that gives +-1.
    """
    bad = ~torch.isclose(rewards.abs(), torch.ones_like(rewards))
    if bad.any():
        seen = sorted({round(v, 6) for v in rewards[bad].tolist()})[:5]
        raise ConfigError(
            f"G2RL needs verifier rewards in {{-1, +1}}, got {seen} in rm_scores; wire the g2rl reward function "
            "(reward.custom_reward_function.path=g2rl_core/engines/verl/reward.py, name=compute_score)"
        )


def shape_outcome_scores(
    token_scores: Tensor, response_mask: Tensor, phi: Tensor, uid: np.ndarray, cfg: ShapingConfig
) -> tuple[Tensor, dict[str, float]]:
    """Shaped token-level scores [B, R] and metrics, grouping responses by ``uid``.

    ``token_scores`` [B, R] holds the verifier reward (summed over each response's tokens);
    ``phi`` [B, d] the responses' features. Responses of one prompt share a uid and may sit
    anywhere in the batch, in groups of any size. Rewards must be +-1 (``check_verifier_scale``).
    The shaped reward of eq. 13 lands on each response's last token (``at_last_token``).
    """
    rewards = outcome_rewards(token_scores, response_mask)
    check_verifier_scale(rewards)
    phi = phi.float()
    uid = np.asarray(uid)
    if len(uid) != len(rewards) or phi.shape[0] != len(rewards):
        raise ValueError(
            f"uid ({len(uid)}), phi ({phi.shape[0]}) and scores ({len(rewards)}) disagree on the batch size"
        )
    shaped = rewards.clone()
    nu_all = torch.zeros_like(rewards)
    cosines = []
    for group in np.unique(uid):
        idx = torch.as_tensor(np.nonzero(uid == group)[0], device=rewards.device)
        r, f = rewards[idx].unsqueeze(0), phi[idx].unsqueeze(0)
        nu = exploration_scores(f, r)
        shaped[idx] = shape_rewards(r, nu, **cfg.kwargs())[0]
        nu_all[idx] = nu[0]
        cosines.append(pairwise_cosine(f)[0][~torch.eye(len(idx), dtype=torch.bool, device=f.device)])
    cos = torch.cat(cosines) if cosines else torch.zeros(0)
    metrics = {  # the native trainer's group_geometry statistics, over groups of any size
        "g2rl/nu_mean": nu_all.mean().item(),
        "g2rl/nu_std": nu_all.std().item() if nu_all.numel() > 1 else 0.0,
        "g2rl/nu_min": nu_all.min().item(),
        "g2rl/nu_max": nu_all.max().item(),
        "g2rl/phi_cos_mean": cos.mean().item() if cos.numel() else float("nan"),
        "g2rl/phi_neg_share": (cos < 0).float().mean().item() if cos.numel() else float("nan"),
        "g2rl/shaped_reward_mean": shaped.mean().item(),
        "g2rl/verifier_reward_mean": rewards.mean().item(),
    }
    return at_last_token(shaped, response_mask), metrics


def decode_responses(tokenizer, responses: list[Tensor]) -> list[str]:
    """Response texts from their token ids (one 1-D tensor per response, unpadded), special tokens
    removed, as the native engine's rollout backends decode them (``rollout.vllm_backend``)."""
    return tokenizer.batch_decode([ids.tolist() for ids in responses], skip_special_tokens=True)


def evol_outcome_scores(
    token_scores: Tensor, response_mask: Tensor, texts: list[str], uid: np.ndarray, encode: Encoder
) -> tuple[Tensor, dict[str, float]]:
    """EVOL-RL's rewards in place of the verifier's [B, R], and metrics, grouping responses by ``uid``.

    The native method ``evol`` (``maths.methods._evol``) on verl's layout: a response is correct
    when its verifier reward is > 0 and valid when ``text.has_boxed_digit(text.text_after_think(t))``;
    the valid answer parts are embedded in one ``encode`` call (``methods._embed_valid``), and
    ``methods.evol_rewards`` (after YujunZhou/EVOL-RL, ``semantic_novelty.py``) gives each uid
    group's rewards. Groups may have any size and sit anywhere in the batch. Each reward lands on
    its response's last token (``at_last_token``); verl's GRPO estimator then gives eq. 2.
    """
    rewards = outcome_rewards(token_scores, response_mask)
    uid = np.asarray(uid)
    if not len(uid) == len(texts) == len(rewards):
        raise ValueError(
            f"uid ({len(uid)}), texts ({len(texts)}) and scores ({len(rewards)}) disagree on the batch size"
        )
    answers = [text_after_think(t) for t in texts]
    valid = [has_boxed_digit(a) for a in answers]
    embeddings = _embed_valid(encode, answers, valid)
    valid_t, correct = torch.tensor(valid, dtype=torch.bool), rewards.cpu() > 0
    evol = torch.zeros(len(rewards))
    for group in np.unique(uid):
        idx = torch.as_tensor(np.nonzero(uid == group)[0])
        evol[idx] = evol_rewards(embeddings[idx][None], correct[idx][None], valid_t[idx][None])[0]
    metrics = {
        "evol/reward_mean": evol.mean().item(),
        "evol/valid_share": valid_t.float().mean().item(),
        "evol/verifier_reward_mean": rewards.mean().item(),
    }
    return at_last_token(evol.to(rewards.device), response_mask), metrics
