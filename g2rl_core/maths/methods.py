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
from g2rl_core.text import text_after_think


@dataclass
class GroupBatch:
    """One step's responses in group layout (G prompts x m responses)."""

    rewards: Tensor  # [G, m] base rewards, +1 correct / -1 otherwise
    parsable: Tensor  # [G, m] bool: an answer could be extracted
    phi: Tensor  # [G, m, d] gradient features (eq. 8)
    texts: list[str]  # G * m response texts, row-major


def _pairwise_text_similarity(embeddings: Tensor) -> Tensor:
    """Cosine similarity of sentence embeddings [G, m, e] -> [G, m, m], clipped to [0, 1]."""
    unit = torch.nn.functional.normalize(embeddings, dim=-1)
    return (unit @ unit.transpose(1, 2)).clamp(0.0, 1.0)


def _minmax_within(values: Tensor, members: Tensor) -> Tensor:
    """Min-max normalise ``values`` [m] over ``members`` (bool [m]); a flat class gets 0.5."""
    out = torch.zeros_like(values)
    if members.any():
        v = values[members]
        span = v.max() - v.min()
        out[members] = (v - v.min()) / span if span > 1e-12 else torch.full_like(v, 0.5)
    return out


def evol_rewards(embeddings: Tensor, correct: Tensor, parsable: Tensor) -> Tensor:
    """EVOL-RL rewards with ground-truth correctness (spec section 5), [G, m].

    sim_ij = clip(cos(e_i, e_j), 0, 1);
    novelty_i = 1 - (0.5 * mean_{j != i, same class} sim_ij + 0.5 * max_{j != i} sim_ij),
    min-max normalised within each correctness class; reward = 0.5 + 0.5 * novelty if correct,
    -1 + 0.5 * novelty if incorrect, and -1 if no answer could be parsed.
    Degenerate cases: a response alone in its class has mean similarity 0; m = 1 has max
    similarity 0; a class whose novelties are all equal gets normalised novelty 0.5.
    """
    G, m = correct.shape
    sim = _pairwise_text_similarity(embeddings.float())
    others = ~torch.eye(m, dtype=torch.bool, device=sim.device)
    rewards = torch.empty(G, m, dtype=torch.float32)
    for g in range(G):
        same = (correct[g].unsqueeze(0) == correct[g].unsqueeze(1)) & others
        mean_same = torch.where(same, sim[g], 0.0).sum(1) / same.sum(1).clamp(min=1)
        max_all = torch.where(others, sim[g], 0.0).amax(1) if m > 1 else torch.zeros(m)
        novelty = 1.0 - (0.5 * mean_same + 0.5 * max_all)
        norm = _minmax_within(novelty, correct[g]) + _minmax_within(novelty, ~correct[g])
        rewards[g] = torch.where(correct[g], 0.5 + 0.5 * norm, -1.0 + 0.5 * norm)
        rewards[g] = torch.where(parsable[g], rewards[g], torch.tensor(-1.0))
    return rewards


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
    verl: str | None = None  # how the verl engine runs it: "grpo" (verl's own GRPO), "g2rl" (G2RLTrainer), None: not


def _grpo(batch: GroupBatch, cfg, encode=None) -> Tensor:
    return grpo_advantages(batch.rewards)


def _g2rl(batch: GroupBatch, cfg, encode=None) -> Tensor:
    nu = exploration_scores(batch.phi, batch.rewards)
    return grpo_advantages(shape_rewards(batch.rewards, nu, **cfg.shaping.kwargs()))


def _evol(batch: GroupBatch, cfg, encode) -> Tensor:
    G, m = batch.rewards.shape
    embeddings = encode([text_after_think(t) for t in batch.texts]).reshape(G, m, -1)
    return grpo_advantages(evol_rewards(embeddings, batch.rewards > 0, batch.parsable))


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
register(Method("evol", "EVOL-RL", "#2ca02c", _evol, needs_groups=True, needs_encoder=True))
register(Method("g2rl", "G2RL", "#d62728", _g2rl, needs_groups=True, needs_phi=True, verl="g2rl"))
