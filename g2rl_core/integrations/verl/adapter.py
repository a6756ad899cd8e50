"""G2RL on verl's data structures (verl==0.9.1): Phi from the packed log-prob layout, shaping by uid.

verl's order within a step: rollout -> reward manager (``token_level_scores``, the verifier's
+1/-1 at each response's last token) -> old-policy log-prob pass -> reference pass ->
``token_level_rewards`` -> ``compute_advantage`` (GRPO: group statistics by ``uid``).
G2RL needs Phi from the old-policy pass and must shape rewards before the advantage:

- ``packed_response_features``: Phi, log-probs and entropies from the tensors that verl's
  no-padding (``use_remove_padding``) log-prob pass has in hand: the packed final hidden
  states [total_nnz, d] (the LM head's input), the packed ids and ``cu_seqlens``. The caller
  stores ``phi`` in ``batch[PHI_KEY]`` ([B, d]).
- ``shape_dataproto``: reads the per-response verifier reward from ``token_level_scores``,
  groups responses by ``non_tensor_batch["uid"]`` (any order, any group size), applies
  eq. 9-13 with ``g2rl_core.shaping`` and writes the shaped reward at each response's last
  token of ``token_level_rewards``; verl's own GRPO estimator then computes the advantage.
- ``install_advantage_hook``: wraps ``verl.trainer.ppo.ray_trainer.compute_advantage`` so
  that a batch carrying ``PHI_KEY`` is shaped first.

Not wired here (needs a GPU worker to test): capturing the LM head's input inside verl's FSDP
engine (``prepare_model_outputs``), and installing the hook inside the Ray TaskRunner process.
The README's verl section says what has and has not been run.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from g2rl_core.features import SequenceFeatures, sequence_features
from g2rl_core.shaping import exploration_scores, shape_rewards

PHI_KEY = "g2rl_phi"
BASE_REWARD_KEY = "g2rl_base_reward"


@dataclass(frozen=True)
class ShapingConfig:
    lam: float = 1.0
    variant: str = "equation"
    normalize: str = "minmax"
    clip: float | None = 3.0


def packed_response_features(
    hidden_packed: Tensor,
    lm_head_weight: Tensor,
    input_ids_packed: Tensor,
    cu_seqlens: Tensor,
    response_lengths: Tensor,
    *,
    lm_head_bias: Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> SequenceFeatures:
    """Phi [B, d], log-probs and entropies [B, R] from verl's packed (no-padding) layout.

    Sequence i occupies ``cu_seqlens[i]:cu_seqlens[i + 1]`` of the packed tensors (prompt then
    response, no padding); its last ``response_lengths[i]`` tokens are the response. The state
    at packed position p predicts the token at p + 1 (verl's rolled labels).
    """
    B = cu_seqlens.numel() - 1
    R = int(response_lengths.max()) if B else 0
    d = hidden_packed.shape[-1]
    hidden = hidden_packed.new_zeros(B, R, d)
    ids = torch.zeros(B, R, dtype=torch.long, device=input_ids_packed.device)
    mask = torch.zeros(B, R, dtype=torch.long, device=input_ids_packed.device)
    for i in range(B):
        r, end = int(response_lengths[i]), int(cu_seqlens[i + 1])
        if r >= end - int(cu_seqlens[i]):
            raise ValueError(f"sequence {i}: response length {r} leaves no prompt token to predict it")
        positions = torch.arange(end - r, end, device=input_ids_packed.device)
        hidden[i, :r] = hidden_packed[positions - 1]
        ids[i, :r] = input_ids_packed[positions]
        mask[i, :r] = 1
    return sequence_features(hidden, lm_head_weight, ids, mask, lm_head_bias=lm_head_bias, temperature=temperature,
                             chunk_size=chunk_size)


def last_token_index(response_mask: Tensor) -> Tensor:
    """Index of each response's last valid token (verl puts outcome rewards there)."""
    positions = torch.arange(response_mask.shape[1], device=response_mask.device)
    return (response_mask.bool() * (positions + 1)).amax(dim=1).clamp(min=1) - 1


def shape_dataproto(data, cfg: ShapingConfig) -> dict[str, float]:
    """Shape the outcome rewards of a verl ``DataProto`` in place, grouped by uid; returns metrics.

    Reads ``token_level_scores`` (summed per response: the verifier reward) and
    ``batch[PHI_KEY]``; writes ``token_level_rewards`` (shaped reward at the last token,
    0 elsewhere) and ``batch[BASE_REWARD_KEY]``.
    """
    batch = data.batch
    mask = batch["response_mask"]
    rewards = (batch["token_level_scores"] * mask).sum(-1).float()
    phi = batch[PHI_KEY].float()
    uid = np.asarray(data.non_tensor_batch["uid"])
    shaped = rewards.clone()
    nu_all = torch.zeros_like(rewards)
    for group in np.unique(uid):
        idx = torch.as_tensor(np.nonzero(uid == group)[0], device=rewards.device)
        r, f = rewards[idx].unsqueeze(0), phi[idx].unsqueeze(0)
        nu = exploration_scores(f, r)
        shaped[idx] = shape_rewards(r, nu, lam=cfg.lam, variant=cfg.variant, clip=cfg.clip, normalize=cfg.normalize)[0]
        nu_all[idx] = nu[0]
    token_rewards = torch.zeros_like(batch["token_level_scores"], dtype=torch.float32)
    token_rewards[torch.arange(len(shaped)), last_token_index(mask)] = shaped
    batch["token_level_rewards"] = token_rewards
    batch[BASE_REWARD_KEY] = rewards
    return {"g2rl/nu_mean": nu_all.mean().item(), "g2rl/shaped_reward_mean": shaped.mean().item(),
            "g2rl/base_reward_mean": rewards.mean().item()}


def install_advantage_hook(cfg: ShapingConfig) -> None:
    """Make verl's ``compute_advantage`` shape any batch that carries ``PHI_KEY`` first (idempotent)."""
    from verl.trainer.ppo import ray_trainer

    original = getattr(ray_trainer.compute_advantage, "__g2rl_original__", ray_trainer.compute_advantage)

    @functools.wraps(original)
    def compute_advantage(data, *args, **kwargs):
        if PHI_KEY in data.batch.keys():
            data.meta_info.setdefault("metrics", {}).update(shape_dataproto(data, cfg))
        return original(data, *args, **kwargs)

    compute_advantage.__g2rl_original__ = original
    ray_trainer.compute_advantage = compute_advantage
