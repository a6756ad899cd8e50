"""TRL integration: a single-process run, groups split across 2 processes, and the config mapping."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")

from g2rl_core.config import load_profile  # noqa: E402
from g2rl_core.engines.trl import grpo_config_from_profile, train_with_trl  # noqa: E402

SCRIPT = Path(__file__).with_name("trl_split_groups.py")


def test_single_process_run_logs_geometry(tiny_base, tmp_path):
    cfg = load_profile("tiny", tiny_base / "params.yaml").train_config("g2rl", 0, steps=2)
    trainer = train_with_trl(cfg, str(tmp_path))
    logged = [row for row in trainer.state.log_history if "g2rl/nu_mean" in row]
    assert len(logged) == 2  # one generation per training step
    for row in logged:
        assert 0 <= row["g2rl/nu_mean"] <= 1 and 0 <= row["g2rl/phi_neg_share"] <= 1
        assert -1 <= row["g2rl/phi_cos_mean"] <= 1 and "g2rl/base_reward_mean" in row
    assert (tmp_path / "final" / "model.safetensors").exists()


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
    assert len({round(a, 4) for a, r in zip(one["advantages"][:4], one["base_rewards"][:4]) if r > 0}) > 1


def test_profile_maps_to_grpo_config(tmp_path):
    profile = load_profile("paper-1.7b", Path(__file__).resolve().parents[1] / "params.yaml")
    grpo = grpo_config_from_profile(profile.train_config("grpo", 0), str(tmp_path))
    assert (grpo.learning_rate, grpo.beta, grpo.epsilon, grpo.num_generations) == (5e-7, 0.001, 0.2, 16)
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
