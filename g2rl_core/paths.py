"""Where the pipeline puts things: every path pattern, defined once.

dvc.yaml writes the same patterns in its own template syntax; tests/test_pipeline_paths.py
checks that the two agree.
"""

from __future__ import annotations

from pathlib import Path

BUILD = Path("build")
RUNS = Path("runs")
ARTIFACTS = Path("artifacts")
RESULTS = Path("results")


def embedded_build(profile: str) -> Path:
    """An embedded profile's base model and task data (``g2rl sft --profile PROFILE``)."""
    return BUILD / profile


def runs_dir(profile: str) -> Path:
    return RUNS / profile


def run_dir(profile: str, method: str, seed: int, *, root: str | Path | None = None) -> Path:
    """One training run: checkpoints, ``log.jsonl``, ``final/`` (under ``root``, default ``runs_dir``)."""
    return Path(root or runs_dir(profile)) / method / f"seed{seed}"


def ablation_runs_dir(profile: str) -> Path:
    return RUNS / f"{profile}-ablation"


def ablation_run_dir(profile: str, variant: str, lam: float, seed: int, *, root: str | Path | None = None) -> Path:
    """One run of the shaping ablation: G2RL with eq. 12's ``variant`` reading at ``lam``, seed ``seed``."""
    return Path(root or ablation_runs_dir(profile)) / f"{variant}-lam{lam}" / f"seed{seed}"


def eval_root(profile: str) -> Path:
    return ARTIFACTS / profile / "eval"


def eval_dir(profile: str, method: str, seed: int | None = None) -> Path:
    """Evaluation CSVs of one trained run (or of the base model: method "base", no seed)."""
    root = eval_root(profile) / method
    return root if seed is None else root / f"seed{seed}"


def phi_sweep_dir() -> Path:
    """The Phi-geometry sweep on tiny models (profile-independent)."""
    return ARTIFACTS / "phi_sweep"


def geometry_dir(profile: str) -> Path:
    return ARTIFACTS / profile / "geometry"


def results_dir(profile: str) -> Path:
    """Committed tables and figures of a profile."""
    return RESULTS / profile
