"""The policy loss (eq. 4) as pure functions, in the style of verl's ``core_algos``.

The GRPO objective of eq. 4, as verl computes it with the settings of Table 3:

    pg_t   = max(-A r_t, -A clip(r_t, 1 - eps, 1 + eps))       PPO clipped surrogate, r_t = pi_theta / pi_old
    pg_t   = min(pg_t, -A c)   where A < 0                        dual clip (verl's clip_ratio_c = c = 3)
    loss_t = pg_t + kl_coef * k3(pi_theta, pi_ref)_t              "low_var_kl" to the frozen reference
                  - entropy_coeff * H_t                           the entropy-bonus baseline only

with log r_t clamped to [-20, 20] before the exponential, as verl does. The paper states
neither the dual clip nor the clamp: they are verl 0.9.1's defaults, which the paper's runs used.

aggregated as a token-mean over a mini-batch ("token-mean" in verl): the sum over the valid
tokens of all the mini-batch's responses, divided by their number. A mini-batch may be spread
over several micro-batches that accumulate gradients; each micro-batch then passes the
mini-batch's token count as ``normalizer``, so that the accumulated gradient equals the
gradient of one token-mean over the whole mini-batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: The policy ratio's log clamp (verl's ``compute_policy_loss_vanilla``).
LOG_RATIO_CLAMP = 20.0
#: The k3 estimator's log-ratio clamp and output clamp (verl's ``low_var_kl``).
K3_LOG_RATIO_CLAMP = 20.0
K3_CLAMP = 10.0


def k3_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Low-variance KL estimator per token: k3 = exp(ref - logp) - (ref - logp) - 1.

    The log-ratio is clamped to [-20, 20] and k3 to [-10, 10], as verl's ``low_var_kl``.
    k3 >= 0, and k3 = 0 exactly where the two log-probs agree.
    """
    diff = (ref_logprobs - logprobs).clamp(-K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)
    return (torch.exp(diff) - diff - 1).clamp(-K3_CLAMP, K3_CLAMP)


def ppo_clip_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_ratio: float,
    dual_clip_ratio: float | None = None,
    ref_logp: Tensor | None = None,
    kl_coef: float = 0.0,
    entropy: Tensor | None = None,
    entropy_coeff: float = 0.0,
    normalizer: Tensor | float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Token-mean PPO-clip loss with optional k3 KL and entropy bonus (eq. 4).

    Shapes: ``logp``, ``old_logp``, ``ref_logp``, ``entropy``, ``mask`` are [B, T] (``mask`` is
    1 on response tokens); ``advantages`` is [B] (one scalar per response, broadcast to its
    tokens) or [B, T]. ``normalizer`` is the number of valid tokens the mean runs over
    (default: ``mask.sum()``); pass the mini-batch's count when it spans micro-batches.
    ``dual_clip_ratio`` (c > 1, or None for none) bounds the loss of a negative-advantage token at -A c.

    Returns (loss, stats). ``stats`` holds detached token *sums* over the valid tokens, so
    callers add them up across micro-batches: ``tokens``, ``clipped`` (tokens where the clipped
    branch is active, i.e. the gradient is cut), ``kl`` (sum of k3), ``entropy`` (sum of H).
    """
    mask = mask.to(logp.dtype)
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    ratio = torch.exp((logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_ratio, 1.0 + clip_ratio)
    per_token = torch.maximum(unclipped, clipped)
    if dual_clip_ratio is not None:
        if dual_clip_ratio <= 1:
            raise ValueError(f"dual_clip_ratio must be > 1, got {dual_clip_ratio}")
        per_token = torch.where(adv < 0, torch.minimum(per_token, -adv * dual_clip_ratio), per_token)
    stats = {"tokens": mask.sum().detach(), "clipped": ((clipped > unclipped).to(logp.dtype) * mask).sum().detach()}
    if ref_logp is not None:
        kl = k3_kl(logp, ref_logp)
        per_token = per_token + kl_coef * kl
        stats["kl"] = (kl.detach() * mask).sum()
    if entropy is not None:
        per_token = per_token - entropy_coeff * entropy
        stats["entropy"] = (entropy.detach() * mask).sum()
    denominator = mask.sum().clamp(min=1) if normalizer is None else normalizer
    return (per_token * mask).sum() / denominator, stats
