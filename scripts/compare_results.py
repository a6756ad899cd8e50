"""Do a rerun's results draw the committed conclusions? Compare two copies of results/<profile>/.

A rerun on another machine (or with another CPU code path) trains other weights: the numbers move by
run-to-run noise. What should come back are the conclusions, within the stated uncertainty. This
script compares a rerun's tables (e.g. results/tiny after `dvc repro` here or elsewhere) with the
committed ones: the same files at a git revision (default HEAD; under results/, in the folder of the
rerun folder's name), or in another folder:

- **Differences from GRPO** (Tables 1 and 2, ``*_vs_grpo.csv``): for every method, benchmark and
  metric, both differences with their 95% intervals, whether each excludes 0, and whether the rerun's
  difference lies inside the committed interval. A *contradiction* is a difference that excludes 0
  in both with opposite signs.
- **Every table cell with an interval** (``x [lo, hi]``, Tables 1-2, Figure 3, the ablation): the
  share of rerun values inside the committed interval, and the largest change.

    python scripts/compare_results.py results/tiny                      # against git HEAD
    python scripts/compare_results.py /elsewhere/results/tiny --against-dir results/tiny

Exit code 1 when a contradiction is found (``--check``), else 0. Files are read as CSV only.
"""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

#: A table cell "38.9 [34.7, 42.9]" or "52.38% [50.36, 53.81]": estimate and 95% interval.
CELL = re.compile(r"^\s*(-?\d+(?:\.\d+)?)%?\s*\[(-?\d+(?:\.\d+)?),\s*(-?\d+(?:\.\d+)?)\]\s*$")
VS_GRPO = ("table1_main_results_vs_grpo.csv", "table2_general_reasoning_vs_grpo.csv")
TABLES = ("table1_main_results.csv", "table2_general_reasoning.csv", "fig3_geometry.csv", "ablation_shaping.csv")
KEYS = ["method", "benchmark", "metric"]


def read_csv(source: str, name: str) -> pd.DataFrame | None:
    """``name`` from a folder, or from ``git:REV:PATH`` (a folder at a revision); None if absent."""
    if source.startswith("git:"):
        _, rev, folder = source.split(":", 2)
        shown = subprocess.run(["git", "show", f"{rev}:{folder}/{name}"], capture_output=True, text=True)
        return pd.read_csv(io.StringIO(shown.stdout)) if shown.returncode == 0 else None
    path = Path(source) / name
    return pd.read_csv(path) if path.is_file() else None


def compare_differences(committed: pd.DataFrame, rerun: pd.DataFrame) -> pd.DataFrame:
    """One row per method, benchmark and metric present in both: the two differences and what agrees."""
    both = committed.merge(rerun, on=KEYS, suffixes=("_committed", "_rerun"))
    both["inside"] = both["difference_rerun"].between(both["ci_low_committed"], both["ci_high_committed"])
    sign = both["difference_committed"] * both["difference_rerun"]
    both["contradiction"] = both["significant_committed"] & both["significant_rerun"] & (sign < 0)
    both["same_verdict"] = both["significant_committed"] == both["significant_rerun"]
    return both


def interval_cells(frame: pd.DataFrame) -> dict[tuple[str, str], tuple[float, float, float]]:
    """(row label, column) -> (estimate, low, high) for every cell written as 'x [lo, hi]'."""
    cells = {}
    for _, row in frame.iterrows():
        label = " ".join(str(row[c]) for c in frame.columns[:2] if not CELL.match(str(row[c])))
        for column, value in row.items():
            match = CELL.match(str(value))
            if match:
                cells[(label, str(column))] = tuple(float(g) for g in match.groups())
    return cells


def compare_cells(committed: pd.DataFrame, rerun: pd.DataFrame) -> pd.DataFrame:
    """Every interval cell present in both: committed estimate and interval, rerun estimate."""
    old, new = interval_cells(committed), interval_cells(rerun)
    rows = [
        dict(row=k[0], column=k[1], committed=old[k][0], low=old[k][1], high=old[k][2], rerun=new[k][0])
        for k in old
        if k in new
    ]
    out = pd.DataFrame(rows, columns=["row", "column", "committed", "low", "high", "rerun"])
    out["inside"] = (out["rerun"] >= out["low"]) & (out["rerun"] <= out["high"])
    return out


def report(committed: str, rerun: str) -> tuple[str, int]:
    """The comparison as Markdown, and the number of contradictions."""
    lines, contradictions = [], 0
    for name in VS_GRPO:
        old, new = read_csv(committed, name), read_csv(rerun, name)
        if old is None or new is None:
            lines.append(f"- {name}: missing in {'the committed results' if old is None else 'the rerun'}")
            continue
        both = compare_differences(old, new)
        contradictions += int(both["contradiction"].sum())
        lines.append(
            f"- **{name}**: {len(both)} differences from GRPO; excluding 0: "
            f"{int(both['significant_committed'].sum())} committed, {int(both['significant_rerun'].sum())} rerun, "
            f"same verdict in {int(both['same_verdict'].sum())}; rerun inside the committed interval: "
            f"{int(both['inside'].sum())}/{len(both)}; contradictions: {int(both['contradiction'].sum())}"
        )
        for _, r in both[both["significant_committed"] | both["significant_rerun"]].iterrows():
            lines.append(
                f"  - {r['method']} {r['benchmark']} {r['metric']}: committed {r['difference_committed']:+.1f} "
                f"[{r['ci_low_committed']:.1f}, {r['ci_high_committed']:.1f}], rerun {r['difference_rerun']:+.1f} "
                f"[{r['ci_low_rerun']:.1f}, {r['ci_high_rerun']:.1f}]"
            )
    for name in TABLES:
        old, new = read_csv(committed, name), read_csv(rerun, name)
        if old is None or new is None:
            continue
        cells = compare_cells(old, new)
        if cells.empty:
            continue
        change = (cells["rerun"] - cells["committed"]).abs()
        worst = cells.loc[change.idxmax()]
        lines.append(
            f"- **{name}**: rerun inside the committed interval in {int(cells['inside'].sum())}/{len(cells)} cells; "
            f"largest change {change.max():.3g} ({worst['row']}, {worst['column']}: "
            f"{worst['committed']:g} -> {worst['rerun']:g})"
        )
    return "\n".join(lines), contradictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rerun", help="the rerun's results folder, e.g. results/tiny")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--against", default="HEAD", help="git revision of the committed results (default HEAD)")
    where.add_argument("--against-dir", help="a folder with the results to compare against, instead of git")
    parser.add_argument("--check", action="store_true", help="exit 1 if a difference from GRPO flips its sign")
    args = parser.parse_args()
    if not Path(args.rerun).is_dir():
        sys.exit(f"compare_results.py: {args.rerun}: no such folder")
    committed = args.against_dir or f"git:{args.against}:results/{Path(args.rerun).resolve().name}"
    text, contradictions = report(committed, args.rerun)
    print(text)
    sys.exit(1 if args.check and contradictions else 0)


if __name__ == "__main__":
    main()
