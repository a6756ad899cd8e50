"""Every notebook runs under papermill on a smoke-sized pipeline and writes its outputs."""

import pytest

from g2rl_core import paths
from g2rl_core.config import load_profile
from g2rl_core.engines.native import Trainer
from g2rl_core.pipeline import cli

NOTEBOOK_OUTPUTS = {
    "table1_main_results": ["table1_main_results.csv", "table1_main_results.md", "table1_main_results_vs_grpo.csv"],
    "table2_general_reasoning": [
        "table2_general_reasoning.csv",
        "table2_general_reasoning.md",
        "table2_general_reasoning_vs_grpo.csv",
    ],
    "fig2_training_dynamics": ["fig2_training_dynamics.png", "fig2_final_validation.csv"],
    "fig3_geometry": ["fig3_geometry.png", "fig3_geometry.csv", "fig3_geometry.md"],
    "ablation_shaping": ["ablation_shaping.csv", "ablation_shaping.md", "ablation_shaping.png"],
    "quickstart": ["quickstart.png"],
}


@pytest.fixture(scope="module")
def smoke_pipeline(tiny_base, tmp_path_factory):
    """The pipeline's outputs at smoke size: 2 methods x 1 seed x 2 steps, 3 problems per benchmark."""
    root = tmp_path_factory.mktemp("pipeline")
    params = tiny_base / "params.yaml"
    profile = load_profile("tiny", params)
    for method in ["grpo", "g2rl"]:
        Trainer(profile.train_config(method, 0, steps=2, val_every=1), root / "runs" / method / "seed0").train()
        assert (
            cli.main(
                [
                    "--params",
                    str(params),
                    "eval",
                    "--model",
                    str(root / "runs" / method / "seed0" / "final"),
                    "--method",
                    method,
                    "--out",
                    str(root / "eval" / method / "seed0"),
                    "--limit",
                    "3",
                ]
            )
            == 0
        )
    Trainer(
        profile.train_config("g2rl", 0, steps=2, val_every=1, shaping={"variant": "centered", "lam": 1.0}),
        paths.ablation_run_dir("tiny", "centered", 1.0, 0, root=root / "ablation"),
    ).train()
    assert cli.main(["--params", str(params), "eval", "--out", str(root / "eval" / "base"), "--limit", "3"]) == 0
    assert (
        cli.main(["--params", str(params), "geometry", "--runs", str(root / "runs"), "--out", str(root / "geometry")])
        == 0
    )
    return root


@pytest.mark.parametrize("name", sorted(NOTEBOOK_OUTPUTS))
def test_notebook_runs_and_writes_its_outputs(smoke_pipeline, tiny_base, name):
    import papermill

    root = smoke_pipeline
    results = root / "results"
    parameters = {
        "profile": "tiny",
        "params_path": str(tiny_base / "params.yaml"),
        "results_dir": str(results),
        "eval_dir": str(root / "eval"),
        "runs_dir": str(root / "runs"),
        "geometry_dir": str(root / "geometry"),
        "ablation_dir": str(root / "ablation"),
        "k": 4,
        "ks": [4],
        "m": 4,
    }
    papermill.execute_notebook(
        f"notebooks/{name}.ipynb",
        str(root / f"{name}.ipynb"),
        parameters=parameters,
        progress_bar=False,
        kernel_name="python3",
    )
    for filename in NOTEBOOK_OUTPUTS[name]:
        path = results / filename
        assert path.exists() and path.stat().st_size > 0, f"{name} did not write {filename}"


def test_results_index_embeds_tables_and_figures(tmp_path):
    from g2rl_core.pipeline.report import write_results_index

    folder = tmp_path / "tiny"
    folder.mkdir()
    for name in ["table1_main_results", "table2_general_reasoning", "fig3_geometry", "ablation_shaping"]:
        (folder / f"{name}.md").write_text(f"# {name} (tiny)\n\n| method | {name} |\n| --- | --- |\n| G2RL | 1.0 |\n")
    out = write_results_index(tmp_path, "tiny")
    text = out.read_text()
    for name in ["table1_main_results", "table2_general_reasoning", "fig3_geometry", "ablation_shaping"]:
        assert f"| method | {name} |" in text and f"# {name} (tiny)" not in text
    for figure in ["fig2_training_dynamics.png", "fig3_geometry.png", "ablation_shaping.png"]:
        assert f"(tiny/{figure})" in text


def test_paired_differences_find_a_known_gap_and_not_a_null_one():
    import random

    import pandas as pd

    from g2rl_core.pipeline.report import paired_differences

    rng = random.Random(0)
    rows = []
    for seed in (0, 1):
        for problem in range(60):
            for sample in range(4):
                for method, p_correct in (("grpo", 0.4), ("g2rl", 0.8), ("entropy", 0.4)):
                    # g2rl solves 0.8 of samples, grpo and entropy 0.4: a 40-point gap and a null one
                    rows.append(
                        {
                            "method": method,
                            "seed": seed,
                            "benchmark": "math500",
                            "problem_id": f"p{problem}",
                            "sample": sample,
                            "correct": rng.random() < p_correct,
                            "extracted": "1",
                        }
                    )
    diffs = paired_differences(pd.DataFrame(rows), ["pass@1"]).set_index("method")
    assert diffs.loc["G2RL", "significant"] and 30 < diffs.loc["G2RL", "difference"] < 50
    assert not diffs.loc["Entropy Bonus", "significant"]
    assert diffs.loc["G2RL", "ci_low"] < diffs.loc["G2RL", "difference"] < diffs.loc["G2RL", "ci_high"]
