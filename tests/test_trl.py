"""TRL integration: a single-process run, groups split across 2 processes, and the config mapping."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")

from transformers import TrainerCallback  # noqa: E402

from g2rl_core.config import load_profile  # noqa: E402
from g2rl_core.engines.trl import (  # noqa: E402
    TRL_TO_NATIVE,
    grpo_config_from_profile,
    native_row,
    optimizer_steps_per_step,
    train_with_trl,
)
from g2rl_core.errors import ConfigError  # noqa: E402

SCRIPT = Path(__file__).with_name("trl_split_groups.py")
REPO = Path(__file__).resolve().parents[1]


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_single_process_run_logs_geometry_and_the_native_layout(tiny_base, tmp_path):
    from g2rl_core.engines.native import Trainer

    profile = load_profile("tiny", tiny_base / "params.yaml")
    cfg = profile.train_config("g2rl", 0, steps=2, val_every=2)

    class CountSteps(TrainerCallback):
        optimizer_steps = 0

        def on_step_end(self, args, state, control, **kwargs):
            self.optimizer_steps += 1

    counter = CountSteps()  # extra callbacks reach TRL's trainer (benchmarks/trl_step.py times steps with one)
    trainer = train_with_trl(cfg, str(tmp_path / "trl"), callbacks=[counter])
    assert counter.optimizer_steps == trainer.state.global_step == 2 * optimizer_steps_per_step(cfg)
    logged = [row for row in trainer.state.log_history if "g2rl/nu_mean" in row]
    assert len(logged) == 2  # one generation per training step
    for row in logged:
        assert 0 <= row["g2rl/nu_mean"] <= 1 and 0 <= row["g2rl/phi_neg_share"] <= 1
        assert -1 <= row["g2rl/phi_cos_mean"] <= 1 and "g2rl/base_reward_mean" in row
    assert (tmp_path / "trl" / "final" / "model.safetensors").exists()
    # The same run layout as the native engine: final/ and log.jsonl with the same columns.
    Trainer(cfg, tmp_path / "native").train()
    trl_rows, native_rows = _rows(tmp_path / "trl" / "log.jsonl"), _rows(tmp_path / "native" / "log.jsonl")
    assert [(r["kind"], r["step"]) for r in trl_rows] == [(r["kind"], r["step"]) for r in native_rows]
    for ours, theirs in zip(trl_rows, native_rows):
        assert ours.keys() == theirs.keys(), set(ours) ^ set(theirs)
    assert {f.name for f in (tmp_path / "trl" / "final").iterdir()} >= {"config.json", "model.safetensors"}


# One training step's log dict as TRL 1.16 wrote it (tiny profile, g2rl, 1 optimiser step per training step).
RECORDED_TRL_LOG = {
    "loss": 0.0123,
    "grad_norm": 1.75,
    "learning_rate": 1e-3,
    "num_tokens": 2048.0,
    "completions/mean_length": 25.5,
    "completions/min_length": 12.0,
    "completions/max_length": 40.0,
    "completions/clipped_ratio": 0.125,
    "rewards/verifier_reward/mean": 0.25,
    "rewards/verifier_reward/std": 0.97,
    "reward": 0.0,
    "reward_std": 0.8,
    "frac_reward_zero_std": 0.25,
    "g2rl/base_reward_mean": 0.25,
    "g2rl/accuracy": 0.625,
    "g2rl/advantage_abs_mean": 0.71,
    "g2rl/nu_mean": 0.42,
    "g2rl/nu_std": 0.1,
    "g2rl/nu_min": 0.2,
    "g2rl/nu_max": 0.6,
    "g2rl/phi_cos_mean": 0.3,
    "g2rl/phi_neg_share": 0.05,
    "kl": 0.0004,
    "entropy": 1.9,
    "clip_ratio/low_mean": 0.0,
    "clip_ratio/high_mean": 0.01,
    "clip_ratio/region_mean": 0.01,
    "step_time": 0.8,
    "epoch": 0.5,
}


def test_recorded_trl_log_maps_to_native_columns():
    row = native_row(RECORDED_TRL_LOG, step=3, completions=16, seconds=2.0)
    assert row["kind"] == "train" and row["step"] == 3
    assert (row["reward_mean"], row["accuracy"], row["response_length_mean"]) == (0.25, 0.625, 25.5)
    assert (row["entropy_mean"], row["kl"], row["clip_frac"], row["grad_norm"]) == (1.9, 0.0004, 0.01, 1.75)
    assert (row["nu_mean"], row["phi_cos_mean"], row["lr"], row["loss"]) == (0.42, 0.3, 1e-3, 0.0123)
    assert row["step_time_s"] == 2.0 and row["tokens_per_s"] == pytest.approx(25.5 * 16 / 2.0)
    assert "reward" not in row and "epoch" not in row  # TRL's own names never reach log.jsonl
    assert set(TRL_TO_NATIVE.values()) | {"kind", "step", "step_time_s", "tokens_per_s"} == set(row)


def test_precision_maps_explicitly_to_grpo_config(tmp_path):
    from g2rl_core.config import TrainConfig

    base = dict(prompts_per_step=2, rollouts_per_prompt=2, ppo_mini_batch_size=1, ppo_micro_batch_size=2)
    plain = grpo_config_from_profile(TrainConfig(**base), str(tmp_path))
    assert (plain.bf16, plain.fp16) == (False, False)  # float32 by default; TRL's own default would be bf16 on
    bf16 = grpo_config_from_profile(TrainConfig(**base, precision="bf16"), str(tmp_path))
    assert (bf16.bf16, bf16.fp16) == (True, False)
    with pytest.raises(ConfigError, match="precision = 'fp8'"):
        TrainConfig(**base, precision="fp8")
    tiny = grpo_config_from_profile(load_profile("tiny", REPO / "params.yaml").train_config("grpo", 0), str(tmp_path))
    assert (tiny.bf16, tiny.fp16) == (False, False)  # the tiny profile runs float32 on every engine


def test_checkpoint_every_step_and_resume(tiny_base, tmp_path):
    import shutil

    cfg = load_profile("tiny", tiny_base / "params.yaml").train_config(
        "grpo", 0, steps=2, checkpoint_every=1, keep_checkpoints=2, val_every=10
    )
    train_with_trl(cfg, str(tmp_path))
    per_step = cfg.prompts_per_step // cfg.ppo_mini_batch_size
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("checkpoint-*"))
    assert names == [f"checkpoint-{per_step}", f"checkpoint-{2 * per_step}"]
    first = _rows(tmp_path / "log.jsonl")
    # A crash after step 1's checkpoint: the newest checkpoint and the final model are gone.
    shutil.rmtree(tmp_path / "checkpoints" / f"checkpoint-{2 * per_step}")
    shutil.rmtree(tmp_path / "final")
    trainer = train_with_trl(cfg, str(tmp_path))
    assert trainer.state.global_step == 2 * per_step
    again = _rows(tmp_path / "log.jsonl")
    # Resumed at step 1: no row is written twice, and the rows up to the checkpoint (with their
    # measured step times) are the first run's, so neither step 0's validation nor step 1 ran again.
    assert [(r["kind"], r["step"]) for r in again] == [(r["kind"], r["step"]) for r in first]
    assert again[:2] == first[:2] and again[2]["step_time_s"] != first[2]["step_time_s"]
    assert (tmp_path / "final" / "model.safetensors").exists()
    with pytest.raises(ConfigError, match="different config"):
        train_with_trl(dataclasses_replace(cfg, lr=2e-3), str(tmp_path))


def dataclasses_replace(cfg, **changes):
    import dataclasses

    return dataclasses.replace(cfg, **changes)


def _split_run(model_dir, out, method, processes):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    if processes == 1:
        command = [sys.executable, str(SCRIPT), str(model_dir), str(out), method]
    else:  # `accelerate launch --cpu` starts one process in this version; --multi_gpu + ACCELERATE_USE_CPU runs gloo
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            "29517",
            str(SCRIPT),
            str(model_dir),
            str(out),
            method,
        ]
    subprocess.run(command, check=True, env=env, capture_output=True, timeout=600)
    return json.loads(Path(out).read_text())


@pytest.mark.parametrize("method", ["g2rl", "evol"])
def test_groups_split_across_two_processes_match_one_process(tiny_base, tmp_path, method):
    one = _split_run(tiny_base / "base", tmp_path / "one.json", method, 1)
    two = _split_run(tiny_base / "base", tmp_path / "two.json", method, 2)
    assert one["world"] == 1 and two["world"] == 2
    assert two["advantages"] == pytest.approx(one["advantages"], abs=1e-5)
    assert two["metrics"].keys() == one["metrics"].keys()
    for key, values in one["metrics"].items():
        assert two["metrics"][key] == pytest.approx(values, abs=1e-5), key
    # Shaping is active: equal base rewards get different advantages within a group.
    first = list(zip(one["advantages"][:4], one["base_rewards"][:4]))
    if method == "g2rl":  # nu separates the two correct paths
        assert len({round(a, 4) for a, r in first if r > 0}) > 1
    else:  # EVOL-RL's rules: the lone wrong answer gets -0.5, the unparsable one -1 (two correct ones may tie)
        assert len({round(a, 4) for a, r in first if r < 0}) > 1


def test_profile_maps_to_grpo_config(tmp_path):
    profile = load_profile("paper-1_7b", Path(__file__).resolve().parents[1] / "params.yaml")
    grpo = grpo_config_from_profile(profile.train_config("grpo", 0), str(tmp_path))
    assert (grpo.learning_rate, grpo.beta, grpo.epsilon, grpo.num_generations) == (5e-7, 0.001, 0.2, 16)
    assert grpo.delta == 3.0 and grpo.weight_decay == 0.01  # verl defaults the paper does not state
    assert (grpo.temperature, grpo.max_completion_length, grpo.loss_type, grpo.scale_rewards) == (
        1.0,
        8192,
        "dapo",
        "none",  # every arm: the hook returns eq. 2 advantages (population std), TRL's group std is never used
    )
    assert (
        grpo.generation_batch_size == 256 and grpo.per_device_train_batch_size * grpo.gradient_accumulation_steps == 16
    )
    g2rl = grpo_config_from_profile(profile.train_config("g2rl", 0), str(tmp_path))
    assert g2rl.scale_rewards == "none"
    entropy = grpo_config_from_profile(profile.train_config("entropy", 0), str(tmp_path))
    assert entropy.entropy_coef == 0.001
    assert (grpo.bf16, grpo.fp16, grpo.gradient_checkpointing) == (True, False, True)  # paper profiles: bf16
    assert (grpo.save_strategy, grpo.save_steps, grpo.save_total_limit) == ("steps", 10 * 16, 1)
    assert grpo.logging_steps == 16  # one log row per training step (16 optimiser steps)
    warm = grpo_config_from_profile(
        dataclasses_replace(profile.train_config("grpo", 0), lr_warmup_steps=3), str(tmp_path)
    )
    assert (grpo.warmup_steps, warm.warmup_steps, warm.lr_scheduler_type) == (0, 3 * 16, "constant_with_warmup")
    assert grpo.use_vllm and grpo.vllm_mode == "colocate" and grpo.vllm_enable_sleep_mode


def test_every_arm_uses_eq2_population_std(tiny_base, tmp_path):
    """GRPO through TRL trains on eq. 2 (population std), like G2RL and EVOL-RL, not TRL's Bessel-corrected std."""
    import torch

    from g2rl_core.maths.shaping import grpo_advantages

    out = _split_run(tiny_base / "base", tmp_path / "grpo.json", "grpo", 1)
    rewards = torch.tensor(out["base_rewards"]).view(-1, 4)
    assert any(len(set(group.tolist())) > 1 for group in rewards), "the fixed batch needs a mixed group"
    assert out["advantages"] == pytest.approx(grpo_advantages(rewards).reshape(-1).tolist(), abs=1e-5)
    bessel = (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)
    assert out["advantages"] != pytest.approx(bessel.reshape(-1).tolist(), abs=1e-3)


def _params_with_engine(tiny_base, tmp_path, engine):
    import yaml

    params = yaml.safe_load((tiny_base / "params.yaml").read_text())
    params["profiles"]["tiny"]["engine"] = engine
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.mark.parametrize("engine,flag", [("trl", None), ("native", "trl")])
def test_train_runs_the_profiles_engine_unless_engine_is_given(tiny_base, tmp_path, monkeypatch, engine, flag):
    import g2rl_core.engines.native
    import g2rl_core.engines.trl
    from g2rl_core.pipeline.cli import main

    calls = []
    monkeypatch.setattr(g2rl_core.engines.trl, "train_with_trl", lambda cfg, out, **kw: calls.append(("trl", out)))

    class NoNative:
        def __init__(self, *args):
            calls.append(("native", None))

    monkeypatch.setattr(g2rl_core.engines.native, "Trainer", NoNative)
    argv = ["train", "--params", str(_params_with_engine(tiny_base, tmp_path, engine)), "--method", "grpo"]
    argv += ["--out", str(tmp_path / "run")] + (["--engine", flag] if flag else [])
    assert main(argv) == 0
    assert calls == [("trl", str(tmp_path / "run"))]


def test_verl_engine_without_its_runner_is_a_one_line_error(tiny_base, tmp_path, monkeypatch, capsys):
    import sys as _sys

    from g2rl_core.pipeline.cli import main

    monkeypatch.setitem(_sys.modules, "g2rl_core.engines.verl.run", None)  # the verl branch's runner absent
    argv = ["train", "--params", str(_params_with_engine(tiny_base, tmp_path, "verl")), "--method", "grpo"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "g2rl_core/engines/verl/launch.sh" in err


def test_unknown_engine_is_refused(tiny_base, tmp_path):
    with pytest.raises(ConfigError, match="engine = 'deepspeed' is not allowed"):
        load_profile("tiny", _params_with_engine(tiny_base, tmp_path, "deepspeed"))
