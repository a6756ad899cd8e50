"""Tables and figures for the notebooks: pipeline outputs in, DataFrames and matplotlib figures out.

A table's value is the mean over seeds and problems; its confidence interval is a two-level
percentile bootstrap that resamples the problems and each method's seeds (``hierarchical_bootstrap``),
so both the choice of problems and the run-to-run variation of training are in it. The paper's numbers
(../shared/docs/g2rl-paper.md, section 8) sit beside ours.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from g2rl_core import paths
from g2rl_core.config import Profile
from g2rl_core.evaluation.runner import per_problem_metrics
from g2rl_core.maths.methods import METHODS
from g2rl_core.maths.shaping import SHAPING_VARIANTS
from g2rl_core.provenance import PINNED_CPU_ENV, RUN_INFO, format_seconds

#: The untrained model's row in every table and figure ("base" in the eval CSVs).
BASE = "base"
BASE_LABEL, BASE_COLOR = "Base model", "#7f7f7f"


def method_order() -> list[str]:
    """Row and legend order: the base model, then the methods in registry order."""
    return [BASE, *METHODS]


def method_label(name: str) -> str:
    return BASE_LABEL if name == BASE else METHODS[name].label if name in METHODS else name


def method_color(name: str) -> str | None:
    return BASE_COLOR if name == BASE else METHODS[name].color if name in METHODS else None


BENCHMARK_LABELS = {
    "math500": "MATH500",
    "amc23": "AMC",
    "aime24": "AIME24",
    "aime25": "AIME25",
    "gpqa_diamond": "GPQA",
    "mmlu_pro": "MMLU-Pro",
}

# Section 8 of the spec: Table 1, pass@1 / maj@16 / pass@16 (percent).
PAPER_TABLE1 = {
    "Qwen3-1.7B-Base": {
        "grpo": {
            "math500": (63.5, 73.2, 86.6),
            "amc23": (31.2, 42.0, 68.1),
            "aime24": (7.5, 14.8, 24.4),
            "aime25": (4.6, 6.8, 22.2),
        },
        "entropy": {
            "math500": (64.3, 74.1, 86.7),
            "amc23": (32.2, 42.3, 65.7),
            "aime24": (9.6, 17.2, 23.3),
            "aime25": (4.6, 6.9, 24.5),
        },
        "evol": {
            "math500": (64.3, 73.7, 86.9),
            "amc23": (32.2, 43.9, 66.2),
            "aime24": (8.4, 15.8, 27.3),
            "aime25": (5.3, 7.9, 21.6),
        },
        "g2rl": {
            "math500": (66.2, 76.8, 88.7),
            "amc23": (33.9, 44.8, 68.5),
            "aime24": (10.1, 17.4, 28.0),
            "aime25": (7.5, 11.4, 24.8),
        },
    },
    "Qwen3-4B-Base": {
        "grpo": {
            "math500": (76.9, 81.6, 90.8),
            "amc23": (47.9, 56.2, 75.1),
            "aime24": (12.4, 18.2, 31.1),
            "aime25": (10.0, 16.2, 32.5),
        },
        "entropy": {
            "math500": (79.0, 87.2, 93.2),
            "amc23": (50.5, 63.7, 79.5),
            "aime24": (17.8, 25.4, 40.0),
            "aime25": (16.1, 24.4, 41.5),
        },
        "evol": {
            "math500": (80.0, 87.7, 93.5),
            "amc23": (50.9, 62.0, 81.9),
            "aime24": (19.4, 28.2, 42.4),
            "aime25": (17.5, 23.9, 39.8),
        },
        "g2rl": {
            "math500": (80.8, 87.8, 93.6),
            "amc23": (52.3, 63.8, 82.0),
            "aime24": (19.9, 28.7, 43.8),
            "aime25": (20.1, 29.0, 45.0),
        },
    },
}
# Table 2 (Qwen3-4B-Base): GPQA pass@1 / maj@16 / pass@16 / pass@32, MMLU-Pro micro-average.
PAPER_TABLE2 = {
    "grpo": ((37.2, 39.2, 81.2, 85.2), 56.15),
    "entropy": ((37.8, 42.8, 88.6, 92.6), 57.14),
    "evol": ((37.4, 42.1, 88.9, 93.7), 57.17),
    "g2rl": ((38.7, 44.0, 89.2, 93.5), 58.47),
}
# Figure 3: mean Phi cosine, share of negative Phi-cosine pairs, mean semantic cosine.
PAPER_FIG3 = {
    "phi_cos_mean": {"grpo": 0.208, "g2rl": 0.064},
    "negative_pair_share": {"grpo": 0.0591, "evol": 0.189, "g2rl": 0.2809},
    "semantic_cos_mean": {"grpo": 0.738, "g2rl": 0.769},
}
# the paper's numbers each profile's tables stand beside (paper-smoke: paper-1_7b at toy size)
PAPER_MODEL_FOR_PROFILE = {
    "tiny": "Qwen3-1.7B-Base",
    "tiny-direct": "Qwen3-1.7B-Base",
    "paper-1_7b": "Qwen3-1.7B-Base",
    "paper-4b": "Qwen3-4B-Base",
    "paper-smoke": "Qwen3-1.7B-Base",
}


def style() -> None:
    """One consistent figure style for every notebook."""
    plt.rcParams.update(
        {
            "figure.dpi": 110,
            "savefig.dpi": 150,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "font.size": 10,
            "legend.frameon": False,
        }
    )


# --- loading pipeline outputs ----------------------------------------------------------------------


def load_samples(eval_dir: str | Path) -> pd.DataFrame:
    """Every samples_<benchmark>.csv under ``eval_dir`` (base/ and <method>/seed<k>/), concatenated."""
    frames = [
        pd.read_csv(path, dtype={"problem_id": str, "extracted": str}, keep_default_na=False, na_values=[""])
        for path in sorted(Path(eval_dir).rglob("samples_*.csv"))
    ]
    if not frames:
        raise FileNotFoundError(f"no samples_*.csv under {eval_dir}; run the eval stages first (dvc repro eval)")
    return pd.concat(frames, ignore_index=True)


def load_logs(runs_dir: str | Path, methods: Sequence[str], seeds: Sequence[int]) -> pd.DataFrame:
    """Train and val rows of every run's log.jsonl, with method and seed columns."""
    rows = []
    for method in methods:
        for seed in seeds:
            path = Path(runs_dir) / method / f"seed{seed}" / "log.jsonl"
            if not path.exists():
                raise FileNotFoundError(f"no training log at {path}; run the train stages first (dvc repro train)")
            for line in path.read_text().splitlines():
                rows.append({"method": method, "seed": seed, **json.loads(line)})
    return pd.DataFrame(rows)


# --- tables ----------------------------------------------------------------------------------------


def per_seed_metrics(run_samples: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Rows (seed, metric, problem_id, value): each seed's per-problem metrics of one method on one benchmark."""
    ks = sorted({int(m.split("@")[1].split("_")[0]) for m in metrics if "@" in m})
    per_seed = [
        per_problem_metrics(run, ks, seed=int(seed)).assign(seed=seed) for seed, run in run_samples.groupby("seed")
    ]
    return pd.concat(per_seed, ignore_index=True)


def seed_problem_matrix(rows: pd.DataFrame, problems: Sequence[str], values: str = "value") -> np.ndarray:
    """[seeds, problems] of column ``values`` of rows (seed, problem_id, ...), columns in the order of ``problems``."""
    table = rows.pivot(index="seed", columns="problem_id", values=values)
    return table.reindex(columns=list(problems)).to_numpy(dtype=float)


def hierarchical_bootstrap(
    terms: Sequence[tuple[float, np.ndarray]], *, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(estimate, low, high) of sum_i w_i * mean(V_i), with seeds and problems as sources of variance.

    ``terms`` are (w_i, V_i) with V_i a [seeds_i, problems] matrix of per-problem values, the same
    problems in the same column order for every term. Each resample draws the problems with
    replacement once, shared by every term (the comparison is paired over problems), and each term's
    seeds with replacement, independently (every method's seeds are its own training runs); the
    interval is the percentile interval of the resampled statistic. With 3 seeds the seed level is
    resampled from 3 values, so the interval is, if anything, too narrow on that level.
    """
    rng = np.random.default_rng(seed)
    problems = terms[0][1].shape[1]
    if any(v.shape[1] != problems for _, v in terms) or problems == 0:
        raise ValueError("hierarchical_bootstrap needs the same, non-empty problem columns in every term")
    estimate = float(sum(w * v.mean() for w, v in terms))
    picks = rng.integers(0, problems, size=(n_resamples, problems))
    stats = np.zeros(n_resamples)
    for w, v in terms:
        seeds = rng.integers(0, v.shape[0], size=(n_resamples, v.shape[0]))
        # mean over the drawn seeds and the drawn problems of each resample
        stats += w * v[seeds[:, :, None], picks[:, None, :]].mean(axis=(1, 2))
    tail = (1 - confidence) / 2
    low, high = np.quantile(stats, [tail, 1 - tail])
    return estimate, float(low), float(high)


def paired_differences(
    samples: pd.DataFrame, metrics: Sequence[str], *, baseline: str = "grpo", n_resamples: int = 2000
) -> pd.DataFrame:
    """Each method minus ``baseline`` per benchmark and metric, in points, with a hierarchical bootstrap CI.

    The difference of the two methods' means over seeds and problems; the interval resamples the
    problems (paired: both methods keep the same problems) and each method's seeds
    (``hierarchical_bootstrap``). ``significant`` is True when the 95% interval excludes 0.
    """
    rows = []
    for benchmark, bench in samples.groupby("benchmark", sort=False):
        if baseline not in set(bench.method):
            continue
        base = per_seed_metrics(bench[bench.method == baseline], metrics)
        for method in [m for m in METHODS if m != baseline and m in set(bench.method)]:
            other = per_seed_metrics(bench[bench.method == method], metrics)
            for metric in metrics:
                problems = sorted(
                    set(other.problem_id[other.metric == metric]) & set(base.problem_id[base.metric == metric])
                )
                if not problems:
                    continue
                terms = [
                    (1.0, seed_problem_matrix(other[other.metric == metric], problems)),
                    (-1.0, seed_problem_matrix(base[base.metric == metric], problems)),
                ]
                mean, low, high = hierarchical_bootstrap(terms, n_resamples=n_resamples)
                rows.append(
                    {
                        "method": method_label(method),
                        "baseline": method_label(baseline),
                        "benchmark": BENCHMARK_LABELS.get(benchmark, benchmark),
                        "metric": metric,
                        "difference": round(100 * mean, 1),
                        "ci_low": round(100 * low, 1),
                        "ci_high": round(100 * high, 1),
                        "significant": bool(low > 0 or high < 0),
                        "problems": len(problems),
                        "seeds": other.seed.nunique(),
                    }
                )
    return pd.DataFrame(rows)


def metric_table(samples: pd.DataFrame, metrics: Sequence[str], *, n_resamples: int = 2000) -> pd.DataFrame:
    """Rows (method, benchmark, metric, value, ci_low, ci_high, seeds, problems) in percent.

    The mean over seeds and problems, with a hierarchical bootstrap interval over both
    (``hierarchical_bootstrap``).
    """
    rows = []
    for (method, benchmark), group in samples.groupby(["method", "benchmark"], sort=False):
        per_seed = per_seed_metrics(group, metrics)
        for metric in metrics:
            problems = sorted(set(per_seed.problem_id[per_seed.metric == metric]))
            if not problems:
                continue
            matrix = seed_problem_matrix(per_seed[per_seed.metric == metric], problems)
            mean, low, high = hierarchical_bootstrap([(1.0, matrix)], n_resamples=n_resamples)
            rows.append(
                {
                    "method": method,
                    "benchmark": benchmark,
                    "metric": metric,
                    "value": 100 * mean,
                    "ci_low": 100 * low,
                    "ci_high": 100 * high,
                    "seeds": matrix.shape[0],
                    "problems": len(problems),
                }
            )
    columns = ["method", "benchmark", "metric", "value", "ci_low", "ci_high", "seeds", "problems"]
    return pd.DataFrame(rows, columns=columns)  # the columns even when no metric can be computed


def format_cell(value: float, low: float, high: float) -> str:
    return f"{value:.1f} [{low:.1f}, {high:.1f}]"


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub Markdown (pipe) table of ``frame`` without its index: ``DataFrame.to_markdown`` (tabulate).

    Every cell is ``str(value)`` as the frame holds it: tabulate's number parsing is off, so a
    formatted cell such as ``0.0`` or ``5.30`` is not rewritten (to ``0``, ``5.3``). Columns are padded
    to a common width.

    A column whose cells are the same in every row (of two or more) is left out and named under the
    table with its value, e.g. a benchmark no method ever solves; the CSV beside the table keeps it.
    The first column (the row labels) always stays.
    """
    constant = [c for c in frame.columns[1:] if len(frame) > 1 and frame[c].map(str).nunique(dropna=False) == 1]
    markdown = frame.drop(columns=constant).to_markdown(index=False, tablefmt="pipe", disable_numparse=True) + "\n"
    if constant:
        same = "; ".join(f"{c} = {frame[c].iloc[0]}" for c in constant)
        markdown += f"\nThe same in every row, so not shown: {same}.\n"
    return markdown


def table1(samples: pd.DataFrame, benchmarks: Sequence[str], profile: str, k: int = 16) -> pd.DataFrame:
    """Table 1: pass@1 / maj@k / pass@k per benchmark (columns) and method (rows), with CIs and the paper's numbers."""
    metrics = ["pass@1", f"maj@{k}", f"pass@{k}"]
    long = metric_table(samples[samples.benchmark.isin(benchmarks)], metrics)
    paper = PAPER_TABLE1[PAPER_MODEL_FOR_PROFILE[profile]]
    rows = []
    for method in [m for m in method_order() if m in set(long.method)]:
        row = {"method": method_label(method)}
        for bench in benchmarks:
            for metric in metrics:
                hit = long[(long.method == method) & (long.benchmark == bench) & (long.metric == metric)]
                label = f"{BENCHMARK_LABELS.get(bench, bench)} {metric}"
                row[label] = format_cell(*hit[["value", "ci_low", "ci_high"]].iloc[0]) if len(hit) else "n/a"
            paper_values = paper.get(method, {}).get(bench)
            row[f"{BENCHMARK_LABELS.get(bench, bench)} paper ({PAPER_MODEL_FOR_PROFILE[profile]})"] = (
                " / ".join(f"{v:.1f}" for v in paper_values) if paper_values else "n/a"
            )
        rows.append(row)
    return pd.DataFrame(rows)


def table2(
    samples: pd.DataFrame, choice_benchmark: str, micro_benchmark: str, ks: Sequence[int] = (16, 32)
) -> pd.DataFrame:
    """Table 2: pass@1 / maj@16 / pass@16 / pass@32 (``ks``) on the GPQA role and the MMLU-Pro micro-average."""
    metrics = ["pass@1", f"maj@{ks[0]}", *(f"pass@{k}" for k in ks)]
    gpqa = metric_table(samples[samples.benchmark == choice_benchmark], metrics)
    mmlu = metric_table(samples[samples.benchmark == micro_benchmark], ["pass@1"])
    rows = []
    for method in [m for m in method_order() if m in set(gpqa.method)]:
        row = {"method": method_label(method)}
        for metric in metrics:
            hit = gpqa[(gpqa.method == method) & (gpqa.metric == metric)]
            row[f"GPQA {metric}"] = format_cell(*hit[["value", "ci_low", "ci_high"]].iloc[0]) if len(hit) else "n/a"
        hit = mmlu[mmlu.method == method]
        row["MMLU-Pro pass@1 (micro)"] = (
            format_cell(*hit[["value", "ci_low", "ci_high"]].iloc[0]) if len(hit) else "n/a"
        )
        gp, mm = PAPER_TABLE2.get(method, (None, None))
        row["paper GPQA"] = " / ".join(f"{v:.1f}" for v in gp) if gp else "n/a"
        row["paper MMLU-Pro"] = f"{mm:.2f}" if mm else "n/a"
        rows.append(row)
    return pd.DataFrame(rows)


# --- figures ----------------------------------------------------------------------------------------


def band_plot(ax, frame: pd.DataFrame, x: str, y: str, methods: Sequence[str]) -> None:
    """One line per method (mean over seeds) with a band of +-1 standard deviation over seeds."""
    for method in methods:
        sub = frame[frame.method == method].dropna(subset=[y])
        if sub.empty:
            continue
        stats = sub.groupby(x)[y].agg(["mean", "std"]).fillna(0.0)
        color = method_color(method)
        ax.plot(stats.index, stats["mean"], color=color, label=method_label(method))
        ax.fill_between(
            stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"], color=color, alpha=0.15
        )


def figure2(logs: pd.DataFrame, methods: Sequence[str], val_key: str, smooth: int = 5):
    """Training dynamics: validation mean@k, mean response length and entropy against step."""
    style()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    val = logs[logs.kind == "val"]
    train = logs[logs.kind == "train"].copy()
    for column in ["response_length_mean", "entropy_mean"]:  # a centred rolling mean per run
        train[column] = train.groupby(["method", "seed"])[column].transform(
            lambda s: s.rolling(smooth, min_periods=1, center=True).mean()
        )
    val = val.assign(**{val_key: 100 * val[val_key]})  # percent, as in the tables
    band_plot(axes[0], val, "step", val_key, methods)
    band_plot(axes[1], train, "step", "response_length_mean", methods)
    band_plot(axes[2], train, "step", "entropy_mean", methods)
    axes[0].set(
        xlabel="training step",
        ylabel=f"validation {val_key.replace('val_mean_at_', 'mean@')} accuracy (%)",
        title="Validation accuracy",
    )
    axes[1].set(xlabel="training step", ylabel="mean response length (tokens)", title="Response length")
    axes[2].set(xlabel="training step", ylabel="policy entropy (nats / token)", title="Entropy")
    seeds = logs.groupby("method")["seed"].nunique().max()
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(f"lines: mean over {seeds} seeds; bands: +-1 s.d. over seeds", fontsize=9, y=0.99)
    fig.tight_layout(rect=(0, 0.08, 1, 0.96))  # room for the legend below the panels, never over data
    return fig


def figure3(pairs: pd.DataFrame, methods: Sequence[str]):
    """Geometry: pairwise Phi cosine, pairwise semantic cosine, share of negative Phi-cosine pairs."""
    style()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    present = [m for m in methods if m in set(pairs.method)]
    for ax, column, title in [
        (axes[0], "phi_cos", "Gradient-feature (Phi) cosine"),
        (axes[1], "semantic_cos", "Semantic cosine"),
    ]:
        data = [pairs.loc[pairs.method == m, column].to_numpy() for m in present]
        parts = ax.violinplot(data, showmeans=True, showextrema=False)
        for body, m in zip(parts["bodies"], present):
            body.set_facecolor(method_color(m))
            body.set_alpha(0.5)
        ax.set_xticks(range(1, len(present) + 1), [method_label(m) for m in present])
        ax.axhline(0, color="black", lw=0.8)
        ax.set(ylabel="pairwise cosine (within problem)", title=title)
    share = pairs.assign(neg=pairs.phi_cos < 0).groupby(["method", "seed"])["neg"].mean().reset_index()
    for i, m in enumerate(present):
        values = 100 * share.loc[share.method == m, "neg"]
        axes[2].bar(i, values.mean(), color=method_color(m), alpha=0.7)
        axes[2].scatter([i] * len(values), values, color="black", s=12, zorder=3)
    axes[2].set_xticks(range(len(present)), [method_label(m) for m in present])
    axes[2].set(ylabel="negative Phi-cosine pairs (%)", title="Opposing directions (bars: mean, dots: seeds)")
    # the paper's values (Figure 3; it does not name the model size) as black diamonds
    marks = [
        (axes[0], "phi_cos_mean", 1, 1),
        (axes[1], "semantic_cos_mean", 1, 1),
        (axes[2], "negative_pair_share", 0, 100),
    ]
    for ax, key, first, scale in marks:
        for i, m in enumerate(present):
            if m in PAPER_FIG3[key]:
                ax.scatter(i + first, scale * PAPER_FIG3[key][m], marker="D", color="black", s=28, zorder=4)
    paper = plt.Line2D([], [], marker="D", color="black", linestyle="none", label="the paper's value (Figure 3)")
    fig.legend(handles=[paper], loc="lower center", bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


GEOMETRY_QUANTITIES = {  # Figure 3's per-problem quantities: column of the pairs, how a problem's pairs reduce
    "phi_cos_mean": ("phi_cos", "mean"),
    "negative_pair_share": ("phi_cos", lambda s: float((s < 0).mean())),
    "semantic_cos_mean": ("semantic_cos", "mean"),
}


def geometry_summary(pairs: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """Our mean Phi cosine, negative-pair share and semantic cosine per method, beside the paper's.

    Each cell is the mean over seeds with [min, max] over seeds in brackets (not a confidence
    interval). The paper does not name the model size of its Figure 3.
    """
    per_seed = pairs.groupby(["method", "seed"]).agg(**GEOMETRY_QUANTITIES)
    rows = []
    for method in [m for m in methods if m in per_seed.index.get_level_values(0)]:
        sub = per_seed.loc[method]
        row = {"method": method_label(method)}
        for column in GEOMETRY_QUANTITIES:
            scale = 100 if column == "negative_pair_share" else 1
            vals = sub[column] * scale
            row[column] = (
                f"{vals.mean():.3f} [{vals.min():.3f}, {vals.max():.3f}]"
                if scale == 1
                else f"{vals.mean():.2f}% [{vals.min():.2f}, {vals.max():.2f}]"
            )
            paper = PAPER_FIG3[column].get(method)
            row[f"paper {column} (model size not stated)"] = (
                "n/a" if paper is None else (f"{paper:.3f}" if scale == 1 else f"{100 * paper:.2f}%")
            )
        rows.append(row)
    return pd.DataFrame(rows)


def geometry_differences(
    pairs: pd.DataFrame, methods: Sequence[str], *, baseline: str = "grpo", n_resamples: int = 2000
) -> pd.DataFrame:
    """Figure 3's quantities, each method minus ``baseline``, with a hierarchical bootstrap 95% CI.

    Per seed and problem: the mean Phi-cosine, the share of negative Phi-cosines and the mean
    semantic cosine over the problem's within-group pairs. The difference of the two methods' means
    over seeds and problems; the interval resamples the problems (paired: every policy samples the
    same geometry problems) and each method's seeds (``hierarchical_bootstrap``). Only problems
    that every seed of both methods has are compared (``problems``); a method without one is left
    out. The negative share is in points. Empty when ``baseline`` has no pairs.
    """
    per_problem = pairs.groupby(["method", "seed", "problem_id"]).agg(**GEOMETRY_QUANTITIES).reset_index()
    present = set(per_problem.method)
    if baseline not in present:
        return pd.DataFrame()
    base = per_problem[per_problem.method == baseline]
    rows = []
    for method in [m for m in methods if m != baseline and m in present]:
        other = per_problem[per_problem.method == method]
        candidates = sorted(set(other.problem_id) | set(base.problem_id))
        complete = ~np.isnan(seed_problem_matrix(other, candidates, "phi_cos_mean")).any(axis=0)
        complete &= ~np.isnan(seed_problem_matrix(base, candidates, "phi_cos_mean")).any(axis=0)
        problems = [p for p, keep in zip(candidates, complete) if keep]
        if not problems:
            continue
        for column in GEOMETRY_QUANTITIES:
            scale = 100 if column == "negative_pair_share" else 1
            terms = [
                (1.0, seed_problem_matrix(other, problems, column)),
                (-1.0, seed_problem_matrix(base, problems, column)),
            ]
            mean, low, high = hierarchical_bootstrap(terms, n_resamples=n_resamples)
            rows.append(
                {
                    "method": method_label(method),
                    "baseline": method_label(baseline),
                    "quantity": column,
                    "difference": round(scale * mean, 3),
                    "ci_low": round(scale * low, 3),
                    "ci_high": round(scale * high, 3),
                    "significant": bool(low > 0 or high < 0),
                    "problems": len(problems),
                    "seeds": int(other.seed.nunique()),
                }
            )
    return pd.DataFrame(rows)


def significance_summary(folder: Path) -> list[str]:
    """The "what the results show" section, read from the paired comparisons and Figure 3's numbers."""
    parts = ["## What these results show\n"]
    frames = [pd.read_csv(f) for f in sorted(folder.glob("table*_vs_grpo.csv")) if f.stat().st_size > 1]
    if frames:
        diffs = pd.concat(frames, ignore_index=True)
        significant = diffs[diffs.significant]
        parts.append(
            f"Against GRPO (bootstrap over problems, paired, and seeds): {len(significant)} of {len(diffs)} "
            "differences have a 95% interval that excludes 0"
            + (":" if len(significant) else "; every other difference is within noise.")
        )
        for row in significant.itertuples(index=False):
            parts.append(
                f"- {row.method} vs {row.baseline}, {row.benchmark} {row.metric}: "
                f"{row.difference:+.1f} points [{row.ci_low:+.1f}, {row.ci_high:+.1f}]"
            )
        # Multiplicity: each 95% interval misses a true difference of 0 about 5% of the time. Intervals of
        # width 0 (every sample right, or every sample wrong, for both methods) cannot.
        informative = int((diffs.ci_high > diffs.ci_low).sum())
        parts.append(
            f"\nMany comparisons: {informative} of the {len(diffs)} intervals have a non-zero width, and with no true "
            f"difference from GRPO about {0.05 * informative:.1f} of them would exclude 0 by chance alone (5% each), "
            "so a lone difference that excludes 0 is weak evidence by itself."
        )
        parts.append("")
    geometry = folder / "fig3_geometry.csv"
    if geometry.exists():
        table = pd.read_csv(geometry)
        grpo = table[table.method == method_label("grpo")]
        if len(grpo):
            cosine = float(str(grpo.phi_cos_mean.iloc[0]).split()[0])
            negative = float(str(grpo.negative_pair_share.iloc[0]).split("%")[0])
            near_random = abs(cosine) < 0.05 and 40 <= negative <= 60
            parts.append(
                f"Phi geometry under GRPO: mean Phi-cosine {cosine:.3f}, {negative:.1f}% negative pairs, against "
                f"the paper's {PAPER_FIG3['phi_cos_mean']['grpo']:.3f} and "
                f"{100 * PAPER_FIG3['negative_pair_share']['grpo']:.2f}%."
                + (
                    " That is near-random (a cosine near 0 and about half the pairs negative): on this profile "
                    "Figure 3 says nothing about the method."
                    if near_random
                    else ""
                )
                + "\n"
            )
    geometry_diffs = folder / "fig3_geometry_vs_grpo.csv"
    if geometry_diffs.exists() and geometry_diffs.stat().st_size > 1:
        parts.append("Figure 3, each method minus GRPO (95% interval over problems, paired, and seeds):")
        for row in pd.read_csv(geometry_diffs).itertuples(index=False):
            unit = " points" if row.quantity == "negative_pair_share" else ""
            parts.append(
                f"- {row.method}, {row.quantity}: {row.difference:+.3f}{unit} [{row.ci_low:+.3f}, {row.ci_high:+.3f}]"
                + (" (excludes 0)" if row.significant else "")
            )
        parts.append("")
    return parts


def stage_records(profile: str, root: str | Path = ".") -> list[dict]:
    """Every stage's ``run_info.json`` (machine, command, wall time) of the profile's pipeline under ``root``."""
    root = Path(root)
    folders = [
        paths.embedded_build(profile),
        paths.embedded_build("tiny"),  # the phi_sweep stage's base
        paths.runs_dir(profile),
        paths.ablation_runs_dir(profile),
        paths.ARTIFACTS / profile,
        paths.phi_sweep_dir(),
    ]
    records = []
    for folder in dict.fromkeys(root / f for f in folders):
        for path in sorted(folder.rglob(RUN_INFO)) if folder.is_dir() else []:
            try:
                records.append({"path": str(path.parent.relative_to(root)), **json.loads(path.read_text())})
            except (json.JSONDecodeError, TypeError) as err:
                raise ValueError(f"{path}: not a run_info record ({err})") from None
    return records


def provenance_section(records: Sequence[dict]) -> list[str]:
    """ "Machine and time": the machine(s) the stages ran on and the wall time per command."""
    if not records:
        return []
    frame = pd.DataFrame(records)
    parts = ["## Machine and time\n", "Read from each stage's `run_info.json` (written by the stage itself).\n"]
    keys = ["cpu", "usable_cores", "cpu_capability", "threads", "blas"]
    for machine, group in frame.groupby(keys, sort=False, dropna=False):
        cpu, cores, capability, threads, blas = machine
        pinned = all(r == PINNED_CPU_ENV for r in group["pinned_env"])
        if not pinned:
            paths = "NOT pinned: other machines may round differently"
        elif "intel" in str(cpu).lower():
            paths = "pinned to AVX2: torch kernels and MKL's AVX2 branch"
        else:  # MKL honours MKL_CBWR's named branches on Intel CPUs only
            paths = "torch kernels pinned to AVX2; MKL keeps its own branch on this non-Intel CPU"
        torch_versions = sorted({v.get("torch", "?") for v in group["versions"]})
        parts.append(
            f"- {len(group)} stages on {cpu}, {cores} usable cores, {threads} torch threads, {capability} kernels "
            f"({paths}), "
            f"{blas}, torch {', '.join(torch_versions)}"
        )
    times = frame.groupby("command")["wall_seconds"].agg(["count", "sum", "median"]).sort_values("sum", ascending=False)
    parts += ["", "| command | stages | wall time, total | median per stage |", "| --- | --- | --- | --- |"]
    for command, row in times.iterrows():
        total, median = format_seconds(row["sum"]), format_seconds(row["median"])
        parts.append(f"| {command} | {int(row['count'])} | {total} | {median} |")
    parts.append(f"| all | {len(frame)} | {format_seconds(frame.wall_seconds.sum())} | |\n")
    parts.append(
        "The notebook stages are not timed here. A training run resumed from its checkpoint counts every process "
        "since it last started afresh (`processes` in its run_info.json); a record without that field is its last "
        "process's time alone.\n"
    )
    return parts


def write_results_index(results_root: str | Path, profile: str) -> Path:
    """results/README.md: the profile's tables inline and its figures embedded, from the notebooks' outputs."""
    root = Path(results_root)
    folder = root / profile
    parts = [
        f"# Results: `{profile}` profile\n",
        "Generated by `dvc repro` (stage `results_index`) from the notebooks' outputs in "
        f"[`{profile}/`]({profile}/); executed notebooks are in [`{profile}/notebooks/`]({profile}/notebooks/). "
        "In Tables 1 and 2, brackets are 95% bootstrap confidence intervals that resample problems and "
        "seeds; in Figure 3's table they are [min, max] over seeds. The paper's numbers sit beside "
        "ours, with the paper's model named in the column. On the tiny profiles, synthetic splits play the "
        "benchmarks (see the repository README), so compare the ordering of methods, not the values.\n",
    ]
    sections = [
        ("Table 1: main results", "table1_main_results.md", None),
        ("Figure 2: training dynamics", None, "fig2_training_dynamics.png"),
        ("Figure 3: geometry", "fig3_geometry.md", "fig3_geometry.png"),
        ("Table 2: general reasoning", "table2_general_reasoning.md", None),
        ("Ablation: eq. 12 readings and lambda", "ablation_shaping.md", "ablation_shaping.png"),
        ("Beyond the paper: does Phi predict the true update direction?", "phi_vs_gradient.md", "phi_vs_gradient.png"),
        ("Beyond the paper: what drives the Phi geometry", "phi_sweep.md", "phi_sweep.png"),
    ]
    for title, table, figure in sections:
        if table and not (folder / table).exists():  # a stage this profile did not run
            continue
        parts.append(f"## {title}\n")
        if table:
            text = (folder / table).read_text().split("\n", 2)[-1]  # drop the file's own heading
            parts.append(text.strip() + "\n")
        if figure:
            parts.append(f"![{title}]({profile}/{figure})\n")
    parts += significance_summary(folder)
    parts += provenance_section(stage_records(profile))
    out = root / "README.md"
    out.write_text("\n".join(parts))
    return out


# --- the shaping ablation (beyond the paper) -------------------------------------------------------


def ablation_runs(
    params: dict, profile: Profile, seeds: Sequence[int], runs_dir: Path | None = None, ablation_dir: Path | None = None
) -> list[tuple[str, float, int, Path]]:
    """(variant, lam, seed, run directory) of every run of the ablation, for each of ``seeds``:
    params.yaml's ``ablation`` grid, the main G2RL runs (their own variant and lam) and the GRPO runs, which are
    lam = 0 for both readings of eq. 12."""
    shaping = profile.train_config("g2rl", 0).shaping
    runs = []
    for seed in seeds:
        for point in params.get("ablation", []):
            run = paths.ablation_run_dir(profile.name, point["variant"], point["lam"], seed, root=ablation_dir)
            runs.append((point["variant"], float(point["lam"]), seed, run))
        runs.append((shaping.variant, shaping.lam, seed, paths.run_dir(profile.name, "g2rl", seed, root=runs_dir)))
        runs += [(v, 0.0, seed, paths.run_dir(profile.name, "grpo", seed, root=runs_dir)) for v in SHAPING_VARIANTS]
    return runs


def seed_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the mean over seeds and its Student-t confidence interval (NaN bounds for one seed).

    Seeds are independent runs, so the t interval is exact under normality; with 3 seeds its half-width
    is 2.48 standard deviations (t quantile 4.30 / sqrt 3), which is why the ablation's intervals are wide."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return mean, mean - half, mean + half


ABLATION_SCORE = "final validation accuracy (%)"


def ablation_table(runs: Sequence[tuple[str, float, int, Path]], val_key: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per (variant, lam): the final validation accuracy in %, mean over seeds with its 95% t
    interval and the per-seed values; the validation curves of every run)."""
    rows, curves = [], []
    for variant, lam, seed, run in runs:
        log_path = Path(run) / "log.jsonl"
        if not log_path.exists():
            raise FileNotFoundError(f"no training log at {log_path}; run its stage first (dvc repro ablation train)")
        log = [json.loads(line) for line in log_path.read_text().splitlines()]
        val = pd.DataFrame([r for r in log if r["kind"] == "val"])
        rows.append({"variant": variant, "lam": lam, "seed": seed, "score": 100 * val[val_key].iloc[-1]})
        curves.append(val.assign(variant=variant, lam=lam, seed=seed))
    per_run = pd.DataFrame(rows).drop_duplicates(["variant", "lam", "seed"])
    curves = pd.concat(curves, ignore_index=True).drop_duplicates(["variant", "lam", "seed", "step"])
    last = curves.groupby(["variant", "lam", "seed"])["step"].max()
    if last.nunique() > 1:  # an unfinished run would be compared at another step
        (variant, lam, seed), step = last.idxmin(), last.min()
        raise ValueError(
            f"ablation run {variant} lam={lam} seed {seed} ends at step {step}, others at {last.max()}: "
            "finish it (dvc repro) before the ablation is compared"
        )
    table = []
    for (variant, lam), group in per_run.groupby(["variant", "lam"], sort=True):
        mean, low, high = seed_interval(group["score"].tolist())
        table.append(
            {
                "variant": variant,
                "lam": lam,
                ABLATION_SCORE: format_cell(mean, low, high) if len(group) > 1 else f"{mean:.1f} (one seed)",
                "mean": round(mean, 2),
                "ci_low": round(low, 2),
                "ci_high": round(high, 2),
                "seeds": len(group),
                "per seed": ", ".join(f"{v:.1f}" for v in group.sort_values("seed")["score"]),
            }
        )
    return pd.DataFrame(table), curves


def ablation_figure(table: pd.DataFrame, curves: pd.DataFrame, val_key: str):
    """Final validation accuracy against lambda per reading (mean over seeds, 95% t interval, each seed a
    faint dot), and the seed-averaged validation curves of the shaped runs."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    finals = curves.sort_values("step").groupby(["variant", "lam", "seed"]).tail(1)
    for variant, marker, shift in [("equation", "o", -0.02), ("centered", "s", 0.02)]:
        sub = table[table.variant == variant]
        yerr = np.array([sub["mean"] - sub["ci_low"], sub["ci_high"] - sub["mean"]]).clip(min=0)
        line = axes[0].errorbar(sub["lam"] + shift, sub["mean"], yerr=yerr, marker=marker, capsize=3, label=variant)
        dots = finals[finals.variant == variant]
        axes[0].scatter(dots["lam"] + shift, 100 * dots[val_key], s=8, alpha=0.35, color=line[0].get_color())
    axes[0].set(xlabel="lambda", ylabel=f"final validation {val_key} (%)", title="Shaping strength (95% t CI, seeds)")
    axes[0].legend()
    for (variant, lam), curve in curves[curves.lam > 0].groupby(["variant", "lam"], sort=True):
        style = "-" if variant == "equation" else "--"
        mean = curve.groupby("step")[val_key].mean()
        axes[1].plot(mean.index, 100 * mean.values, style, label=f"{variant}, lam={lam:g}")
    axes[1].set(xlabel="training step", ylabel="validation accuracy (%)", title="Validation (mean over seeds)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig
