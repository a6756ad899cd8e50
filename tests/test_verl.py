"""verl adapter on CPU, against verl's real DataProto, compute_advantage and Hydra config.

Runs in the environment of scripts/setup_extra.sh verl (verl pins transformers < 5.11); skipped
where verl is not importable.
"""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

verl = pytest.importorskip("verl")

from verl.protocol import DataProto  # noqa: E402
from verl.trainer.ppo import ray_trainer  # noqa: E402
from verl.trainer.ppo.core_algos import AdvantageEstimator  # noqa: E402

from conftest import tiny_qwen3  # noqa: E402
from g2rl_core.features import causal_lm_sequence_features, final_hidden_states, lm_head_parameters  # noqa: E402
from g2rl_core.integrations.verl.adapter import (  # noqa: E402
    PHI_KEY, ShapingConfig, install_advantage_hook, packed_response_features, shape_dataproto,
)
from g2rl_core.integrations.verl.overrides import verl_overrides  # noqa: E402
from g2rl_core.shaping import exploration_scores, shape_rewards  # noqa: E402


def _dataproto(seed=0, groups=3, m=4, R=6, d=5):
    g = torch.Generator().manual_seed(seed)
    B = groups * m
    uid = np.array([f"q{i % groups}" for i in range(B)], dtype=object)  # groups interleaved, as after shuffling
    mask = torch.ones(B, R, dtype=torch.long)
    lengths = torch.randint(2, R + 1, (B,), generator=g)
    mask[torch.arange(R) >= lengths.unsqueeze(1)] = 0
    rewards = torch.where(torch.rand(B, generator=g) > 0.5, 1.0, -1.0)
    scores = torch.zeros(B, R)
    scores[torch.arange(B), lengths - 1] = rewards
    batch = {"response_mask": mask, "token_level_scores": scores, "token_level_rewards": scores.clone(),
             "responses": torch.zeros(B, R, dtype=torch.long), PHI_KEY: torch.randn(B, d, generator=g)}
    return DataProto.from_dict(tensors=batch, non_tensors={"uid": uid}), rewards, uid


def test_shaping_groups_by_uid_and_writes_last_token():
    data, rewards, uid = _dataproto()
    cfg = ShapingConfig(lam=1.0, variant="centered")
    phi = data.batch[PHI_KEY].clone()
    metrics = shape_dataproto(data, cfg)
    shaped = data.batch["token_level_rewards"]
    mask = data.batch["response_mask"]
    for group in np.unique(uid):
        idx = np.nonzero(uid == group)[0]
        r, f = rewards[idx].unsqueeze(0), phi[idx].unsqueeze(0)
        expected = shape_rewards(r, exploration_scores(f, r), lam=1.0, variant="centered")[0]
        torch.testing.assert_close(shaped[idx].sum(-1), expected)
    last = mask.sum(-1) - 1
    assert torch.all(shaped[torch.arange(len(last)), last] == shaped.sum(-1))  # all mass on the last token
    assert torch.equal(data.batch["token_level_scores"].sum(-1), rewards)  # scores keep the verifier reward
    assert 0 <= metrics["g2rl/nu_mean"] <= 1


def test_verl_grpo_advantage_after_shaping_is_our_eq2_up_to_verls_unbiased_std():
    data, rewards, uid = _dataproto(seed=1, groups=2, m=8)
    shape_dataproto(data, ShapingConfig(lam=1.0))
    shaped = data.batch["token_level_rewards"].sum(-1)
    out = ray_trainer.compute_advantage(data, AdvantageEstimator.GRPO, norm_adv_by_std_in_grpo=True)
    adv = out.batch["advantages"][:, 0]
    from g2rl_core.shaping import grpo_advantages

    m = 8
    for group in np.unique(uid):
        idx = np.nonzero(uid == group)[0]
        ours = grpo_advantages(shaped[idx].unsqueeze(0))[0]
        # verl divides by the unbiased std (+1e-6): a constant factor sqrt((m-1)/m) from eq. 2's population std.
        torch.testing.assert_close(adv[idx], ours * math.sqrt((m - 1) / m), rtol=1e-3, atol=1e-3)


def test_advantage_hook_shapes_only_batches_with_phi():
    install_advantage_hook(ShapingConfig(lam=2.0))
    install_advantage_hook(ShapingConfig(lam=2.0))  # idempotent
    data, rewards, _ = _dataproto(seed=2)
    out = ray_trainer.compute_advantage(data, AdvantageEstimator.GRPO)
    assert "g2rl/nu_mean" in out.meta_info["metrics"]
    assert not torch.equal(out.batch["token_level_rewards"].sum(-1), rewards)
    plain, rewards2, _ = _dataproto(seed=2)
    plain.batch.pop(PHI_KEY)
    out2 = ray_trainer.compute_advantage(plain, AdvantageEstimator.GRPO)
    assert torch.equal(out2.batch["token_level_rewards"].sum(-1), rewards2)


def test_packed_layout_features_match_the_padded_pass():
    model = tiny_qwen3(tie_word_embeddings=False).double()
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, V, (n,), generator=g) for n in (3, 5, 4)]
    responses = [torch.randint(0, V, (n,), generator=g) for n in (6, 2, 4)]
    # verl's no-padding pass: every sequence unpadded, packed end to end.
    hidden = torch.cat([final_hidden_states(model, torch.cat([p, r]).unsqueeze(0), torch.ones(1, len(p) + len(r)))[0]
                        for p, r in zip(prompts, responses)])
    ids = torch.cat([torch.cat([p, r]) for p, r in zip(prompts, responses)])
    cu = torch.tensor([0, *np.cumsum([len(p) + len(r) for p, r in zip(prompts, responses)])])
    W, b = lm_head_parameters(model)
    packed = packed_response_features(hidden.detach(), W, ids, cu, torch.tensor([len(r) for r in responses]), temperature=0.7)
    # The padded layout through the library's own pass.
    P = max(map(len, prompts))
    prompt_ids = torch.stack([torch.cat([torch.zeros(P - len(p), dtype=torch.long), p]) for p in prompts])
    prompt_mask = torch.stack([torch.cat([torch.zeros(P - len(p)), torch.ones(len(p))]) for p in prompts]).long()
    R = max(map(len, responses))
    response_ids = torch.stack([torch.cat([r, torch.zeros(R - len(r), dtype=torch.long)]) for r in responses])
    response_mask = torch.stack([torch.cat([torch.ones(len(r)), torch.zeros(R - len(r))]) for r in responses]).long()
    padded = causal_lm_sequence_features(model, prompt_ids, prompt_mask, response_ids, response_mask, temperature=0.7)
    torch.testing.assert_close(packed.phi, padded.phi, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(packed.logprobs, padded.logprobs, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("profile, length", [("paper-1.7b", 8192), ("paper-4b", 12288)])
def test_launch_overrides_compose_with_verls_hydra_config(profile, length):
    from hydra import compose, initialize_config_dir

    config_dir = Path(verl.__file__).parent / "trainer" / "config"
    overrides = verl_overrides(profile, "g2rl", train_files="train.parquet", val_files="val.parquet", lam=1.5)
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=overrides)
    actor, rollout = cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout
    assert (cfg.data.train_batch_size, rollout.n, actor.ppo_mini_batch_size, actor.ppo_micro_batch_size_per_gpu) == (16, 16, 1, 2)
    assert (actor.optim.lr, actor.use_kl_loss, actor.kl_loss_coef, actor.kl_loss_type) == (5e-7, True, 0.001, "low_var_kl")
    assert (rollout.temperature, rollout.val_kwargs.temperature, cfg.data.max_response_length) == (1.0, 0.8, length)
    assert (cfg.algorithm.adv_estimator, actor.loss_agg_mode, cfg.trainer.total_training_steps) == ("grpo", "token-mean", 200)
    assert cfg.g2rl.lam == 1.5 and cfg.g2rl.variant == "equation"
