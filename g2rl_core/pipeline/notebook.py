"""What every notebook starts from: the repository root, the typed profile, its runs and results.

    ctx = context(profile, params_path, methods=methods, seeds=seeds, results_dir=results_dir)

Paths resolve from the repository root wherever the notebook is opened (from notebooks/, the
root, or papermill's working directory): ``context`` finds the folder holding params.yaml and
dvc.yaml and changes to it. Figures display inline (matplotlib's default in Jupyter).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from g2rl_core import paths
from g2rl_core.config import Profile, load_params, load_profile
from g2rl_core.errors import ConfigError
from g2rl_core.pipeline import report
from g2rl_core.provenance import pin_cpu_paths


def repository_root(start: str | Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: the working directory) with params.yaml and dvc.yaml."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file() and (folder / "dvc.yaml").is_file():
            return folder
    raise ConfigError(f"no repository root (a folder with params.yaml and dvc.yaml) at or above {here}")


@dataclass
class Context:
    root: Path
    params: dict[str, Any]  # the whole params.yaml (methods, seeds, ablation)
    profile: Profile
    methods: list[str]
    seeds: list[int]
    results_dir: Path  # where the notebook writes its tables and figures
    runs_dir: Path  # <method>/seed<k>/ training runs
    ablation_dir: Path  # <variant>-lam<lam>/ ablation runs
    eval_dir: Path  # <method>/[seed<k>/] evaluation CSVs
    geometry_dir: Path  # pairs.csv of the geometry stage

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def val_key(self) -> str:
        """The validation column of the training logs (mean@val_samples, Figure 2)."""
        return f"val_mean_at_{self.profile.train_config(self.methods[0], self.seeds[0]).val_samples}"


def context(
    profile: str | None = None,
    params_path: str = "params.yaml",
    *,
    methods: list[str] | None = None,
    seeds: list[int] | None = None,
    results_dir: str | Path | None = None,
    runs_dir: str | Path | None = None,
    ablation_dir: str | Path | None = None,
    eval_dir: str | Path | None = None,
    geometry_dir: str | Path | None = None,
    root: str | Path | None = None,
) -> Context:
    """Change to the repository root, load the profile, and make the results folder.

    Every folder defaults to the pipeline's (``g2rl_core.paths``); pass one to read another run.
    """
    pin_cpu_paths()  # the notebooks that sample (quickstart) run on the pipeline's CPU paths
    root = repository_root(root)
    os.chdir(root)
    params = load_params(params_path)
    loaded = load_profile(profile, params_path)
    out = Path(results_dir) if results_dir else paths.results_dir(loaded.name)
    out.mkdir(parents=True, exist_ok=True)
    report.style()
    name = loaded.name
    return Context(
        root=root,
        params=params,
        profile=loaded,
        methods=list(methods or params.get("methods", [])),
        seeds=list(seeds or params.get("seeds", [0])),
        results_dir=out,
        runs_dir=Path(runs_dir or paths.runs_dir(name)),
        ablation_dir=Path(ablation_dir or paths.ablation_runs_dir(name)),
        eval_dir=Path(eval_dir or paths.eval_root(name)),
        geometry_dir=Path(geometry_dir or paths.geometry_dir(name)),
    )
