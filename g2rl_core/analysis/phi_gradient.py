"""Does Phi predict the true update direction? (issue 15, beyond the paper)

Appendix A.1 of the paper argues that a response's full-parameter gradient factors through
Phi (eq. 8), so that cosines in Phi-space measure redundancy between updates. On models small
enough to take exact per-response gradients we measure it directly:

    g(i) = grad_theta l(i),   l(i) = (1 / sum_t alpha_t) sum_t alpha_t log p(y_t | x, y_<t)   (eq. 8's weights)

with alpha_t = 1 on response tokens (as in the code) and p at the features' temperature T.
For every sampled group (the geometry stage's: same problems, same seed, same sampler) we
compare, pair by pair within the group,

    true-gradient cosine  cos(g(i), g(j))        over all parameters, or a block of them
    Phi cosine            S_ij of eq. 9
    semantic cosine       cosine of sentence embeddings (EVOL-RL's novelty signal)

by Pearson and Spearman correlation (pooled, and per group) with cluster-bootstrap CIs
(groups are resampled, since pairs of one group are not independent), by the share of pairs
whose sign agrees, and by Kendall's tau between the nu ranking (eq. 9-11) from true gradients
and the one from Phi: that ranking is what the shaping of eq. 12-13 uses.

Gradients are kept per parameter block as within-group Gram matrices, so the cosine over any
union of blocks (all parameters, the LM head, the last decoder layer, any layer) comes from
the same backward passes. For tied embeddings the head's use of W is its own block,
``HEAD_BLOCK``; the tied parameter's own block carries its full gradient (head use plus input
use), so "all" is the true full-parameter gradient.

Run:  python -m g2rl_core.analysis.phi_gradient --profile tiny --runs runs/tiny \\
          --out artifacts/tiny/phi_gradient --gradients 64
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from g2rl_core.errors import ConfigError, DataFileNotFoundError, G2RLError
from g2rl_core.maths.features import causal_lm_sequence_features, lm_head_parameters, normalized_token_weights
from g2rl_core.maths.shaping import exploration_scores
from g2rl_core.provenance import pin_cpu_paths, set_threads, write_run_info

#: Block name of the LM head's use of W (d l / d W in z = W h + b), separate from W's input-embedding use.
HEAD_BLOCK = "<lm_head use>"
#: Block name of the head bias's use, for models whose LM head has a bias.
HEAD_BIAS_BLOCK = "<lm_head bias use>"
#: Parameter groups every study reports; per-layer groups ``layer_<k>`` come on top.
MAIN_GROUPS = ("all", "lm_head", "last_layer")


# --- exact per-response gradients ---------------------------------------------------------------


def decoder_layers_prefix(model: torch.nn.Module) -> tuple[str, int]:
    """(name prefix of the decoder-layer ModuleList, number of layers), e.g. ("model.layers", 4)."""
    lists = [(name, len(m)) for name, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m)]
    layers = [(name, n) for name, n in lists if name.split(".")[-1] in ("layers", "h", "layer")]
    if not layers:
        raise ValueError(f"{type(model).__name__}: no decoder-layer ModuleList (named 'layers') found")
    return layers[0]


def _parameter_names(model: torch.nn.Module) -> list[str]:
    """Unique parameter names (a tied parameter appears once, under its first name)."""
    return [name for name, _ in model.named_parameters()]


def parameter_groups(model: torch.nn.Module) -> dict[str, list[str]]:
    """Gradient blocks making up each reported group.

    all: every parameter (the true full-parameter gradient); lm_head: the head's use of W (and b);
    last_layer: the last decoder layer; layer_<k>: decoder layer k; embedding: W's input use for
    tied models, the input embedding otherwise; final_norm: the norm before the head.
    """
    names = _parameter_names(model)
    prefix, n_layers = decoder_layers_prefix(model)
    weight, bias = lm_head_parameters(model)
    head_blocks = [HEAD_BLOCK] + ([HEAD_BIAS_BLOCK] if bias is not None else [])
    groups = {"all": names, "lm_head": head_blocks}
    for k in range(n_layers):
        groups[f"layer_{k}"] = [n for n in names if n.startswith(f"{prefix}.{k}.")]
    groups["last_layer"] = groups[f"layer_{n_layers - 1}"]
    embedding = model.get_input_embeddings().weight
    groups["embedding"] = [n for n, p in model.named_parameters() if p is embedding]
    in_layers = {n for k in range(n_layers) for n in groups[f"layer_{k}"]}
    head_ids = {id(weight)} | ({id(bias)} if bias is not None else set())
    groups["final_norm"] = [
        n
        for n, p in model.named_parameters()
        if n not in in_layers and p is not embedding and id(p) not in head_ids and "norm" in n
    ]
    return groups


def response_gradient(
    model: torch.nn.Module,
    prompt_ids: Tensor,
    response_ids: Tensor,
    *,
    temperature: float = 1.0,
    token_weights: Tensor | None = None,
) -> dict[str, Tensor]:
    """Exact gradient of one response's normalised log-likelihood, per parameter block, flattened.

        l = sum_t a_t log p(y_t),  a_t = alpha_t / (sum_s alpha_s + eps)    (eq. 8's weights, alpha_t = 1 default)
        p = softmax((W h_t + b) / T)

    Args:
        prompt_ids: [P] prompt tokens, no padding (P >= 1).
        response_ids: [R] response tokens, no padding.
        temperature: T of p; the rollout's sampling temperature, as for Phi.
        token_weights: optional [R] non-negative alpha_t.

    Returns {parameter name: gradient [numel]} for every parameter (a tied parameter's full
    gradient under its first name), plus ``HEAD_BLOCK`` (and ``HEAD_BIAS_BLOCK``): the gradient of
    the head's use of W (and b) alone. The model's ``.grad`` fields are not touched; the model is
    run in eval mode (no dropout) and its mode restored.
    """
    if prompt_ids.ndim != 1 or response_ids.ndim != 1 or prompt_ids.numel() < 1:
        raise ValueError(
            f"prompt_ids {tuple(prompt_ids.shape)} and response_ids {tuple(response_ids.shape)} must be 1-D, P >= 1"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    weight, bias = lm_head_parameters(model)
    names, params = zip(*model.named_parameters())
    # The head's own copy of W (and b): d l / d W through the head alone.
    head_w = weight.detach().clone().requires_grad_(True)
    head_b = bias.detach().clone().requires_grad_(True) if bias is not None else None
    ids = torch.cat([prompt_ids, response_ids]).unsqueeze(0)
    P, R = prompt_ids.numel(), response_ids.numel()
    mask = torch.ones(1, R, dtype=torch.long)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            out = model.base_model(
                input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=torch.arange(P + R).unsqueeze(0)
            )
            hidden = out.last_hidden_state[0, P - 1 : -1]  # [R, d] states predicting each response token
            logits = hidden @ head_w.T
            if head_b is not None:
                logits = logits + head_b
            acc = torch.float64 if logits.dtype == torch.float64 else torch.float32  # as features.py
            logp = torch.log_softmax(logits.to(acc) / temperature, dim=-1)
            token_logp = logp.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)
            weights = token_weights.unsqueeze(0) if token_weights is not None else None
            a = normalized_token_weights(mask, weights, token_logp.dtype)[0]
            objective = (a * token_logp).sum()
            leaves = [*params, head_w] + ([head_b] if head_b is not None else [])
            grads = torch.autograd.grad(objective, leaves, allow_unused=True)
    finally:
        model.train(was_training)
    flat = [p.new_zeros(p.numel()) if g is None else g.detach().reshape(-1) for p, g in zip(leaves, grads)]
    result = dict(zip(names, flat[: len(names)]))
    head_use = flat[len(names)]
    # The head's use of W goes into W's full gradient (tied: W is also the input embedding).
    weight_name = next(n for n, p in zip(names, params) if p is weight)
    result[weight_name] = result[weight_name] + head_use
    result[HEAD_BLOCK] = head_use
    if head_b is not None:
        bias_name = next(n for n, p in zip(names, params) if p is bias)
        result[bias_name] = result[bias_name] + flat[-1]
        result[HEAD_BIAS_BLOCK] = flat[-1]
    return result


@dataclass(frozen=True)
class GradientGrams:
    """Within-group Gram matrices of per-response gradients, one per parameter block.

    grams[block]: [G, m, m] float64, <g_block(i), g_block(j)> for responses i, j of one group.
    The Gram of a union of disjoint blocks is the sum of their Grams.
    """

    grams: dict[str, Tensor]

    def cosine(self, blocks: Sequence[str], eps: float = 1e-30) -> Tensor:
        """[G, m, m] cosine of the gradients restricted to ``blocks``; 0 for a zero gradient."""
        missing = [b for b in blocks if b not in self.grams]
        if missing or not blocks:
            raise KeyError(f"unknown or no gradient blocks {missing}; known: {sorted(self.grams)}")
        gram = sum(self.grams[b] for b in blocks)
        norm = gram.diagonal(dim1=-2, dim2=-1).clamp(min=0).sqrt()
        return gram / (norm.unsqueeze(-1) * norm.unsqueeze(-2) + eps)


def group_gradient_grams(
    model: torch.nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    *,
    group_size: int,
    temperature: float = 1.0,
) -> GradientGrams:
    """Per-block Gram matrices of the exact per-response gradients, group by group.

    The batch is in rollout layout (``RolloutBatch``): N = G * group_size rows, prompts [N, P]
    left-padded, responses [N, R] right-padded. Padding is stripped, so each response's
    gradient is the one of its unpadded sequence. A response with no tokens has gradient 0.
    Cost: one forward and backward pass per response; memory: group_size full gradients.
    """
    N = prompt_ids.shape[0]
    if group_size < 1 or N % group_size:
        raise ValueError(f"group_size = {group_size} must divide the {N} responses of the batch")
    G, m = N // group_size, group_size
    grams: dict[str, Tensor] = {}
    for g in range(G):
        rows = [
            response_gradient(
                model,
                prompt_ids[k][prompt_mask[k].bool()],
                response_ids[k][response_mask[k].bool()],
                temperature=temperature,
            )
            for k in range(g * m, (g + 1) * m)
        ]
        for block in rows[0]:
            stacked = torch.stack([r[block] for r in rows]).double()
            grams.setdefault(block, torch.zeros(G, m, m, dtype=torch.float64))[g] = stacked @ stacked.T
    return GradientGrams(grams)


def vectors_with_cosines(cos: Tensor) -> Tensor:
    """[G, m, m] rows X with X X^T = cos (a PSD cosine matrix), so that eq. 9-11 apply to any Gram.

    nu (``exploration_scores``) depends on the vectors only through their cosines; this lets the
    true-gradient cosines feed the very same function as Phi.
    """
    values, vectors = torch.linalg.eigh(cos.double())
    return vectors * values.clamp(min=0).sqrt().unsqueeze(-2)


# --- correlation statistics -----------------------------------------------------------------------


def _weighted_ranks(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average ranks (0-based) of x [n] in the sample that repeats x[k] weights[..., k] times. [..., n].

    With unit weights these are the usual average ranks (ties share the mean of their ranks); a
    cluster drawn twice by a bootstrap has weight 2 and ties with its own copy. Weight-0 entries
    get a rank that the weighted statistics ignore.
    """
    order = np.argsort(x, kind="mergesort")
    xs, ws = x[order], weights[..., order]
    cum = np.cumsum(ws, axis=-1)
    idx = np.arange(x.size)
    first = np.r_[True, xs[1:] != xs[:-1]]  # a tie group starts here
    last = np.r_[xs[1:] != xs[:-1], True]  # a tie group ends here
    start = np.maximum.accumulate(np.where(first, idx, 0))
    end = np.minimum.accumulate(np.where(last, idx, x.size - 1)[::-1])[::-1]
    below = cum[..., start] - ws[..., start]
    tied = cum[..., end] - below
    ranks = np.empty_like(cum)
    ranks[..., order] = below + (tied - 1) / 2
    return ranks


def _weights(x: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    return np.ones_like(x) if weights is None else np.asarray(weights, float)


def _scalar_or_array(value: np.ndarray, weights: np.ndarray | None):
    return float(value) if weights is None or np.ndim(value) == 0 else value


def pearson(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None):
    """Pearson correlation; nan when either input is constant or has fewer than 2 values.

    ``weights`` [..., n] (non-negative multiplicities, e.g. a bootstrap's) give one weighted
    correlation per leading index, computed as if x[k], y[k] were repeated weights[..., k] times.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape[-1] < 2:
        return float("nan") if weights is None else np.full(np.shape(weights)[:-1], np.nan)
    w = _weights(x, weights)
    total = w.sum(-1, keepdims=True)
    dx = x - (w * x).sum(-1, keepdims=True) / total
    dy = y - (w * y).sum(-1, keepdims=True) / total
    denom = np.sqrt((w * dx * dx).sum(-1) * (w * dy * dy).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(denom > 1e-300, (w * dx * dy).sum(-1) / np.where(denom > 1e-300, denom, 1.0), np.nan)
    return _scalar_or_array(r, weights)


def spearman(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None):
    """Spearman's rho: Pearson correlation of average ranks (``weights`` as in ``pearson``)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    w = _weights(x, weights)
    return pearson(_weighted_ranks(x, w), _weighted_ranks(y, w), weights)


def kendall_tau(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b (ties in either ranking handled); nan when either input is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    i, j = np.triu_indices(x.size, k=1)
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    denom = np.sqrt((sx != 0).sum() * (sy != 0).sum())
    return float((sx * sy).sum() / denom) if denom > 0 else float("nan")


def sign_agreement(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None):
    """Share of pairs whose two cosines have the same sign (a zero counts as its own sign)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size == 0:
        return float("nan")
    w = _weights(x, weights)
    return _scalar_or_array((w * (np.sign(x) == np.sign(y))).sum(-1) / w.sum(-1), weights)


def mean_statistic(x: np.ndarray, _y: np.ndarray, weights: np.ndarray | None = None):
    """Mean of x (a ``cluster_bootstrap`` statistic of one column; y is ignored); nan when empty."""
    x = np.asarray(x, float)
    if x.size == 0:
        return float("nan")
    w = _weights(x, weights)
    return _scalar_or_array((w * x).sum(-1) / w.sum(-1), weights)


#: Statistics that take bootstrap multiplicities as ``weights`` (one vectorised pass for all resamples).
WEIGHTED_STATISTICS = (pearson, spearman, sign_agreement, mean_statistic)


def cluster_bootstrap(
    statistic: Callable[..., float],
    x: np.ndarray,
    y: np.ndarray,
    clusters: np.ndarray,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(estimate, low, high): percentile bootstrap CI of ``statistic(x, y)`` resampling whole clusters.

    Pairs of one group share responses, so the group (not the pair) is the unit resampled: each
    resample draws as many clusters as there are, with replacement. One cluster gives a zero-width
    interval; no data gives nan. Resamples whose statistic is nan are dropped. The statistics of
    ``WEIGHTED_STATISTICS`` run on all resamples at once, as multiplicity weights.
    """
    x, y, clusters = np.asarray(x, float), np.asarray(y, float), np.asarray(clusters)
    if not (x.shape == y.shape == clusters.shape) or x.ndim != 1:
        raise ValueError(f"x {x.shape}, y {y.shape} and clusters {clusters.shape} must be 1-D of one length")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    estimate = statistic(x, y)
    labels, index = np.unique(clusters, return_inverse=True)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(labels.size, np.full(labels.size, 1.0 / labels.size), size=n_resamples)
    if statistic in WEIGHTED_STATISTICS:
        values = np.asarray(statistic(x, y, counts[:, index].astype(float)), float)
    else:
        values = np.asarray([statistic(np.repeat(x, c[index]), np.repeat(y, c[index])) for c in counts], float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return estimate, float("nan"), float("nan")
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return estimate, float(low), float(high)


def mean_ci(values: np.ndarray, *, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0):
    """(mean, low, high) percentile bootstrap of the mean; nan entries are dropped first."""
    values = np.asarray(values, float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(n_resamples, values.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(values.mean()), float(low), float(high)


def compare_cosines(
    pairs: pd.DataFrame, proxy: str, target: str, *, group: str = "problem_id", n_resamples: int = 1000, seed: int = 0
) -> list[dict]:
    """Rows (statistic, value, low, high) comparing column ``proxy`` with column ``target``.

    pooled_pearson / pooled_spearman / sign_agreement: over all pairs, CI by resampling groups;
    group_pearson / group_spearman: mean over groups of the within-group correlation, CI over groups.
    """
    frame = pairs[[group, proxy, target]].dropna()
    x, y, clusters = frame[proxy].to_numpy(), frame[target].to_numpy(), frame[group].to_numpy()
    rows = []
    for name, fn in (("pooled_pearson", pearson), ("pooled_spearman", spearman), ("sign_agreement", sign_agreement)):
        value, low, high = cluster_bootstrap(fn, x, y, clusters, n_resamples=n_resamples, seed=seed)
        rows.append({"statistic": name, "value": value, "low": low, "high": high})
    for name, fn in (("group_pearson", pearson), ("group_spearman", spearman)):
        per_group = [fn(g[proxy].to_numpy(), g[target].to_numpy()) for _, g in frame.groupby(group, sort=False)]
        value, low, high = mean_ci(np.asarray(per_group), n_resamples=n_resamples, seed=seed)
        rows.append({"statistic": name, "value": value, "low": low, "high": high})
    return [{"proxy": proxy, "target": target, "pairs": len(frame), **row} for row in rows]


def compare_rankings(
    responses: pd.DataFrame,
    proxy: str,
    target: str,
    *,
    group: str = "problem_id",
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """Mean over groups of Kendall's tau-b between the nu rankings in two columns, with a CI over groups.

    Groups where either ranking is constant (tau undefined) are left out and counted.
    """
    frame = responses[[group, proxy, target]].dropna()
    taus = np.asarray([kendall_tau(g[proxy], g[target]) for _, g in frame.groupby(group, sort=False)])
    value, low, high = mean_ci(taus, n_resamples=n_resamples, seed=seed)
    return {
        "proxy": proxy,
        "target": target,
        "statistic": "nu_kendall_tau",
        "value": value,
        "low": low,
        "high": high,
        "pairs": int((~np.isnan(taus)).sum()),
    }


def cosine_geometry(pairs: pd.DataFrame, column: str, *, group: str = "problem_id", n_resamples: int = 1000):
    """Rows for the mean cosine and the share of negative pairs in ``column``, with CIs over groups."""
    frame = pairs[[group, column]].dropna()
    values, clusters = frame[column].to_numpy(), frame[group].to_numpy()
    negative = (values < 0).astype(float)
    rows = []
    for name, x in (("mean", values), ("negative_share", negative)):
        value, low, high = cluster_bootstrap(mean_statistic, x, x, clusters, n_resamples=n_resamples)
        rows.append(
            {
                "proxy": column,
                "target": "",
                "statistic": name,
                "value": value,
                "low": low,
                "high": high,
                "pairs": len(frame),
            }
        )
    return rows


def summarize_study(
    pairs: pd.DataFrame, responses: pd.DataFrame, *, by: Sequence[str] = ("policy",), n_resamples: int = 1000
) -> pd.DataFrame:
    """Every comparison, per policy (the ``by`` columns), as rows (proxy, target, statistic, value, low, high).

    - geometry of every cosine column (phi_cos, semantic_cos, grad_cos_*): mean and negative share;
    - phi_cos and semantic_cos against every grad_cos_* column (``compare_cosines``), on the pairs
      whose gradients were taken;
    - nu_phi and nu_semantic against every nu_grad_* column (``compare_rankings``).
    """
    targets = [c for c in pairs.columns if c.startswith("grad_cos_")]
    nu_targets = [c for c in responses.columns if c.startswith("nu_grad_")]
    rows = []
    for key, frame in pairs.groupby(list(by), sort=False):
        labels = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        resp = responses.merge(pd.DataFrame([labels]), on=list(by))
        with_grad = frame.dropna(subset=targets[:1])
        for column in ["phi_cos", "semantic_cos", *targets]:
            rows += [{**labels, **r} for r in cosine_geometry(frame, column, n_resamples=n_resamples)]
        for target in targets:
            for proxy in ("phi_cos", "semantic_cos"):
                rows += [{**labels, **r} for r in compare_cosines(with_grad, proxy, target, n_resamples=n_resamples)]
        for target in nu_targets:
            for proxy in ("nu_phi", "nu_semantic"):
                rows.append({**labels, **compare_rankings(resp, proxy, target, n_resamples=n_resamples)})
    return pd.DataFrame(rows)


# --- one policy --------------------------------------------------------------------------------


def study_policy(
    model,
    backend,
    encode: Callable[[list[str]], Tensor] | None,
    problems: Sequence,
    *,
    samples: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    gradient_groups: int,
    chunk_size: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sample like the geometry stage, then Phi, embeddings and (for the first ``gradient_groups`` groups)
    exact gradients. Returns (pairs, responses).

    pairs: problem_id, i, j, phi_cos, semantic_cos, grad_cos_<group> (nan beyond the gradient budget).
    responses: problem_id, i, reward, tokens, entropy_mean, nu_phi, nu_semantic, nu_grad_<group>.
    """
    from g2rl_core.analysis.geometry import within_group_pairs
    from g2rl_core.evaluation.verifier import verify
    from g2rl_core.text import text_after_think

    batch = backend.generate(
        [p.prompt for p in problems],
        n=samples,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
    )
    G, m = len(problems), samples
    feats = causal_lm_sequence_features(
        model,
        batch.prompt_ids,
        batch.prompt_mask,
        batch.response_ids,
        batch.response_mask,
        temperature=temperature,
        chunk_size=chunk_size,
    )
    phi = feats.phi.view(G, m, -1)
    if encode is not None:
        embeddings = encode([text_after_think(t) for t in batch.texts]).reshape(G, m, -1)
    else:
        embeddings = torch.full((G, m, 1), float("nan"))
    pairs = within_group_pairs(phi, embeddings)
    verdicts = [verify(text, problems[k // m].answer, problems[k // m].kind) for k, text in enumerate(batch.texts)]
    rewards = torch.tensor([v.reward for v in verdicts], dtype=torch.float64).view(G, m)
    mask = batch.response_mask.double()
    responses = pd.DataFrame(
        {
            "problem": torch.arange(G).repeat_interleave(m).tolist(),
            "i": torch.arange(m).repeat(G).tolist(),
            "reward": rewards.reshape(-1).tolist(),
            "tokens": mask.sum(1).tolist(),
            "entropy_mean": ((feats.entropy.double() * mask).sum(1) / mask.sum(1).clamp(min=1)).tolist(),
            "deterministic_share": (
                ((feats.logprobs.double().exp() > 0.9).double() * mask).sum(1) / mask.sum(1).clamp(min=1)
            ).tolist(),
            "nu_phi": exploration_scores(phi.double(), rewards).reshape(-1).tolist(),
        }
    )
    if encode is not None:
        responses["nu_semantic"] = exploration_scores(embeddings.double(), rewards).reshape(-1).tolist()
    else:
        responses["nu_semantic"] = float("nan")
    n_grad = min(gradient_groups, G)
    if n_grad > 0:
        rows = slice(0, n_grad * m)
        grams = group_gradient_grams(
            model,
            batch.prompt_ids[rows],
            batch.prompt_mask[rows],
            batch.response_ids[rows],
            batch.response_mask[rows],
            group_size=m,
            temperature=temperature,
        )
        groups = parameter_groups(model)
        i, j = torch.triu_indices(m, m, offset=1)
        for name, blocks in groups.items():
            if not blocks:
                continue
            cos = grams.cosine(blocks)
            column = torch.full((G, len(i)), float("nan"), dtype=torch.float64)
            column[:n_grad] = cos[:, i, j]
            pairs[f"grad_cos_{name}"] = column.reshape(-1).tolist()
            nu = torch.full((G, m), float("nan"), dtype=torch.float64)
            nu[:n_grad] = exploration_scores(vectors_with_cosines(cos), rewards[:n_grad])
            responses[f"nu_grad_{name}"] = nu.reshape(-1).tolist()
        column = torch.full((G, m), float("nan"), dtype=torch.float64)
        column[:n_grad] = sum(grams.grams[b] for b in groups["all"]).diagonal(dim1=-2, dim2=-1).sqrt()
        responses["grad_norm_all"] = column.reshape(-1).tolist()
    ids = [problems[g].id for g in range(G)]
    pairs.insert(0, "problem_id", [ids[g] for g in pairs.pop("problem")])
    responses.insert(0, "problem_id", [ids[g] for g in responses.pop("problem")])
    return pairs, responses


# --- the pipeline stage --------------------------------------------------------------------------


def run_study(args: argparse.Namespace) -> pd.DataFrame:
    """The base model and every trained policy (methods x seeds); writes pairs.csv, responses.csv, summary.csv."""
    from g2rl_core.config import load_params, load_profile
    from g2rl_core.evaluation.benchmarks import load_problems
    from g2rl_core.models import load_policy, sentence_encoder
    from g2rl_core.rollout import make_rollout

    if args.gradients < 0:
        raise ConfigError(f"--gradients = {args.gradients} must be >= 0 (responses per policy whose gradient is taken)")
    params = load_params(args.params)
    profile = load_profile(args.profile, args.params)
    spec = dataclasses.asdict(profile.require("geometry"))  # the geometry stage's sampling (GeometrySpec)
    methods = args.methods if args.methods is not None else [m for m in ("grpo", "g2rl") if m in params["methods"]]
    seeds = args.seeds if args.seeds is not None else params.get("seeds", [0])[:1]
    policies = [("base", 0, profile.train["model"])] if args.base else []
    for method in methods:
        for seed in seeds:
            run = Path(args.runs) / method / f"seed{seed}" / "final"
            if not run.is_dir():
                raise DataFileNotFoundError(
                    f"{run}: no trained policy; train it with `g2rl train --profile {profile.name} --method {method} "
                    f"--seed {seed} --out {run.parent}` or leave it out with --methods/--seeds"
                )
            policies.append((method, seed, str(run)))
    set_threads(args.threads if args.threads is not None else profile.threads)
    cfg0 = profile.train_config((methods or ["grpo"])[0], seeds[0])
    pool = load_problems(spec["source"], spec["kind"], cfg0.data_dir)
    problems = [pool[i] for i in sorted(random.Random(0).sample(range(len(pool)), min(spec["problems"], len(pool))))]
    gradient_groups = min(len(problems), args.gradients // spec["samples"])
    encode = sentence_encoder(spec["encoder"]) if args.encoder else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    all_pairs, all_responses, timings = [], [], {}
    for method, seed, path in policies:
        start = time.perf_counter()
        cfg = profile.train_config(method if method != "base" else (methods or ["grpo"])[0], seed, model=path)
        model, tokenizer = load_policy(path)
        pairs, responses = study_policy(
            model,
            make_rollout(cfg.rollout, model, tokenizer, model_path=path, seed=seed),
            encode,
            problems,
            samples=spec["samples"],
            temperature=spec["temperature"],
            top_p=spec["top_p"],
            max_new_tokens=cfg.max_response_length,
            seed=seed,
            gradient_groups=gradient_groups,
            chunk_size=cfg.feature_chunk_size,
        )
        label = method if method == "base" else f"{method}-seed{seed}"
        for frame in (pairs, responses):
            frame.insert(0, "seed", seed)
            frame.insert(0, "method", method)
            frame.insert(0, "policy", label)
        all_pairs.append(pairs)
        all_responses.append(responses)
        timings[label] = time.perf_counter() - start
        print(f"{label}: {timings[label]:.1f}s, {gradient_groups * spec['samples']} gradients", flush=True)
    pairs, responses = pd.concat(all_pairs, ignore_index=True), pd.concat(all_responses, ignore_index=True)
    summary = summarize_study(pairs, responses, n_resamples=args.resamples)
    pairs.to_csv(out / "pairs.csv", index=False)
    responses.to_csv(out / "responses.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    meta = {
        "profile": profile.name,
        "gradients_per_policy": gradient_groups * spec["samples"],
        "gradient_groups": gradient_groups,
        "geometry": spec,
        "seconds": timings,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    return summary


def main(argv: list[str] | None = None) -> int:
    pin_cpu_paths()  # before any tensor work
    parser = argparse.ArgumentParser(
        prog="python -m g2rl_core.analysis.phi_gradient",
        description="Phi versus exact per-response gradients (issue 15): pairs.csv, responses.csv, summary.csv",
    )
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default=None, help="profile in params.yaml (default: its 'profile' key)")
    parser.add_argument("--runs", required=True, help="directory holding <method>/seed<k>/final")
    parser.add_argument("--out", required=True)
    parser.add_argument("--gradients", type=int, default=64, help="responses per policy whose exact gradient is taken")
    parser.add_argument("--methods", nargs="*", default=None, help="trained methods (default: grpo and g2rl)")
    parser.add_argument("--seeds", nargs="*", type=int, default=None, help="default: params.yaml's first seed")
    parser.add_argument("--no-base", dest="base", action="store_false", help="leave out the base model")
    parser.add_argument("--no-encoder", dest="encoder", action="store_false", help="skip the semantic cosines")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the CIs")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        run_study(args)
    except G2RLError as err:
        print(f"phi_gradient: error: {err}", file=sys.stderr)
        return 2
    write_run_info(args.out, "phi_gradient", time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
