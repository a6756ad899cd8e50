"""scripts/compare_results.py: a rerun's conclusions against the committed ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import compare_results  # noqa: E402

COLUMNS = ["method", "baseline", "benchmark", "metric", "difference", "ci_low", "ci_high", "significant"]


def vs_grpo(rows):
    return pd.DataFrame([dict(zip(COLUMNS, r)) for r in rows])


def test_differences_verdicts_and_contradictions():
    committed = vs_grpo(
        [
            ("G2RL", "GRPO", "MATH500", "pass@1", -3.0, -6.0, -0.5, True),
            ("EVOL-RL", "GRPO", "MATH500", "pass@1", 1.0, -1.0, 3.0, False),
            ("Entropy", "GRPO", "MATH500", "pass@1", 4.0, 1.0, 7.0, True),
        ]
    )
    rerun = vs_grpo(
        [
            ("G2RL", "GRPO", "MATH500", "pass@1", 2.5, 0.5, 4.5, True),  # significant, opposite sign
            ("EVOL-RL", "GRPO", "MATH500", "pass@1", 2.0, -0.5, 4.5, False),  # inside, same verdict
            ("Entropy", "GRPO", "MATH500", "pass@1", 0.5, -2.0, 3.0, False),  # outside, verdict lost
        ]
    )
    both = compare_results.compare_differences(committed, rerun).set_index("method")
    assert both["contradiction"].to_dict() == {"G2RL": True, "EVOL-RL": False, "Entropy": False}
    assert both["inside"].to_dict() == {"G2RL": False, "EVOL-RL": True, "Entropy": False}
    assert both["same_verdict"].to_dict() == {"G2RL": True, "EVOL-RL": True, "Entropy": False}


def test_interval_cells_inside_and_largest_change():
    committed = pd.DataFrame({"method": ["GRPO", "G2RL"], "acc": ["44.7 [40.6, 48.6]", "52.38% [50.36, 53.81]"]})
    rerun = pd.DataFrame({"method": ["GRPO", "G2RL"], "acc": ["47.9 [44.0, 51.8]", "50.00% [48.0, 52.0]"]})
    cells = compare_results.compare_cells(committed, rerun).set_index("row")
    assert cells.loc["GRPO", "inside"] and not cells.loc["G2RL", "inside"]
    assert cells.loc["G2RL", "committed"] == 52.38 and cells.loc["G2RL", "rerun"] == 50.0


def test_cli_check_fails_on_a_contradiction(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, difference in ((a, -3.0), (b, 3.0)):
        folder.mkdir()
        low, high = sorted((difference - 2.0, difference + 2.5 * (1 if difference > 0 else -1)))
        frame = vs_grpo([("G2RL", "GRPO", "MATH500", "pass@1", difference, low, high, True)])
        frame.to_csv(folder / "table1_main_results_vs_grpo.csv", index=False)
    script = [sys.executable, str(ROOT / "scripts" / "compare_results.py")]
    failed = subprocess.run([*script, str(b), "--against-dir", str(a), "--check"], capture_output=True, text=True)
    assert failed.returncode == 1 and "contradictions: 1" in failed.stdout
    same = subprocess.run([*script, str(a), "--against-dir", str(a), "--check"], capture_output=True, text=True)
    assert same.returncode == 0 and "contradictions: 0" in same.stdout


def test_committed_results_agree_with_themselves(tmp_path):
    """HEAD's tables, copied out and compared against git HEAD: every cell inside, largest change 0."""
    rerun = tmp_path / "tiny"  # the folder's name picks results/tiny at the revision
    rerun.mkdir()
    for name in (*compare_results.VS_GRPO, *compare_results.TABLES):
        shown = subprocess.run(["git", "show", f"HEAD:results/tiny/{name}"], cwd=ROOT, capture_output=True, text=True)
        (rerun / name).write_text(shown.stdout)
    script = [sys.executable, str(ROOT / "scripts" / "compare_results.py"), str(rerun), "--check"]
    out = subprocess.run(script, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("largest change 0 ") == len(compare_results.TABLES)
    assert out.stdout.count("contradictions: 0") == len(compare_results.VS_GRPO)
