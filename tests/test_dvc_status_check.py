"""scripts/check_dvc_status.py: stale code, params or committed results fail; missing pipeline outputs do not."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_dvc_status.py"
spec = importlib.util.spec_from_file_location("check_dvc_status", SCRIPT)
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)

TRACKED = {"g2rl_core/engines/native.py", "g2rl_core/maths/features.py", "results/tiny/table1.md", "params.yaml"}


def test_missing_outputs_are_fine():
    status = {
        "train@grpo-0": [
            {"changed deps": {"build/tiny": "deleted"}},
            {"changed outs": {"runs/tiny/grpo/seed0": "not in cache"}},
        ]
    }
    assert check.stale_entries(status, TRACKED) == []


def test_modified_code_params_and_results_fail():
    status = {
        "train@grpo-0": [
            {"changed deps": {"g2rl_core/maths": "modified", "params.yaml": {"profiles.tiny.train": "modified"}}}
        ],
        "table1": [{"changed outs": {"results/tiny/table1.md": "modified"}}],
    }
    problems = check.stale_entries(status, TRACKED)
    assert "train@grpo-0: g2rl_core/maths (modified)" in problems
    assert "train@grpo-0: params.yaml profiles.tiny.train (modified)" in problems
    assert "table1: results/tiny/table1.md (modified)" in problems


def test_a_stage_missing_from_dvc_lock_fails():
    """A stage dvc.lock does not know (e.g. renamed to table@table1_main_results): its params are 'new'."""
    status = {
        "table@table1_main_results": [
            {"changed deps": {"params.yaml": "new", "g2rl_core/engines/native.py": "modified"}},
            {"changed outs": {"results/tiny/table1.md": "modified"}},
        ]
    }
    assert check.stale_entries(status, TRACKED) == [
        "table@table1_main_results: params.yaml (new)",
        "table@table1_main_results: g2rl_core/engines/native.py (modified)",
        "table@table1_main_results: results/tiny/table1.md (modified)",
    ]
