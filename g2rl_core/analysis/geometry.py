"""Geometry of sampled responses (the paper's Figure 3).

For a trained policy: sample ``samples`` responses to each of ``problems`` problems, compute
every response's Phi with the policy's own old-policy pass and its sentence embedding with an
external encoder, and return every within-problem pair (i < j) with its Phi cosine and its
semantic cosine. The paper's summaries are the mean Phi cosine, the mean semantic cosine and
the share of pairs with negative Phi cosine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
import torch

from g2rl_core.evaluation.benchmarks import Problem
from g2rl_core.maths.features import causal_lm_sequence_features
from g2rl_core.maths.shaping import pairwise_cosine
from g2rl_core.text import text_after_think


def within_group_pairs(phi: torch.Tensor, embeddings: torch.Tensor) -> pd.DataFrame:
    """Rows (problem, i, j, phi_cos, semantic_cos) for i < j within each group; phi [G, m, d], embeddings [G, m, e]."""
    G, m, _ = phi.shape
    phi_cos = pairwise_cosine(phi.double())
    unit = torch.nn.functional.normalize(embeddings.double(), dim=-1)
    sem_cos = unit @ unit.transpose(1, 2)
    i, j = torch.triu_indices(m, m, offset=1)
    rows = {
        "problem": torch.arange(G).repeat_interleave(len(i)).tolist(),
        "i": i.repeat(G).tolist(),
        "j": j.repeat(G).tolist(),
        "phi_cos": phi_cos[:, i, j].reshape(-1).tolist(),
        "semantic_cos": sem_cos[:, i, j].reshape(-1).tolist(),
    }
    return pd.DataFrame(rows)


def summarize_pairs(pairs: pd.DataFrame) -> dict[str, float]:
    return {
        "phi_cos_mean": float(pairs["phi_cos"].mean()),
        "semantic_cos_mean": float(pairs["semantic_cos"].mean()),
        "negative_pair_share": float((pairs["phi_cos"] < 0).mean()),
        "pairs": int(len(pairs)),
    }


def policy_geometry(
    model,
    backend,
    encode: Callable[[list[str]], torch.Tensor],
    problems: Sequence[Problem],
    *,
    samples: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    chunk_size: int | None = None,
) -> pd.DataFrame:
    """Sample, featurise and embed; returns ``within_group_pairs`` with the problem ids."""
    batch = backend.generate(
        [p.prompt for p in problems],
        n=samples,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
    )
    feats = causal_lm_sequence_features(
        model,
        batch.prompt_ids,
        batch.prompt_mask,
        batch.response_ids,
        batch.response_mask,
        temperature=temperature,
        chunk_size=chunk_size,
    )
    G = len(problems)
    embeddings = encode([text_after_think(t) for t in batch.texts]).reshape(G, samples, -1)
    pairs = within_group_pairs(feats.phi.view(G, samples, -1), embeddings)
    pairs.insert(0, "problem_id", [problems[g].id for g in pairs["problem"]])
    return pairs.drop(columns="problem")
