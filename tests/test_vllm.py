"""vLLM rollouts on CPU: after optimiser steps, the engine's log-probs match the trainer's.

Runs where vllm is importable (the separate environment of scripts/setup_extra.sh vllm; .ci/run
runs this file there). Tolerance: 2e-3 absolute on each token's log-prob (float32 engine
and trainer, different attention kernels). Without the sync the engine would still hold
the base weights; the test checks that those differ from the trained ones by far more.
"""

import os

import pytest

vllm = pytest.importorskip("vllm")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from g2rl_core.config import load_profile  # noqa: E402
from g2rl_core.engines.native import Trainer  # noqa: E402
from g2rl_core.maths.features import causal_lm_sequence_features  # noqa: E402
from g2rl_core.models import load_policy  # noqa: E402

TOLERANCE = 2e-3
PROMPTS = [
    "Compute 2+7+5.\nPlease reason step by step, and put your final answer within \\boxed{}.",
    "Compute 9+1+4+3.\nPlease reason step by step, and put your final answer within \\boxed{}.",
]


def test_engine_weights_follow_the_trainer(tiny_base, tmp_path):
    profile = load_profile("tiny", tiny_base / "params.yaml")
    cfg = profile.train_config(
        "g2rl", 0, rollout={"backend": "vllm"}, steps=3, lr=3e-3, val_every=3, checkpoint_every=3
    )
    trainer = Trainer(cfg, tmp_path)
    trainer.train()  # 3 steps x 2 mini-batches: 6 optimiser steps, 6 syncs
    batch = trainer.backend.generate(PROMPTS, n=4, temperature=1.0, top_p=1.0, max_new_tokens=40, seed=123)
    mask = batch.response_mask.bool()
    args = (batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask)
    trained = causal_lm_sequence_features(trainer.model, *args).logprobs
    gap = (trained[mask] - batch.sampler_logprobs[mask]).abs().max().item()
    assert gap < TOLERANCE, f"engine and trainer log-probs differ by {gap:.2e}"

    base_model, _ = load_policy(cfg.model)
    base = causal_lm_sequence_features(base_model, *args).logprobs
    assert (base[mask] - batch.sampler_logprobs[mask]).abs().max().item() > 50 * TOLERANCE, (
        "training did not move the weights"
    )
    assert sum(t.count("\\boxed") for t in batch.texts) > 0
