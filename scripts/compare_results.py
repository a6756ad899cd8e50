"""Do a rerun's results draw the committed conclusions? Compare two copies of results/<profile>/.

A rerun on another machine (or with another CPU code path) trains other weights: the numbers move by
run-to-run noise. What should come back are the conclusions, within the stated uncertainty. This
script compares a rerun's tables (e.g. results/tiny after `dvc repro` here or elsewhere) with the
committed ones: the same files at a git revision of this repository (default HEAD, folder
results/<profile>), or in another folder:

- **Differences from GRPO** (Tables 1 and 2, ``*_vs_grpo.csv``): for every method, benchmark and
  metric, both differences with their 95% intervals, the verdict of each (excludes 0 upwards,
  downwards, or not), and whether the rerun's difference lies inside the committed interval. A
  *contradiction* is a difference whose interval excludes 0 in both runs, with opposite signs.
- **Every table cell with brackets** (``x [lo, hi]``: 95% intervals in Tables 1-2 and the ablation,
  the [min, max] over seeds in Figure 3): the share of rerun values inside the committed brackets,
  and the largest change.

Brackets of width 0 (every sample right or every sample wrong) are counted apart: a rerun value is
"inside" them only if it is equal. For reference, when nothing changes but the noise, a rerun's
estimate falls inside the other run's 95% interval about 83% of the time (two estimates with the
same standard error: P(|Z| < 1.96 / sqrt 2)), not 95%.

    python scripts/compare_results.py results/tiny                      # against git HEAD
    python scripts/compare_results.py /elsewhere/tiny --profile tiny --against v1.0
    python scripts/compare_results.py /elsewhere/results/tiny --against-dir results/tiny

``--check`` exits 1 on a contradiction, or when a table of differences is missing or empty on either
side; otherwise the exit code is 0. Bad arguments and git errors exit 2. Files are read as CSV only.
"""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
#: A table cell "38.9 [34.7, 42.9]", "-0.013 [-0.029, 0.014]" or "52.38% [50.36, 53.81]".
CELL = re.compile(r"^\s*(-?\d+(?:\.\d+)?)%?\s*\[(-?\d+(?:\.\d+)?),\s*(-?\d+(?:\.\d+)?)\]\s*$")
VS_GRPO = ("table1_main_results_vs_grpo.csv", "table2_general_reasoning_vs_grpo.csv")
TABLES = ("table1_main_results.csv", "table2_general_reasoning.csv", "fig3_geometry.csv", "ablation_shaping.csv")
KEYS = ["method", "baseline", "benchmark", "metric"]


class CompareError(Exception):
    """A source that cannot be read (git error, bad table): one line, exit code 2."""


def read_csv(source: str, name: str) -> pd.DataFrame | None:
    """``name`` from a folder, or from ``git:REV:FOLDER`` (this repository at a revision).

    None if the file does not exist there; an empty frame for an empty file (a table with no rows).
    """
    if source.startswith("git:"):
        _, rev, folder = source.split(":", 2)
        spec = f"{rev}:{folder}/{name}"
        exists = subprocess.run(["git", "cat-file", "-e", spec], cwd=ROOT, capture_output=True, text=True)
        if exists.returncode != 0:
            known = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=ROOT)
            if known.returncode != 0:
                raise CompareError(f"git revision {rev!r} not found in {ROOT} (not a git checkout, or a typo?)")
            return None
        text = subprocess.run(["git", "show", spec], cwd=ROOT, check=True, capture_output=True, text=True).stdout
        where = spec
    else:
        path = Path(source) / name
        if not path.is_file():
            return None
        text, where = path.read_text(encoding="utf-8"), str(path)
    if not text.strip():
        return pd.DataFrame()
    try:
        return pd.read_csv(io.StringIO(text))
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise CompareError(f"{where}: not a readable CSV table ({err})") from None


def verdict(difference: pd.Series, significant: pd.Series) -> pd.Series:
    """+1 (interval above 0), -1 (below 0) or 0 (contains 0)."""
    return (difference > 0).astype(int).sub((difference < 0).astype(int)) * significant.astype(bool).astype(int)


def compare_differences(committed: pd.DataFrame, rerun: pd.DataFrame) -> pd.DataFrame:
    """One row per method, baseline, benchmark and metric in either run: the two differences and what agrees.

    ``present`` says where a row exists (both, committed only, rerun only); the comparisons are NaN/False
    for a row that exists on one side only.
    """
    both = committed.merge(
        rerun, on=KEYS, how="outer", suffixes=("_committed", "_rerun"), indicator="present", validate="one_to_one"
    )
    both["present"] = both["present"].map({"both": "both", "left_only": "committed only", "right_only": "rerun only"})
    for column in ("significant_committed", "significant_rerun"):
        both[column] = both[column].fillna(False).astype(bool)
    paired = both["present"] == "both"
    both["width"] = both["ci_high_committed"] - both["ci_low_committed"]
    both["inside"] = paired & both["difference_rerun"].between(both["ci_low_committed"], both["ci_high_committed"])
    old = verdict(both["difference_committed"], both["significant_committed"])
    new = verdict(both["difference_rerun"], both["significant_rerun"])
    both["same_verdict"] = paired & (old == new)
    both["contradiction"] = paired & (old * new < 0)
    return both


def interval_cells(frame: pd.DataFrame) -> dict[tuple[str, str], tuple[float, float, float]]:
    """(row label, column) -> (estimate, low, high) for every cell written as 'x [lo, hi]'.

    A row's label is its leading columns up to the first bracketed cell (method; variant and lam).
    """
    cells: dict[tuple[str, str], tuple[float, float, float]] = {}
    for _, row in frame.iterrows():
        label_parts = []
        for value in row.tolist():
            if CELL.match(str(value)):
                break
            label_parts.append(str(value))
        label = " ".join(label_parts)
        for column, value in row.items():
            match = CELL.match(str(value))
            if match:
                if (label, str(column)) in cells:
                    raise CompareError(f"two rows labelled {label!r} in one table")
                cells[(label, str(column))] = tuple(float(g) for g in match.groups())
    return cells


def compare_cells(committed: pd.DataFrame, rerun: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """The bracketed cells present in both runs, and how many are in one run only (committed, rerun)."""
    old, new = interval_cells(committed), interval_cells(rerun)
    rows = [
        dict(row=k[0], column=k[1], committed=old[k][0], low=old[k][1], high=old[k][2], rerun=new[k][0])
        for k in old
        if k in new
    ]
    out = pd.DataFrame(rows, columns=["row", "column", "committed", "low", "high", "rerun"])
    out["inside"] = (out["rerun"] >= out["low"]) & (out["rerun"] <= out["high"])
    out["width"] = out["high"] - out["low"]
    return out, len(set(old) - set(new)), len(set(new) - set(old))


def _inside(frame: pd.DataFrame) -> str:
    """'a/b with width, c/d of width 0' for the ``inside`` column of compared rows."""
    wide = frame[frame["width"] > 0]
    flat = frame[frame["width"] <= 0]
    return (
        f"{int(wide['inside'].sum())}/{len(wide)} with width, "
        f"{int(flat['inside'].sum())}/{len(flat)} of width 0 (equal)"
    )


def report(committed: str, rerun: str) -> tuple[str, int, list[str]]:
    """The comparison as Markdown, the number of contradictions, and what could not be compared."""
    lines, contradictions, problems = [], 0, []
    for name in VS_GRPO:
        old, new = read_csv(committed, name), read_csv(rerun, name)
        if old is None or new is None or old.empty or new.empty:
            side = "the committed results" if old is None or old.empty else "the rerun"
            problems.append(f"{name}: missing or empty in {side}")
            lines.append(f"- **{name}**: missing or empty in {side}")
            continue
        both = compare_differences(old, new)
        paired = both[both["present"] == "both"]
        contradictions += int(paired["contradiction"].sum())
        lines.append(
            f"- **{name}**: {len(paired)} differences from the baseline in both runs"
            f" ({int((both['present'] == 'committed only').sum())} in the committed run only,"
            f" {int((both['present'] == 'rerun only').sum())} in the rerun only); interval excludes 0:"
            f" {int(paired['significant_committed'].sum())} committed, {int(paired['significant_rerun'].sum())} rerun;"
            f" same verdict in {int(paired['same_verdict'].sum())}; contradictions:"
            f" {int(paired['contradiction'].sum())}; rerun inside the committed interval: {_inside(paired)}"
        )
        for _, r in paired[paired["significant_committed"] | paired["significant_rerun"]].iterrows():
            lines.append(
                f"  - {r['method']} {r['benchmark']} {r['metric']}: committed {r['difference_committed']:+.1f} "
                f"[{r['ci_low_committed']:.1f}, {r['ci_high_committed']:.1f}], rerun {r['difference_rerun']:+.1f} "
                f"[{r['ci_low_rerun']:.1f}, {r['ci_high_rerun']:.1f}]"
            )
    for name in TABLES:
        old, new = read_csv(committed, name), read_csv(rerun, name)
        if old is None or new is None:
            lines.append(f"- {name}: not in {'the committed results' if old is None else 'the rerun'}")
            continue
        cells, only_old, only_new = compare_cells(old, new)
        if cells.empty:
            lines.append(f"- {name}: no bracketed cell in both runs")
            continue
        change = (cells["rerun"] - cells["committed"]).abs()
        worst = cells.loc[change.idxmax()]
        lines.append(
            f"- **{name}**: {len(cells)} bracketed cells in both runs ({only_old} committed only, {only_new} rerun "
            f"only); rerun inside the committed brackets: {_inside(cells)}; largest change {change.max():.3g} "
            f"({worst['row']}, {worst['column']}: {worst['committed']:g} -> {worst['rerun']:g})"
        )
    return "\n".join(lines), contradictions, problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rerun", help="the rerun's results folder, e.g. results/tiny")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--against", default="HEAD", help="git revision of the committed results (default HEAD)")
    where.add_argument("--against-dir", help="a folder with the results to compare against, instead of git")
    parser.add_argument("--profile", help="with --against: results/<profile> (default: the rerun folder's name)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if an interval excludes 0 in both runs with opposite signs, or a table of differences is missing",
    )
    args = parser.parse_args()
    if not Path(args.rerun).is_dir():
        parser.error(f"{args.rerun}: no such folder")
    profile = args.profile or Path(args.rerun).resolve().name
    committed = args.against_dir or f"git:{args.against}:results/{profile}"
    try:
        text, contradictions, problems = report(committed, args.rerun)
    except (CompareError, subprocess.CalledProcessError) as err:
        print(f"compare_results.py: {err}", file=sys.stderr)
        sys.exit(2)
    print(text)
    sys.exit(1 if args.check and (contradictions or problems) else 0)


if __name__ == "__main__":
    main()
