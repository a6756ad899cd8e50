"""The exploration methods, selected by name from the registry ``METHODS``.

Each method maps one step's groups to per-response advantages [G, m]; the trainer
broadcasts them to tokens. All four see the same inputs from the one old-policy pass:

- ``grpo``:    A = eq. 2 on the verifier rewards r in {-1, +1}.
- ``entropy``: A as GRPO; the loss subtracts entropy_coeff * token-mean entropy (trainer).
- ``evol``:    EVOL-RL semantic novelty with ground-truth correctness (spec section 5):
               rewards from ``evol_rewards`` on sentence embeddings, then eq. 2.
- ``g2rl``:    nu from Phi (eq. 9-11), shaped rewards (eq. 12-13, clip), then eq. 2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from g2rl_core.maths.shaping import exploration_scores, grpo_advantages, shape_rewards
from g2rl_core.text import has_boxed_digit, text_after_think


@dataclass
class GroupBatch:
    """One step's responses in group layout (G prompts x m responses)."""

    rewards: Tensor  # [G, m] base rewards, +1 correct / -1 otherwise
    parsable: Tensor  # [G, m] bool: an answer could be extracted
    phi: Tensor  # [G, m, d] gradient features (eq. 8)
    texts: list[str]  # G * m response texts, row-major


EVOL_FLAT_SPAN = 1e-9  # a novelty span below this counts as a flat class (see evol_rewards)


def _pairwise_text_similarity(embeddings: Tensor) -> Tensor:
    """Cosine similarity of sentence embeddings [n, e] -> [n, n], clipped to [0, 1].

    In float64, with norms floored at 1e-8 as in the original."""
    x = embeddings.double()
    unit = x / x.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    return (unit @ unit.T).clamp(0.0, 1.0)


def _minmax_within(values: Tensor, members: Tensor) -> Tensor:
    """Min-max normalise ``values`` [n] over ``members`` (bool [n]); zero outside ``members``.

    A class whose values span less than ``EVOL_FLAT_SPAN`` counts as flat and gets 0.5."""
    out = torch.zeros_like(values)
    if members.any():
        v = values[members]
        span = v.max() - v.min()
        out[members] = (v - v.min()) / span if span > EVOL_FLAT_SPAN else torch.full_like(v, 0.5)
    return out


def _evol_valid_rewards(sim: Tensor, correct: Tensor) -> Tensor:
    """Rewards [n] of n >= 2 valid responses from their similarities [n, n] (the original's
    ``_compute_similarity_based_rewards``)."""
    n = correct.shape[0]
    others = ~torch.eye(n, dtype=torch.bool)
    same = (correct.unsqueeze(0) == correct.unsqueeze(1)) & others
    mean_same = torch.where(same, sim, 0.0).sum(1) / same.sum(1).clamp(min=1)
    max_all = torch.where(others, sim, 0.0).amax(1)  # sim >= 0, so the fill never wins
    novelty = 1.0 - (0.5 * mean_same + 0.5 * max_all)
    rewards = torch.empty(n, dtype=torch.float64)
    for members, low, lone in ((correct, 0.5, 1.0), (~correct, -1.0, -0.5)):
        size = int(members.sum())
        if size == 1:
            rewards[members] = lone
        elif size > 1:
            rewards[members] = low + 0.5 * _minmax_within(novelty, members)[members]
    return rewards


def evol_rewards(embeddings: Tensor, correct: Tensor, valid: Tensor) -> Tensor:
    """EVOL-RL rewards with ground-truth correctness (spec section 5), [G, m].

    Source: repository YujunZhou/EVOL-RL, file verl/verl/workers/reward_manager/semantic_novelty.py
    at commit ed596f4a83874911474a295757c3db153d7c548c, ``_compute_novelty_rewards`` and
    ``_compute_similarity_based_rewards``. Per group of m responses:

    - m = 1: the base reward, +1 if correct else -1 (the original returns it unchanged).
    - A response that is not ``valid`` (``text.has_boxed_digit`` of its answer part) gets -1
      and is REMOVED before any similarity: it is neither anyone's nearest neighbour nor a
      member of a correctness class.
    - Fewer than two valid responses in a group with an invalid one: every response gets -1
      (the original's "insufficient valid answers" branch, a lone correct one included).
    - Otherwise, over the valid responses only: sim_ij = clip(cos(e_i, e_j), 0, 1);
      novelty_i = 1 - (0.5 * mean_{j != i, same class} sim_ij + 0.5 * max_{j != i} sim_ij);
      within each correctness class of two or more members, min-max normalised novelty n_i
      gives 0.5 + 0.5 * n_i (correct) or -1 + 0.5 * n_i (incorrect), and a class whose
      novelties are all equal gets 0.75 / -0.75; the lone member of a class gets 1.0 (correct)
      or -0.5 (incorrect).

    ``correct`` is the verifier's verdict (reward > 0); a correct response that is not valid
    still gets -1, as in the original. Known differences, all outside the reward rules: the
    original embeds the decoded text with special tokens kept (e.g. a trailing ``<|im_end|>``)
    while our texts have them removed; it compares novelties with ``max > min`` exactly, where
    a span below ``EVOL_FLAT_SPAN`` counts as flat here (float rounding between identical
    responses would otherwise be stretched to the full [0.5, 1] range); it computes in
    float32 / float64 numpy, this in float64.
    """
    G, m = correct.shape
    rewards = torch.full((G, m), -1.0, dtype=torch.float64)
    for g in range(G):
        if m == 1:
            rewards[g] = torch.where(correct[g], 1.0, -1.0).double()
            continue
        keep = valid[g].nonzero().squeeze(1)
        if keep.numel() >= 2:
            sim = _pairwise_text_similarity(embeddings[g, keep])
            rewards[g, keep] = _evol_valid_rewards(sim, correct[g, keep])
    return rewards.float()


#: ``encode(texts)`` -> [N, e] sentence embeddings (EVOL-RL's encoder).
Encoder = Callable[[list[str]], Tensor]


@dataclass(frozen=True)
class Method:
    """One exploration method: every fact the engines, the config and the report need about it.

    ``advantages(batch, cfg, encode)`` maps one step's groups to per-response advantages [G, m];
    ``cfg`` is the run's ``TrainConfig`` (its ``shaping``, ``entropy_coeff``, ...), ``encode`` the
    sentence encoder when ``needs_encoder`` (else None). Register a new method with ``register``
    below and give it a block in params.yaml: nothing else names methods.
    """

    name: str
    label: str  # how tables and figures spell it
    color: str  # its colour in every figure
    advantages: Callable[[GroupBatch, Any, Encoder | None], Tensor]
    needs_groups: bool = False  # compares responses within a group: rollouts_per_prompt >= 2, whole groups per call
    needs_phi: bool = False  # reads Phi (engines compute it in the old-policy pass)
    needs_encoder: bool = False  # reads sentence embeddings of the responses (and their texts)
    uses_entropy_bonus: bool = False  # the loss subtracts entropy_coeff * entropy (eq. 4 plus the bonus)
    verl: str | None = None  # verl mode: "grpo" (its GRPO), "g2rl"/"evol" (G2RLTrainer/EvolTrainer), None: refused


def _grpo(batch: GroupBatch, cfg, encode=None) -> Tensor:
    return grpo_advantages(batch.rewards)


def _g2rl(batch: GroupBatch, cfg, encode=None) -> Tensor:
    nu = exploration_scores(batch.phi, batch.rewards)
    return grpo_advantages(shape_rewards(batch.rewards, nu, **cfg.shaping.kwargs()))


def _embed_valid(encode, texts: list[str], valid: list[bool]) -> Tensor:
    """Embeddings [N, e] of the valid texts, zero rows for the others (the original embeds only
    valid responses; an invalid one's embedding is never read)."""
    keep = [i for i, ok in enumerate(valid) if ok]
    if not keep:
        return torch.zeros(len(texts), 1)
    encoded = encode([texts[i] for i in keep]).float()
    out = torch.zeros(len(texts), encoded.shape[-1])
    out[keep] = encoded
    return out


def _evol(batch: GroupBatch, cfg, encode) -> Tensor:
    """EVOL-RL: validity from the raw texts (not the verifier's ``parsable``), then eq. 2."""
    G, m = batch.rewards.shape
    answers = [text_after_think(t) for t in batch.texts]
    valid = [has_boxed_digit(a) for a in answers]
    embeddings = _embed_valid(encode, answers, valid).reshape(G, m, -1)
    valid_t = torch.tensor(valid, dtype=torch.bool).reshape(G, m)
    return grpo_advantages(evol_rewards(embeddings, batch.rewards > 0, valid_t))


#: The registry, by name. Its order is the order of every table and legend.
METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to ``METHODS``; the name must be new."""
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


register(Method("grpo", "GRPO", "#1f77b4", _grpo, verl="grpo"))
register(Method("entropy", "Entropy Bonus", "#ff7f0e", _grpo, uses_entropy_bonus=True, verl="grpo"))
register(Method("evol", "EVOL-RL", "#2ca02c", _evol, needs_groups=True, needs_encoder=True, verl="evol"))
register(Method("g2rl", "G2RL", "#d62728", _g2rl, needs_groups=True, needs_phi=True, verl="g2rl"))
