"""scripts/compare_results.py: a rerun's conclusions against the committed ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import compare_results  # noqa: E402

COLUMNS = ["method", "baseline", "benchmark", "metric", "difference", "ci_low", "ci_high", "significant"]
SCRIPT = [sys.executable, str(ROOT / "scripts" / "compare_results.py")]


def vs_grpo(rows):
    return pd.DataFrame([dict(zip(COLUMNS, r)) for r in rows])


def test_differences_verdicts_and_contradictions():
    committed = vs_grpo(
        [
            ("G2RL", "GRPO", "MATH500", "pass@1", -3.0, -6.0, -0.5, True),
            ("EVOL-RL", "GRPO", "MATH500", "pass@1", 1.0, -1.0, 3.0, False),
            ("Entropy", "GRPO", "MATH500", "pass@1", 4.0, 1.0, 7.0, True),
            ("Entropy", "GRPO", "AMC", "pass@1", 0.0, 0.0, 0.0, False),
        ]
    )
    rerun = vs_grpo(
        [
            ("G2RL", "GRPO", "MATH500", "pass@1", 2.5, 0.5, 4.5, True),  # significant both times, opposite signs
            ("EVOL-RL", "GRPO", "MATH500", "pass@1", 2.0, -0.5, 4.5, False),  # inside, same verdict
            ("Entropy", "GRPO", "MATH500", "pass@1", 0.5, -2.0, 3.0, False),  # outside, verdict lost
            ("G2RL", "GRPO", "AIME24", "pass@1", 1.0, -1.0, 3.0, False),  # in the rerun only
        ]
    )
    both = compare_results.compare_differences(committed, rerun)
    keyed = both.set_index(["method", "benchmark"])
    assert keyed["present"].to_dict() == {
        ("G2RL", "MATH500"): "both",
        ("EVOL-RL", "MATH500"): "both",
        ("Entropy", "MATH500"): "both",
        ("Entropy", "AMC"): "committed only",
        ("G2RL", "AIME24"): "rerun only",
    }
    paired = keyed[keyed["present"] == "both"]
    assert paired["contradiction"].to_dict() == {
        ("G2RL", "MATH500"): True,
        ("EVOL-RL", "MATH500"): False,
        ("Entropy", "MATH500"): False,
    }
    assert paired["same_verdict"].to_dict() == {  # a sign flip is not the same verdict
        ("G2RL", "MATH500"): False,
        ("EVOL-RL", "MATH500"): True,
        ("Entropy", "MATH500"): False,
    }
    assert paired["inside"].to_dict() == {
        ("G2RL", "MATH500"): False,
        ("EVOL-RL", "MATH500"): True,
        ("Entropy", "MATH500"): False,
    }
    assert not keyed.loc[("G2RL", "AIME24"), "contradiction"]


def test_interval_cells_signs_percent_and_two_column_labels():
    committed = pd.DataFrame(
        {
            "variant": ["centered", "equation"],
            "lam": [0.5, 0.5],
            "acc": ["-0.013 [-0.029, 0.014]", "52.38% [50.36, 53.81]"],
            "flat": ["0.0 [0.0, 0.0]", "-0.0 [-0.3, 0.2]"],
        }
    )
    rerun = committed.assign(acc=["0.020 [0.001, 0.040]", "50.00% [48.0, 52.0]"], flat=["0.0 [0.0, 0.0]", "0.1 [0, 1]"])
    cells, only_old, only_new = compare_results.compare_cells(committed, rerun)
    cells = cells.set_index(["row", "column"])
    assert (only_old, only_new) == (0, 0)
    assert cells.loc[("centered 0.5", "acc"), "committed"] == -0.013
    assert not cells.loc[("centered 0.5", "acc"), "inside"]  # 0.020 > 0.014
    assert not cells.loc[("equation 0.5", "acc"), "inside"]  # 50.00 < 50.36
    assert cells.loc[("centered 0.5", "flat"), "inside"] and cells.loc[("centered 0.5", "flat"), "width"] == 0
    assert cells.loc[("equation 0.5", "flat"), "inside"]


def test_duplicate_row_labels_are_an_error():
    frame = pd.DataFrame({"method": ["GRPO", "GRPO"], "acc": ["1.0 [0.0, 2.0]", "1.0 [0.0, 2.0]"]})
    with pytest.raises(compare_results.CompareError, match="two rows labelled 'GRPO'"):
        compare_results.interval_cells(frame)


def _write(folder: Path, rows) -> None:
    folder.mkdir()
    vs_grpo(rows).to_csv(folder / "table1_main_results_vs_grpo.csv", index=False)
    (folder / "table2_general_reasoning_vs_grpo.csv").write_text("\n")  # a table without rows, as report writes it


def test_cli_check_fails_on_a_contradiction_and_on_a_missing_table(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _write(a, [("G2RL", "GRPO", "MATH500", "pass@1", -3.0, -5.0, -1.0, True)])
    _write(b, [("G2RL", "GRPO", "MATH500", "pass@1", 3.0, 1.0, 5.0, True)])
    c.mkdir()
    flipped = subprocess.run([*SCRIPT, str(b), "--against-dir", str(a), "--check"], capture_output=True, text=True)
    assert flipped.returncode == 1 and "contradictions: 1" in flipped.stdout
    assert "missing or empty" in flipped.stdout  # the empty table 2 is said, not a crash
    missing = subprocess.run([*SCRIPT, str(c), "--against-dir", str(a), "--check"], capture_output=True, text=True)
    assert missing.returncode == 1 and "missing or empty in the rerun" in missing.stdout
    plain = subprocess.run([*SCRIPT, str(b), "--against-dir", str(a)], capture_output=True, text=True)
    assert plain.returncode == 0  # without --check, a report only


def test_cli_bad_folder_and_bad_revision_exit_2(tmp_path):
    gone = subprocess.run([*SCRIPT, str(tmp_path / "nope")], capture_output=True, text=True)
    assert gone.returncode == 2 and "no such folder" in gone.stderr
    (tmp_path / "tiny").mkdir()
    bad = subprocess.run([*SCRIPT, str(tmp_path / "tiny"), "--against", "no-such-rev"], capture_output=True, text=True)
    assert bad.returncode == 2 and "git revision 'no-such-rev' not found" in bad.stderr


def test_committed_results_agree_with_themselves(tmp_path):
    """HEAD's tables, copied out and compared against git HEAD from another folder: every cell and difference."""
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    rerun = tmp_path / "copy"
    rerun.mkdir()
    for name in (*compare_results.VS_GRPO, *compare_results.TABLES):
        shown = subprocess.run(["git", "show", f"HEAD:results/tiny/{name}"], cwd=ROOT, capture_output=True, text=True)
        (rerun / name).write_text(shown.stdout)
    out = subprocess.run(
        [*SCRIPT, str(rerun), "--profile", "tiny", "--check"], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    lines = {line.split("**")[1]: line for line in out.stdout.splitlines() if line.startswith("- **")}
    assert set(lines) == {*compare_results.VS_GRPO, *compare_results.TABLES}
    for name in compare_results.VS_GRPO:
        frame = pd.read_csv(rerun / name)
        assert f"{len(frame)} differences from the baseline in both runs (0 in the committed run only" in lines[name]
        assert "contradictions: 0" in lines[name]
        wide = int((frame.ci_high > frame.ci_low).sum())
        assert f"{wide}/{wide} with width, {len(frame) - wide}/{len(frame) - wide} of width 0" in lines[name]
    for name in compare_results.TABLES:
        frame = pd.read_csv(rerun / name)
        n = sum(bool(compare_results.CELL.match(str(v))) for v in frame.to_numpy().ravel())
        assert n > 0 and f"{n} bracketed cells in both runs (0 committed only, 0 rerun only)" in lines[name]
        assert "largest change 0 " in lines[name]
