"""The ablation's statistics: seeds pooled into a mean with a Student-t interval (issue 13, item 7)."""

import json
import math
import sys

import pandas as pd
import pytest

from g2rl_core.pipeline.report import ABLATION_SCORE, ablation_table, seed_interval, significance_summary


def test_seed_interval_by_hand():
    # values 40, 42, 47: mean 43; sample sd sqrt((9 + 1 + 16) / 2) = sqrt(13) = 3.60555;
    # t(0.975, df=2) = 4.302653; half-width 4.302653 * 3.60555 / sqrt(3) = 8.95673.
    mean, low, high = seed_interval([40.0, 42.0, 47.0])
    assert mean == pytest.approx(43.0)
    assert low == pytest.approx(43.0 - 8.95673, abs=1e-4) and high == pytest.approx(43.0 + 8.95673, abs=1e-4)
    # one seed has no interval
    mean, low, high = seed_interval([41.0])
    assert mean == 41.0 and math.isnan(low) and math.isnan(high)


def _run(root, name, finals):
    run = root / name
    run.mkdir(parents=True)
    rows = [{"kind": "val", "step": 0, "val_mean_at_8": 0.1}] + [
        {"kind": "train", "step": 1, "reward_mean": 0.0},
        {"kind": "val", "step": 10, "val_mean_at_8": finals},
    ]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_ablation_table_pools_seeds_and_keeps_each(tmp_path):
    runs = [
        ("equation", 0.5, 0, _run(tmp_path, "a0", 0.40)),
        ("equation", 0.5, 1, _run(tmp_path, "a1", 0.42)),
        ("equation", 0.5, 2, _run(tmp_path, "a2", 0.47)),
        ("centered", 0.0, 0, _run(tmp_path, "g0", 0.30)),  # GRPO: lam = 0, one seed here
    ]
    table, curves = ablation_table(runs, "val_mean_at_8")
    row = table[table.variant == "equation"].iloc[0]
    assert row["mean"] == pytest.approx(43.0) and row["seeds"] == 3 and row["per seed"] == "40.0, 42.0, 47.0"
    assert row[ABLATION_SCORE] == "43.0 [34.0, 52.0]"
    lone = table[table.variant == "centered"].iloc[0]
    assert lone[ABLATION_SCORE] == "30.0 (one seed)" and lone["seeds"] == 1
    assert len(curves) == 8 and set(curves.seed) == {0, 1, 2}  # two val rows per run


def test_ablation_table_names_a_missing_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing/log.jsonl"):
        ablation_table([("equation", 0.5, 0, tmp_path / "missing")], "val_mean_at_8")


def test_results_index_names_the_machine_and_where_the_time_went(tmp_path, monkeypatch):
    from g2rl_core.pipeline.report import stage_records, write_results_index
    from g2rl_core.provenance import PINNED_CPU_ENV, machine_info

    monkeypatch.chdir(tmp_path)
    machine = machine_info()
    for folder, command, seconds in [
        ("runs/tiny/grpo/seed0", "train", 200.0),
        ("runs/tiny/g2rl/seed0", "train", 220.0),
        ("artifacts/tiny/eval/base", "eval", 65.0),
        ("runs/other/grpo/seed0", "train", 999.0),  # another profile: not counted
    ]:
        (tmp_path / folder).mkdir(parents=True)
        record = {"command": command, "wall_seconds": seconds, **machine, "pinned_env": PINNED_CPU_ENV}
        (tmp_path / folder / "run_info.json").write_text(json.dumps(record))
    assert sorted(r["path"] for r in stage_records("tiny")) == [
        "artifacts/tiny/eval/base",
        "runs/tiny/g2rl/seed0",
        "runs/tiny/grpo/seed0",
    ]
    (tmp_path / "results" / "tiny").mkdir(parents=True)
    text = write_results_index(tmp_path / "results", "tiny").read_text()
    assert f"3 stages on {machine['cpu']}" in text
    intel = "intel" in machine["cpu"].lower()
    assert ("pinned to AVX2: torch kernels and MKL's AVX2 branch" in text) == intel
    assert ("MKL keeps its own branch on this non-Intel CPU" in text) == (not intel)
    assert "NOT pinned" not in text
    assert "| train | 2 | 7m00s | 3m30s |" in text and "| eval | 1 | 1m05s | 1m05s |" in text
    assert "| all | 3 | 8m05s | |" in text


def test_cli_threads_come_from_the_profile_and_are_recorded(tiny_base, tmp_path, capsys):
    from g2rl_core.pipeline import cli

    params = tiny_base / "params.yaml"
    out = tmp_path / "smoke"
    assert cli.main(["--params", str(params), "prepare-data", "--format", "verl", "--out", str(out)]) == 0
    info = json.loads((out / "run_info.json").read_text())
    assert info["threads"] == 1 and info["command"] == "prepare-data"  # the fixture's train.threads
    assert "done in" in capsys.readouterr().err
    assert cli.main(["--params", str(params), "--threads", "0", "prepare-data", "--format", "verl"]) == 2
    assert "threads = 0 must be >= 1" in capsys.readouterr().err


def test_only_the_main_process_of_a_launch_writes_run_info(tiny_base, tmp_path, monkeypatch):
    from g2rl_core.pipeline import cli

    params = tiny_base / "params.yaml"
    monkeypatch.setenv("RANK", "1")  # a second process under accelerate / torchrun
    assert cli.main(["--params", str(params), "prepare-data", "--format", "verl", "--out", str(tmp_path / "a")]) == 0
    assert not (tmp_path / "a" / "run_info.json").exists()
    monkeypatch.setenv("RANK", "0")
    assert cli.main(["--params", str(params), "prepare-data", "--format", "verl", "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "run_info.json").is_file()


def test_hierarchical_bootstrap_by_hand():
    import numpy as np

    from g2rl_core.pipeline.report import hierarchical_bootstrap

    # 2 seeds that disagree completely, 2 identical problems: estimate 0.5; a resample takes seed 0
    # twice (statistic 0), seed 1 twice (1) or one of each (0.5), with chances 1/4, 1/4, 1/2, so the
    # 2.5% and 97.5% quantiles are 0 and 1.
    est, low, high = hierarchical_bootstrap([(1.0, np.array([[0.0, 0.0], [1.0, 1.0]]))])
    assert (est, low, high) == (0.5, 0.0, 1.0)
    # one seed, equal problems: nothing varies
    assert hierarchical_bootstrap([(1.0, np.full((1, 5), 0.3))]) == pytest.approx((0.3, 0.3, 0.3))
    with pytest.raises(ValueError, match="same, non-empty problem columns"):
        hierarchical_bootstrap([(1.0, np.zeros((2, 3))), (-1.0, np.zeros((2, 4)))])


def test_seed_to_seed_variation_widens_the_paired_interval():
    """A method whose seeds disagree (90%, 50%, 40% of samples right, mean 60%) against a baseline at 50%
    on every seed: over problems alone the 10-point gap looks certain; with the seeds resampled too, a
    resample of the 40% seed alone is 10 points below the baseline, so the interval contains 0."""
    import numpy as np
    import pandas as pd

    from g2rl_core.pipeline.report import paired_differences

    rng = np.random.default_rng(0)
    rows = []
    for method, rates in (("grpo", (0.5, 0.5, 0.5)), ("g2rl", (0.9, 0.5, 0.4))):
        for seed, rate in enumerate(rates):
            for problem in range(200):
                correct = rng.random(16) < rate
                rows += [
                    {"method": method, "seed": seed, "benchmark": "math500", "problem_id": f"p{problem}",
                     "sample": i, "correct": bool(c), "extracted": "1"}
                    for i, c in enumerate(correct)
                ]  # fmt: skip
    diffs = paired_differences(pd.DataFrame(rows), ["pass@1"]).set_index("method")
    row = diffs.loc["G2RL"]
    assert 7 < row["difference"] < 13 and row["seeds"] == 3 and row["problems"] == 200
    assert row["ci_low"] < 0 < row["ci_high"] and not row["significant"]


def test_ablation_table_refuses_an_unfinished_run(tmp_path):
    done = _run(tmp_path, "done", 0.4)
    short = tmp_path / "short"
    short.mkdir()
    (short / "log.jsonl").write_text(json.dumps({"kind": "val", "step": 0, "val_mean_at_8": 0.1}) + "\n")
    with pytest.raises(ValueError, match="equation lam=0.5 seed 1 ends at step 0, others at 10"):
        ablation_table([("equation", 0.5, 0, done), ("equation", 0.5, 1, short)], "val_mean_at_8")


def test_to_markdown_is_a_pipe_table_that_keeps_every_cell_as_written():
    import math

    from g2rl_core.pipeline.report import to_markdown

    frame = pd.DataFrame(
        {
            "method": ["GRPO", "G2RL"],
            "pass@1": ["5.30 [4.0, 6.1]", "0.0"],  # formatted cells: never re-parsed as numbers
            "lam": [0.0, 1e-05],
            "seeds": [3, 12],
            "mean": [6.32, math.nan],
        }
    )
    lines = to_markdown(frame).splitlines()
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    assert cells[0] == list(frame.columns)
    assert all(set(cell) <= set(":-") and cell for cell in cells[1])  # the pipe table's rule
    assert cells[2:] == [["GRPO", "5.30 [4.0, 6.1]", "0.0", "3", "6.32"], ["G2RL", "0.0", "1e-05", "12", "nan"]]
    assert all(line.startswith("| ") and line.endswith(" |") for i, line in enumerate(lines) if i != 1)
    assert to_markdown(frame).endswith(" |\n") and len({len(line) for line in lines}) == 1  # padded columns


def test_to_markdown_leaves_out_columns_that_are_the_same_in_every_row_and_says_so():
    from g2rl_core.pipeline.report import to_markdown

    frame = pd.DataFrame({"method": ["GRPO", "G2RL"], "AIME25 pass@1": ["0.0 [0.0, 0.0]"] * 2, "seeds": [3, 3]})
    frame["MATH500 pass@1"] = ["44.7 [40.6, 48.6]", "41.6 [37.7, 45.3]"]
    text = to_markdown(frame)
    header = text.splitlines()[0]
    assert "MATH500 pass@1" in header and "AIME25" not in header and "seeds" not in header
    assert "The same in every row, so not shown: AIME25 pass@1 = 0.0 [0.0, 0.0]; seeds = 3." in text
    one_row = to_markdown(frame.iloc[:1])  # a single row: nothing is "the same in every row"
    assert "AIME25 pass@1" in one_row.splitlines()[0] and "not shown" not in one_row


def test_significance_summary_lists_what_excludes_zero_and_what_chance_gives(tmp_path):
    """2 of 5 differences exclude 0; 4 intervals have width (one is 0.0 [0.0, 0.0]): 4 x 5% = 0.2 by chance."""
    rows = [
        ("G2RL", "GRPO", "MATH500", "pass@1", -3.1, -6.2, -0.1, True),
        ("EVOL-RL", "GRPO", "MATH500", "pass@1", 2.0, 0.5, 3.5, True),
        ("Entropy Bonus", "GRPO", "MATH500", "pass@1", 1.0, -1.0, 3.0, False),
        ("Entropy Bonus", "GRPO", "AMC", "pass@1", -1.0, -2.0, 1.0, False),
        ("G2RL", "GRPO", "AIME25", "pass@1", 0.0, 0.0, 0.0, False),
    ]
    columns = ["method", "baseline", "benchmark", "metric", "difference", "ci_low", "ci_high", "significant"]
    pd.DataFrame(rows, columns=columns).to_csv(tmp_path / "table1_main_results_vs_grpo.csv", index=False)
    text = "\n".join(significance_summary(tmp_path))
    assert "2 of 5 differences have a 95% interval that excludes 0:" in text
    assert "- G2RL vs GRPO, MATH500 pass@1: -3.1 points [-6.2, -0.1]" in text
    assert "- EVOL-RL vs GRPO, MATH500 pass@1: +2.0 points [+0.5, +3.5]" in text
    assert "Entropy Bonus" not in text
    assert "4 of the 5 intervals have a non-zero width" in text and "about 0.2 of them" in text


def test_run_info_of_a_resumed_run_totals_its_processes(tmp_path, monkeypatch):
    from g2rl_core.errors import G2RLError
    from g2rl_core.provenance import forget_run_info, write_run_info

    monkeypatch.setattr(sys, "argv", ["g2rl", "train", "--seed", "0"])
    read = lambda: json.loads((tmp_path / "run_info.json").read_text())  # noqa: E731
    write_run_info(tmp_path, "train", 10.0, resumable=True)
    assert (read()["wall_seconds"], read()["processes"]) == (10.0, 1)
    write_run_info(tmp_path, "train", 5.0, resumable=True)  # the same command line resumed
    assert (read()["wall_seconds"], read()["processes"]) == (15.0, 2)
    monkeypatch.setattr(sys, "argv", ["g2rl", "train", "--seed", "1"])  # another command line: another run
    write_run_info(tmp_path, "train", 4.0, resumable=True)
    assert (read()["wall_seconds"], read()["processes"]) == (4.0, 1)
    write_run_info(tmp_path, "train", 3.0)  # not resumable: this process alone
    assert (read()["wall_seconds"], read()["processes"]) == (3.0, 1)
    forget_run_info(tmp_path)
    write_run_info(tmp_path, "train", 2.0, resumable=True)
    assert (read()["wall_seconds"], read()["processes"]) == (2.0, 1)
    (tmp_path / "run_info.json").write_text('{"command": "train", "argv": ["train", "--seed", "1"]}')
    with pytest.raises(G2RLError, match=r"run_info.json: not a run_info record \(KeyError\); delete it"):
        write_run_info(tmp_path, "train", 1.0, resumable=True)
    (tmp_path / "run_info.json").write_text(
        '{"command": "train", "argv": ["train", "--seed", "1"], "wall_seconds": 1, "processes": 1e400}'
    )
    with pytest.raises(G2RLError, match=r"not a run_info record \(OverflowError\)"):
        write_run_info(tmp_path, "train", 1.0, resumable=True)
    (tmp_path / "run_info.json").write_text("[1, 2]")
    with pytest.raises(G2RLError, match=r"not a run_info record \(TypeError\)"):
        write_run_info(tmp_path, "train", 1.0, resumable=True)
    (tmp_path / "run_info.json").write_text(" " * (2 << 20))
    with pytest.raises(G2RLError, match=r"run_info.json: 2097152 bytes, not a run_info record"):
        write_run_info(tmp_path, "train", 1.0, resumable=True)


def _geometry_pairs(
    shifts: dict[str, float], seed_sd: float = 0.0, seed: int = 0, problem_sd: float = 0.0, noise: float = 0.3
) -> pd.DataFrame:
    """Within-group pairs of 20 problems x 28 pairs, 3 seeds per method; Phi-cosines around each method's
    shift, plus a per-seed offset (sd ``seed_sd``) and a per-problem effect every method shares (``problem_sd``)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    problem_effect = rng.normal(0, problem_sd, size=20)
    rows = []
    for method, shift in shifts.items():
        for s in range(3):
            offset = rng.normal(0, seed_sd)
            for p in range(20):
                for cos in rng.normal(shift + offset + problem_effect[p], noise, size=28):
                    rows.append(
                        {"method": method, "seed": s, "problem_id": f"p{p}", "phi_cos": cos, "semantic_cos": 0.5}
                    )
    return pd.DataFrame(rows)


def test_geometry_differences_recover_a_known_shift_and_find_none_where_there_is_none():
    from scipy.stats import norm

    from g2rl_core.pipeline.report import geometry_differences

    table = geometry_differences(_geometry_pairs({"grpo": 0.3, "g2rl": 0.1}), ["grpo", "g2rl"]).set_index("quantity")
    cos = table.loc["phi_cos_mean"]
    assert cos.ci_low < -0.2 < cos.ci_high and cos.significant and cos.ci_high < 0
    # negative share: P(N(0.1, 0.3) < 0) - P(N(0.3, 0.3) < 0), in points
    expected = 100 * (norm.cdf(-0.1 / 0.3) - norm.cdf(-1.0))
    neg = table.loc["negative_pair_share"]
    assert neg.ci_low < expected < neg.ci_high and neg.significant and neg.ci_low > 0
    assert table.loc["semantic_cos_mean"].difference == 0.0
    # no true difference: a 95% interval excludes 0 about 1 time in 20 (30 draws: 1.5 expected, P(>= 5) ~ 2%)
    false_positives = sum(
        geometry_differences(_geometry_pairs({"grpo": 0.3, "g2rl": 0.3}, seed=s), ["grpo", "g2rl"], n_resamples=500)
        .set_index("quantity")
        .loc["phi_cos_mean"]
        .significant
        for s in range(1, 31)
    )
    assert false_positives <= 4


def test_geometry_differences_pair_the_problems():
    """A small shift under a large per-problem effect that both methods share: only a paired interval finds it."""
    from g2rl_core.pipeline.report import geometry_differences, hierarchical_bootstrap

    pairs = _geometry_pairs({"grpo": 0.3, "g2rl": 0.25}, problem_sd=0.3, noise=0.05)
    row = geometry_differences(pairs, ["grpo", "g2rl"]).set_index("quantity").loc["phi_cos_mean"]
    assert row.ci_low < -0.05 < row.ci_high and row.ci_high < 0
    # the same data with one method's problems shuffled: no longer paired, and the interval covers 0
    means = pairs.groupby(["method", "seed", "problem_id"]).phi_cos.mean().unstack()
    g2rl, grpo = means.loc["g2rl"].to_numpy(), means.loc["grpo"].to_numpy()
    _, low, high = hierarchical_bootstrap([(1.0, g2rl), (-1.0, grpo[:, ::-1])])
    assert low < 0 < high


def test_geometry_differences_use_only_problems_every_seed_has():
    from g2rl_core.pipeline.report import geometry_differences

    pairs = _geometry_pairs({"grpo": 0.3, "g2rl": 0.1})
    gap = pairs[~((pairs.method == "g2rl") & (pairs.seed == 1) & (pairs.problem_id == "p3"))]
    table = geometry_differences(gap, ["grpo", "g2rl"])
    assert (table.problems == 19).all() and table.difference.notna().all()
    assert geometry_differences(pairs[pairs.method == "g2rl"], ["grpo", "g2rl"]).empty  # no baseline
    apart = pairs.assign(problem_id=[f"{m}{p}" for m, p in zip(pairs.method, pairs.problem_id)])
    assert geometry_differences(apart, ["grpo", "g2rl"]).empty  # no problem in common


def test_geometry_differences_widen_with_seed_to_seed_variation():
    from g2rl_core.pipeline.report import geometry_differences

    def width(seed_sd):
        t = geometry_differences(_geometry_pairs({"grpo": 0.3, "g2rl": 0.1}, seed_sd=seed_sd), ["grpo", "g2rl"])
        row = t.set_index("quantity").loc["phi_cos_mean"]
        return row.ci_high - row.ci_low

    assert width(0.2) > 2 * width(0.0)


def test_significance_summary_gives_figure_3_differences_and_keeps_them_out_of_the_tables_count(tmp_path):
    columns = ["method", "baseline", "benchmark", "metric", "difference", "ci_low", "ci_high", "significant"]
    rows = [("G2RL", "GRPO", "MATH500", "pass@1", 1.0, -1.0, 3.0, False)]
    pd.DataFrame(rows, columns=columns).to_csv(tmp_path / "table1_main_results_vs_grpo.csv", index=False)
    geometry = [
        ("G2RL", "GRPO", "phi_cos_mean", -0.08, -0.12, -0.04, True, 30, 3),
        ("G2RL", "GRPO", "negative_pair_share", 4.5, -1.0, 9.0, False, 30, 3),
    ]
    columns = ["method", "baseline", "quantity", "difference", "ci_low", "ci_high", "significant", "problems", "seeds"]
    pd.DataFrame(geometry, columns=columns).to_csv(tmp_path / "fig3_geometry_vs_grpo.csv", index=False)
    text = "\n".join(significance_summary(tmp_path))
    assert "0 of 1 differences have a 95% interval that excludes 0" in text
    assert "- G2RL, phi_cos_mean: -0.080 [-0.120, -0.040] (excludes 0)" in text
    assert "- G2RL, negative_pair_share: +4.500 points [-1.000, +9.000]\n" in text + "\n"
