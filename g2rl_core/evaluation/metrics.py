"""The paper's evaluation metrics (section 7 of ../shared/docs/g2rl-paper.md), as pure functions.

Per problem, from n sampled responses with correctness flags and extracted answers:
- pass@1: mean accuracy over the n samples (``pass_at_1``; "mean@8" for n = 8);
- pass@k: the paper's definition, at least one of the first k samples correct
  (``pass_at_k_first``), and the unbiased estimator of Chen et al. 2021 from n >= k
  samples (``pass_at_k_unbiased``);
- maj@k: the most frequent extracted answer string among the first k samples (the paper:
  "most frequent final answer string"), ties broken uniformly at random with a seed, and that
  one answer verified (``maj_at_k``). The verifier grades exactly the string it extracts, so
  every sample of one answer string has the same verdict.
A benchmark score is the mean over problems; ``bootstrap_ci`` gives a percentile
confidence interval by resampling problems. The paper reports no intervals; we do.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np


def _check_k(n: int, k: int) -> None:
    if k < 1 or k > n:
        raise ValueError(f"k must be in [1, n] = [1, {n}], got k = {k}")


def pass_at_1(correct: Sequence[bool]) -> float:
    """Mean accuracy over the samples of one problem."""
    if len(correct) == 0:
        raise ValueError("pass@1 needs at least one sample")
    return float(np.mean(np.asarray(correct, dtype=float)))


def pass_at_k_first(correct: Sequence[bool], k: int) -> float:
    """The paper's pass@k: 1.0 if any of the first k samples is correct, else 0.0."""
    _check_k(len(correct), k)
    return 1.0 if any(correct[:k]) else 0.0


def pass_at_k_unbiased(n: int, c: int, k: int) -> float:
    """Chen et al. (2021): P(at least one correct among k drawn without replacement from n, c correct).

        pass@k = 1 - C(n - c, k) / C(n, k)

    Computed with exact integer binomials.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n = {n}, c = {c}")
    _check_k(n, k)
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int, seed: int = 0) -> float:
    """maj@k for one problem: 1.0 if the majority answer among the first k samples is correct.

    Samples without an extracted answer (None) do not vote; if none of the k has an
    answer, the result is 0.0. Answers vote by exact string; ties are broken uniformly at
    random with ``random.Random(seed)``. The winning answer's correctness is that of its first
    sample (the verifier's verdict is a function of the extracted string and the gold answer).
    """
    if len(answers) != len(correct):
        raise ValueError(f"answers ({len(answers)}) and correct ({len(correct)}) differ in length")
    _check_k(len(answers), k)
    group_of: dict[str, int] = {}  # answer -> its group, groups in order of first appearance
    votes: list[int] = []
    verdicts: list[bool] = []
    for answer, ok in zip(answers[:k], correct[:k]):
        if answer is None:
            continue
        if answer in group_of:
            votes[group_of[answer]] += 1
        else:
            group_of[answer] = len(votes)
            votes.append(1)
            verdicts.append(bool(ok))
    if not votes:
        return 0.0
    top = max(votes)
    winners = [g for g, v in enumerate(votes) if v == top]
    winner = winners[0] if len(winners) == 1 else random.Random(seed).choice(winners)
    return 1.0 if verdicts[winner] else 0.0


def bootstrap_ci(
    per_problem: Sequence[float],
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap interval of the mean over problems.

    Problems are resampled with replacement ``n_resamples`` times. A single problem
    gives a zero-width interval.
    """
    values = np.asarray(per_problem, dtype=float)
    if values.size == 0:
        raise ValueError("bootstrap_ci needs at least one problem")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(n_resamples, values.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(values.mean()), float(low), float(high)
