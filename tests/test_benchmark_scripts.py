"""Every benchmark script imports and parses its arguments (`--help`) in .venv; verl's runs in .venv-verl."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NEEDS_VERL = {"verl_phi.py"}  # imports verl: run by hand in .venv-verl (see its docstring)
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if p.name not in NEEDS_VERL)


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_script_imports_and_parses_its_arguments(script):
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage:" in out.stdout
