"""Sampling and scoring: the validation inside training and the ``g2rl eval`` runner.

``sample_and_score`` draws n responses per problem with a rollout back-end and verifies each.
``run_eval`` writes, per (model, method, seed, benchmark), a tidy samples CSV (one row per
problem and sample) and a summary CSV (one row per metric, with bootstrap CI bounds). It is
resumable: problems already in the samples CSV are not sampled again.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from g2rl_core.evaluation.benchmarks import Problem
from g2rl_core.evaluation.metrics import bootstrap_ci, maj_at_k, pass_at_1, pass_at_k_first, pass_at_k_unbiased
from g2rl_core.evaluation.verifier import verify

SAMPLE_COLUMNS = [
    "model",
    "method",
    "seed",
    "benchmark",
    "problem_id",
    "sample",
    "correct",
    "reward",
    "extracted",
    "response_tokens",
    "response",
]


@dataclass(frozen=True)
class ScoredSample:
    problem_index: int
    sample: int
    text: str
    extracted: str | None
    correct: bool
    response_tokens: int


def sample_and_score(
    backend, problems: Sequence[Problem], *, n: int, temperature: float, top_p: float, max_new_tokens: int, seed: int
) -> list[ScoredSample]:
    """n samples per problem (group layout), each verified against the problem's gold answer."""
    batch = backend.generate(
        [p.prompt for p in problems],
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
    )
    lengths = batch.response_mask.sum(1).tolist()
    out = []
    for i, text in enumerate(batch.texts):
        problem = problems[i // n]
        verdict = verify(text, problem.answer, problem.kind)
        out.append(ScoredSample(i // n, i % n, text, verdict.extracted, verdict.correct, int(lengths[i])))
    return out


def mean_accuracy(samples: Sequence[ScoredSample]) -> float:
    """mean@n: accuracy averaged over problems and samples (all problems have n samples)."""
    return sum(s.correct for s in samples) / max(1, len(samples))


def per_problem_metrics(samples: pd.DataFrame, ks: Sequence[int], *, seed: int = 0) -> pd.DataFrame:
    """Rows (problem_id, metric, value) from one run's samples of one benchmark.

    pass@1 (mean over the n samples); for every k <= n: pass@k (paper: first k samples; k > 1),
    pass@k unbiased (Chen et al.) and maj@k (ties broken with seed + the problem's position).
    """
    rows = []
    for position, (pid, group) in enumerate(samples.sort_values("sample").groupby("problem_id", sort=True)):
        correct = group["correct"].astype(bool).tolist()
        answers = [a if isinstance(a, str) else None for a in group["extracted"].tolist()]
        n = len(correct)
        rows.append((pid, "pass@1", pass_at_1(correct)))  # the paper's pass@1: mean over all n samples
        for k in ks:
            if k > n:
                continue
            if k > 1:  # for k = 1 the first-sample form would shadow the mean-over-samples pass@1
                rows.append((pid, f"pass@{k}", pass_at_k_first(correct, k)))
            rows.append((pid, f"pass@{k}_unbiased", pass_at_k_unbiased(n, sum(correct), k)))
            rows.append((pid, f"maj@{k}", maj_at_k(answers, correct, k, seed=seed + position)))
    return pd.DataFrame(rows, columns=["problem_id", "metric", "value"])


def summarize(samples: pd.DataFrame, ks: Sequence[int], *, n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Metric rows (metric, value, ci_low, ci_high, problems, samples_per_problem); CIs bootstrap over problems."""
    per_problem = per_problem_metrics(samples, ks, seed=seed)
    n_samples = int(samples.groupby("problem_id")["sample"].count().min())
    rows = []
    for metric, group in per_problem.groupby("metric", sort=False):
        mean, low, high = bootstrap_ci(group["value"].tolist(), n_resamples=n_resamples, seed=seed)
        rows.append(
            {
                "metric": metric,
                "value": mean,
                "ci_low": low,
                "ci_high": high,
                "problems": len(group),
                "samples_per_problem": n_samples,
            }
        )
    return pd.DataFrame(rows)


def run_eval(
    backend,
    problems: Sequence[Problem],
    *,
    samples_csv: Path,
    summary_csv: Path,
    labels: dict[str, object],
    n: int,
    ks: Sequence[int],
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    problems_per_batch: int = 8,
) -> pd.DataFrame:
    """Evaluate one model on one benchmark; resumable through ``samples_csv``.

    ``labels`` fills the model / method / seed / benchmark columns. Problems are sampled in
    batches of ``problems_per_batch``; each finished batch is appended to the CSV at once,
    so an interrupted run loses at most one batch. The seed of a batch depends only on its
    first problem's position, so a resumed run samples what an uninterrupted one would.
    """
    samples_csv.parent.mkdir(parents=True, exist_ok=True)
    done: set[str] = set()
    if samples_csv.exists() and samples_csv.stat().st_size > 0:
        previous = pd.read_csv(samples_csv, dtype={"problem_id": str}, keep_default_na=False, na_values=[""])
        counts = previous.groupby("problem_id")["sample"].count()
        done = set(counts[counts == n].index)
        finished = previous[previous.problem_id.isin(done)]
        if len(finished) < len(previous):  # drop a half-written batch; it is sampled again
            finished.to_csv(samples_csv, index=False)
    todo = [i for i, p in enumerate(problems) if p.id not in done]
    new_file = not samples_csv.exists() or samples_csv.stat().st_size == 0
    with samples_csv.open("a", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=SAMPLE_COLUMNS)
        if new_file:
            writer.writeheader()
        bar = tqdm(
            total=len(problems),
            initial=len(problems) - len(todo),
            desc=f"eval {labels.get('benchmark', '')}",
            unit="problem",
        )
        for start in range(0, len(todo), problems_per_batch):
            chunk = todo[start : start + problems_per_batch]
            scored = sample_and_score(
                backend,
                [problems[i] for i in chunk],
                n=n,
                temperature=temperature,
                top_p=top_p,
                max_new_tokens=max_new_tokens,
                seed=seed * 1_000_003 + chunk[0],
            )
            for s in scored:
                writer.writerow(
                    {
                        **labels,
                        "problem_id": problems[chunk[s.problem_index]].id,
                        "sample": s.sample,
                        "correct": int(s.correct),
                        "reward": 1.0 if s.correct else -1.0,
                        "extracted": s.extracted,
                        "response_tokens": s.response_tokens,
                        "response": s.text,
                    }
                )
            fh.flush()
            bar.update(len(chunk))
        bar.close()
    samples = pd.read_csv(
        samples_csv, dtype={"problem_id": str, "extracted": str}, keep_default_na=False, na_values=[""]
    )
    summary = summarize(samples, ks, seed=seed)
    for key, value in reversed(labels.items()):
        summary.insert(0, key, value)
    summary_csv.parent.mkdir(parents=True, exist_ok=True)
    summary.to_csv(summary_csv, index=False)
    return summary
