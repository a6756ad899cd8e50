"""The native trainer's GPU path, as far as a CPU can check it: micro-batched no-grad passes,
bf16 Phi against float32, device and precision placement, the settings' errors, gpu_smoke --tiny."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_qwen3

from g2rl_core.config import ConfigError, RolloutConfig, TrainConfig, load_profile
from g2rl_core.engines import native
from g2rl_core.engines.native import Trainer, micro_batched_features
from g2rl_core.maths.features import causal_lm_sequence_features
from g2rl_core.models import resolve_device
from g2rl_core.rollout import RolloutBatch, left_pad, right_pad

ROOT = Path(__file__).resolve().parents[1]


def _ragged_batch(vocab: int, seed: int = 0, n: int = 7) -> RolloutBatch:
    """n responses with prompt lengths 1..6 and response lengths 1..9, so each micro-batch pads differently."""
    g = torch.Generator().manual_seed(seed)
    prompt_lens = [1 + (3 * i) % 6 for i in range(n)]
    response_lens = [1 + (5 * i + 2) % 9 for i in range(n)]
    prompts = [torch.randint(0, vocab, (k,), generator=g).tolist() for k in prompt_lens]
    responses = [torch.randint(0, vocab, (k,), generator=g).tolist() for k in response_lens]
    prompt_ids, prompt_mask = left_pad(prompts, 0)
    response_ids, response_mask = right_pad(responses, 0)
    return RolloutBatch(prompt_ids, prompt_mask, response_ids, response_mask, [""] * n)


@pytest.mark.parametrize("micro", [1, 3, 7])
def test_micro_batched_old_policy_pass_equals_whole_batch(micro):
    """Phi, log-probs, entropies over micro-batches (each trimmed to its own padding) equal the whole-batch
    pass on every valid token, in float64 to 1e-9; padding positions are exactly 0."""
    model = tiny_qwen3(tie_word_embeddings=True).double()
    batch = _ragged_batch(model.config.vocab_size)
    whole = causal_lm_sequence_features(
        model, batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask, temperature=0.7
    )
    parts = micro_batched_features(model, batch, micro, temperature=0.7, chunk_size=5)
    valid = batch.response_mask.bool()
    assert parts.logprobs.shape == whole.logprobs.shape and parts.phi.shape == whole.phi.shape
    torch.testing.assert_close(parts.logprobs[valid], whole.logprobs[valid], rtol=0, atol=1e-9)
    torch.testing.assert_close(parts.entropy[valid], whole.entropy[valid], rtol=0, atol=1e-9)
    torch.testing.assert_close(parts.phi, whole.phi, rtol=0, atol=1e-9)
    assert not parts.logprobs[~valid].any() and not parts.entropy[~valid].any()


def _bare_trainer(cfg: TrainConfig, model) -> Trainer:
    """A Trainer with only what ``logprobs`` / ``reference_logprobs`` read (no data, no rollout back-end)."""
    trainer = Trainer.__new__(Trainer)
    trainer.cfg, trainer.model, trainer.ref = cfg, model, copy.deepcopy(model)
    return trainer


def test_micro_batched_reference_pass_and_update_rows_equal_whole_batch():
    model = tiny_qwen3(tie_word_embeddings=False).double()
    batch = _ragged_batch(model.config.vocab_size, seed=1)
    trainer = _bare_trainer(TrainConfig(log_prob_micro_batch_size=2, temperature=0.9, feature_chunk_size=4), model)
    whole = causal_lm_sequence_features(
        model, batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask, temperature=0.9
    )
    valid = batch.response_mask.bool()
    ref = trainer.reference_logprobs(batch)
    torch.testing.assert_close(ref[valid], whole.logprobs[valid], rtol=0, atol=1e-9)
    # the update's rows (trimmed, then zero-padded back to R) agree too, and stay differentiable
    logp, entropy = trainer.logprobs(model, batch, slice(2, 5))
    torch.testing.assert_close(logp[valid[2:5]], whole.logprobs[2:5][valid[2:5]], rtol=0, atol=1e-9)
    torch.testing.assert_close(entropy[valid[2:5]], whole.entropy[2:5][valid[2:5]], rtol=0, atol=1e-9)
    assert logp.shape == (3, batch.response_ids.shape[1]) and logp.requires_grad


def test_bf16_phi_stays_close_to_float32():
    """Decoder and LM head in bf16, Phi's softmax and sums in float32: Phi keeps a cosine >= 0.99 and a relative
    error <= 5% of float32's per response. Log-probs: max abs error <= 0.15 nats, mean <= 0.05 (measured: 0.080,
    0.033): the LM head's logits are rounded to bf16 (8-bit mantissa) before the float32 softmax, and the test head
    is sharpened x20 (|logits| ~ 20), so ~2^-9 * 20 per logit is the expected scale, as in verl's bf16 log-prob pass."""
    model = tiny_qwen3(tie_word_embeddings=True, vocab_size=512, hidden_size=64)
    batch = _ragged_batch(512, seed=2, n=8)
    f32 = micro_batched_features(model, batch, 4, temperature=1.0, chunk_size=16)
    bf16 = micro_batched_features(copy.deepcopy(model).bfloat16(), batch, 4, temperature=1.0, chunk_size=16)
    assert bf16.phi.dtype == torch.float32 and bf16.logprobs.dtype == torch.float32  # sums stay float32
    cos = torch.nn.functional.cosine_similarity(bf16.phi, f32.phi, dim=-1)
    rel = (bf16.phi - f32.phi).norm(dim=-1) / f32.phi.norm(dim=-1)
    print(f"bf16 vs float32: Phi cos min {cos.min():.5f}, rel max {rel.max():.4f}")
    assert cos.min() >= 0.99, cos
    assert rel.max() <= 0.05, rel
    valid = batch.response_mask.bool()
    err = (bf16.logprobs - f32.logprobs)[valid].abs()
    assert err.max() <= 0.15 and err.mean() <= 0.05, err


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="precision = 'fp8'"):
        TrainConfig(precision="fp8")
    with pytest.raises(ConfigError, match="device = 'gpu0'"):
        TrainConfig(device="gpu0")
    with pytest.raises(ConfigError, match="log_prob_micro_batch_size = 0"):
        TrainConfig(log_prob_micro_batch_size=0)
    with pytest.raises(ConfigError, match="gpu_memory_utilization = 1.5"):
        RolloutConfig(gpu_memory_utilization=1.5)
    with pytest.raises(ConfigError, match="dtype = 'bf16'"):
        RolloutConfig(dtype="bf16")


def test_device_auto_and_missing_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="device = 'cuda'.*no CUDA GPU"):
        resolve_device("cuda")


def test_trainer_places_everything_on_the_device_in_the_precision(tiny_base, tmp_path, monkeypatch):
    """device=cpu, bf16, checkpointing, micro-batch 3: model and reference in bf16 on cfg.device, every batch
    tensor the passes see on cfg.device, the no-grad passes run in micro-batches of 3, the step is finite."""
    profile = load_profile("tiny", tiny_base / "params.yaml")
    cfg = profile.train_config(
        "g2rl", 0, device="cpu", precision="bf16", gradient_checkpointing=True, log_prob_micro_batch_size=3
    )
    trainer = Trainer(cfg, tmp_path)
    device = torch.device("cpu")
    for model in (trainer.model, trainer.ref):
        assert {p.device for p in model.parameters()} == {device}
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert trainer.model.is_gradient_checkpointing
    seen = []
    real = native.causal_lm_sequence_features

    def spy(model, *tensors, **kwargs):
        seen.append([t.device for t in tensors] + [t.shape[0] for t in tensors[:1]])
        return real(model, *tensors, **kwargs)

    monkeypatch.setattr(native, "causal_lm_sequence_features", spy)
    row = trainer.train_step()
    N = cfg.prompts_per_step * cfg.rollouts_per_prompt
    assert [s[-1] for s in seen] == [3] * (N // 3) + ([N % 3] if N % 3 else [])
    assert all(d == device for s in seen for d in s[:-1])
    assert all(v == v for k, v in row.items() if isinstance(v, float)), row  # no NaN
    assert {p.dtype for p in trainer.model.parameters()} == {torch.bfloat16}


def test_gpu_smoke_runs_tiny_on_cpu(tmp_path):
    """scripts/gpu_smoke.sh's logic at tiny shapes on CPU: two steps, and every figure it promises is printed."""
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_smoke.sh"), "--tiny", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**__import__("os").environ, "PYTHON": sys.executable},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for key in ["peak_memory_gib", "generation_tokens_per_s", "training_tokens_per_s", "step_time_s", "phi_share"]:
        assert f"{key}=" in out.stdout, (key, out.stdout)
    assert out.stdout.count("step ") >= 2
