"""Experiment trackers (g2rl_core.tracking): every log row and a per-step completions table reach each tracker."""

import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from g2rl_core.config import ConfigError, TrainConfig, load_profile
from g2rl_core.maths.shaping import ShapingConfig, exploration_scores, shape_rewards
from g2rl_core.tracking import COMPLETION_COLUMNS, completions_table, open_trackers, preserve_rng, read_log

TIMING = {"step_time_s", "tokens_per_s"}  # wall-clock: differ between two runs of the same config
REPO = Path(__file__).resolve().parents[1]


def test_loggers_setting_refuses_unknown_and_repeated_names():
    assert TrainConfig(loggers=["dvclive", "trackio"]).loggers == ["dvclive", "trackio"]
    assert TrainConfig().loggers == []
    with pytest.raises(ConfigError, match="mlflow"):
        TrainConfig(loggers=["mlflow"])
    with pytest.raises(ConfigError, match="at most once"):
        TrainConfig(loggers=["dvclive", "dvclive"])
    with pytest.raises(ConfigError, match="loggers"):
        TrainConfig(loggers="dvclive")


def test_pipeline_profiles_log_to_dvclive():
    for profile in ("tiny", "paper-1_7b", "paper-4b"):
        assert load_profile(profile, REPO / "params.yaml").train_config("g2rl", 0).loggers == ["dvclive"]


def test_completions_table_holds_reward_nu_and_shaped_reward_of_each_completion():
    torch.manual_seed(0)
    G, m, d = 2, 3, 5
    rewards = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    phi = torch.randn(G, m, d)
    advantages = torch.randn(G, m)
    shaping = ShapingConfig(lam=0.5)
    texts = [f"text {i}" for i in range(G * m)]
    rows = completions_table(7, ["p0", "p1"], ["a0", "a1"], texts, rewards, phi, advantages, shaping)
    assert len(rows) == G * m and all(tuple(r) == COMPLETION_COLUMNS for r in rows)
    nu = exploration_scores(phi, rewards)
    shaped = shape_rewards(rewards, nu, **shaping.kwargs())
    for i, row in enumerate(rows):
        g, j = divmod(i, m)
        assert (row["step"], row["prompt"], row["answer"], row["completion"]) == (7, f"p{g}", f"a{g}", texts[i])
        assert row["reward"] == rewards[g, j].item() and row["advantage"] == pytest.approx(advantages[g, j].item())
        assert row["nu"] == pytest.approx(nu[g, j].item()) and row["shaped_reward"] == pytest.approx(
            shaped[g, j].item()
        )
    assert any(r["shaped_reward"] != r["reward"] for r in rows)  # shaping acts (lam = 0.5)


def test_completions_table_without_phi_leaves_nu_and_shaped_reward_empty():
    rewards = torch.tensor([[1.0, -1.0], [-1.0, -1.0]])
    advantages = torch.tensor([[1.0, -1.0], [0.0, 0.0]])
    rows = completions_table(3, ["p0", "p1"], ["a0", "a1"], list("wxyz"), rewards, None, advantages, ShapingConfig())
    assert [(r["prompt"], r["completion"], r["reward"], r["advantage"]) for r in rows] == [
        ("p0", "w", 1.0, 1.0),
        ("p0", "x", -1.0, -1.0),
        ("p1", "y", -1.0, 0.0),
        ("p1", "z", -1.0, 0.0),
    ]
    assert all(r["nu"] is None and r["shaped_reward"] is None for r in rows)


def test_trackers_leave_the_random_generators_as_they_were():
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    with preserve_rng():
        torch.rand(3), random.random(), np.random.rand()
    assert torch.equal(before[0], torch.get_rng_state()) and before[1] == random.getstate()
    assert (before[2] == np.random.get_state()[1]).all()


def test_a_missing_tracker_package_is_a_one_line_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(ConfigError, match=r"'wandb' needs the wandb package; pip install wandb"):
        open_trackers(["wandb"], tmp_path, run_name="x", config={}, history=[])


def _tsv(path: Path) -> list[tuple[int, float]]:
    lines = path.read_text().splitlines()
    assert lines[0].split("\t") == ["step", path.stem]
    return [(int(s), float(v)) for s, v in (line.split("\t") for line in lines[1:])]


def _dvclive_curves(run: Path) -> dict[str, list[tuple[int, float]]]:
    root = run / "dvclive" / "plots" / "metrics"
    return {str(p.relative_to(root).with_suffix("")): _tsv(p) for p in sorted(root.rglob("*.tsv"))}


def test_native_engine_sends_every_log_row_to_dvclive_and_a_resume_rebuilds_it(tiny_base, tmp_path):
    profile = load_profile("tiny", tiny_base / "params.yaml")
    cfg = profile.train_config(
        "g2rl", 0, steps=3, val_every=3, checkpoint_every=1, keep_checkpoints=3, loggers=["dvclive"]
    )
    from g2rl_core.engines.native import Trainer

    clean = tmp_path / "clean"
    Trainer(cfg, clean).train()
    rows = read_log(clean / "log.jsonl")
    curves = _dvclive_curves(clean)
    expected: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key not in ("kind", "step"):
                expected.setdefault(f"{row['kind']}/{key}", []).append((row["step"], float(value)))
    assert curves == expected  # every numeric field of every row, at its step
    summary = json.loads((clean / "dvclive" / "metrics.json").read_text())
    last_train = [r for r in rows if r["kind"] == "train"][-1]
    assert summary["step"] == 3 and summary["train"]["reward_mean"] == last_train["reward_mean"]
    assert summary["val"]["val_mean_at_2"] == rows[-1]["val_mean_at_2"]
    G, m = cfg.prompts_per_step, cfg.rollouts_per_prompt
    tables = {p.name: json.loads(p.read_text()) for p in sorted((clean / "dvclive" / "completions").iterdir())}
    assert list(tables) == ["step_000001.json", "step_000002.json", "step_000003.json"]
    for step, table in enumerate(tables.values(), start=1):
        assert len(table) == G * m and {r["step"] for r in table} == {step}
        assert all(set(r) == set(COMPLETION_COLUMNS) and 0 <= r["nu"] <= 1 for r in table)

    # A run killed after step 3's log and tables, with only step 1's checkpoint on disk, resumes to the same files.
    killed = tmp_path / "killed"
    shutil.copytree(clean, killed)
    shutil.rmtree(killed / "final")
    for name in ("step-00000002", "step-00000003"):
        shutil.rmtree(killed / "checkpoints" / name)
    (killed / "dvclive" / "completions" / "step_000003.json").write_text("[]")  # a table the resume must rewrite
    Trainer(cfg, killed).train()
    drop = lambda c: {k: v for k, v in c.items() if k.split("/")[-1] not in TIMING}  # noqa: E731
    assert drop(_dvclive_curves(killed)) == drop(curves)
    for name, table in tables.items():
        assert json.loads((killed / "dvclive" / "completions" / name).read_text()) == table


TRAIN_CALLS = {  # how each engine trains a profile's config into a run directory
    "native": ("from g2rl_core.engines.native import Trainer", "Trainer(cfg, {out!r}).train()"),
    "trl": ("from g2rl_core.engines.trl import train_with_trl", "train_with_trl(cfg, {out!r})"),
}


@pytest.mark.parametrize("engine", ["native", "trl"])
def test_engine_logs_every_row_once_to_trackio_offline(engine, tiny_base, tmp_path):
    """grpo, 2 steps: every log.jsonl row reaches trackio once per step with its value, a completions
    table per training step, none of TRL's own column names, and no dvclive folder."""
    if engine == "trl":
        pytest.importorskip("trl")
    pytest.importorskip("trackio")
    imports, call = TRAIN_CALLS[engine]
    script = textwrap.dedent(
        f"""
        from g2rl_core.config import load_profile
        {imports}
        profile = load_profile("tiny", {str(tiny_base / "params.yaml")!r})
        cfg = profile.train_config("grpo", 0, steps=2, val_every=2, checkpoint_every=2, loggers=["trackio"])
        {call.format(out=str(tmp_path / "run"))}
        from trackio.sqlite_storage import SQLiteStorage
        import json
        print("LOGS", json.dumps(SQLiteStorage.get_logs("g2rl", "run-grpo-seed0"), default=str))
        """
    )
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    logs = json.loads(done.stdout.split("LOGS ", 1)[1])
    rows = read_log(tmp_path / "run" / "log.jsonl")
    assert [(r["kind"], r["step"]) for r in rows] == [("val", 0), ("train", 1), ("train", 2), ("val", 2)]
    for row in rows:
        logged = [entry for entry in logs if entry.get("step") == row["step"]]
        for key, value in row.items():
            if key not in ("kind", "step"):
                hits = [entry[f"{row['kind']}/{key}"] for entry in logged if f"{row['kind']}/{key}" in entry]
                assert hits == [pytest.approx(value)], key  # once, with log.jsonl's value
    assert not any(key.startswith(("rewards/", "train/reward_std")) for entry in logs for key in entry)  # not TRL's
    tables = [entry for entry in logs if "completions" in entry]
    assert sorted(entry["step"] for entry in tables) == [1, 2]
    assert (tmp_path / "trackio").is_dir() and not (tmp_path / "run" / "dvclive").exists()


def test_trl_engine_never_reports_through_transformers_callbacks(tiny_base, tmp_path):
    """Our trackers write every logger; TRL's report_to stays off, so no row reaches a tracker twice."""
    pytest.importorskip("trl")
    from g2rl_core.engines.trl import grpo_config_from_profile

    profile = load_profile("tiny", tiny_base / "params.yaml")
    for loggers in ([], ["dvclive"], ["dvclive", "trackio"], ["tensorboard", "wandb"]):
        cfg = profile.train_config("g2rl", 0, loggers=loggers)
        assert grpo_config_from_profile(cfg, str(tmp_path)).report_to in ([], "none", ["none"]), loggers


def _expected_curves(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    expected: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key not in ("kind", "step"):
                expected.setdefault(f"{row['kind']}/{key}", []).append((row["step"], float(value)))
    return expected


def test_trl_engine_sends_every_log_row_to_dvclive(tiny_base, tmp_path):
    pytest.importorskip("trl")
    from g2rl_core.engines.trl import train_with_trl

    profile = load_profile("tiny", tiny_base / "params.yaml")
    cfg = profile.train_config("g2rl", 0, steps=2, val_every=2, loggers=["dvclive"])
    run = tmp_path / "trl"
    train_with_trl(cfg, str(run))
    rows = read_log(run / "log.jsonl")
    assert [(r["kind"], r["step"]) for r in rows] == [("val", 0), ("train", 1), ("train", 2), ("val", 2)]
    assert _dvclive_curves(run) == _expected_curves(rows)  # every numeric field of every row, at its step, once
    summary = json.loads((run / "dvclive" / "metrics.json").read_text())
    last_train = [r for r in rows if r["kind"] == "train"][-1]
    assert summary["step"] == 2 and summary["train"] == {
        k: v for k, v in last_train.items() if k not in ("kind", "step")
    }
    assert summary["val"]["val_mean_at_2"] == rows[-1]["val_mean_at_2"]
    G, m = cfg.prompts_per_step, cfg.rollouts_per_prompt
    tables = {p.name: json.loads(p.read_text()) for p in sorted((run / "dvclive" / "completions").iterdir())}
    assert list(tables) == ["step_000001.json", "step_000002.json"]
    for step, table in enumerate(tables.values(), start=1):
        assert len(table) == G * m and {r["step"] for r in table} == {step}
        assert all(set(r) == set(COMPLETION_COLUMNS) and 0 <= r["nu"] <= 1 for r in table)
        assert {r["reward"] for r in table} <= {-1.0, 1.0}
        # the table's rewards are the step's: their mean is the logged reward_mean
        train_row = next(r for r in rows if r["kind"] == "train" and r["step"] == step)
        assert sum(r["reward"] for r in table) / len(table) == pytest.approx(train_row["reward_mean"])
    assert not (REPO / "dvclive").exists()  # nothing written next to the repository's dvc.yaml
