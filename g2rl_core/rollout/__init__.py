"""Rollout back-ends: ``make_rollout(cfg, model, tokenizer, ...)`` picks one by ``RolloutConfig.backend``.

batch.py holds the shared layout (``RolloutBatch``) and helpers; transformers_backend.py and
vllm_backend.py implement ``RolloutBackend``.
"""

from __future__ import annotations

from g2rl_core.config import RolloutConfig
from g2rl_core.rollout.batch import (
    RolloutBackend,
    RolloutBatch,
    encode_prompts,
    eos_token_ids,
    format_prompt,
    left_pad,
    right_pad,
    truncate_at_eos,
)
from g2rl_core.rollout.transformers_backend import TransformersRollout

__all__ = [
    "RolloutBackend",
    "RolloutBatch",
    "TransformersRollout",
    "encode_prompts",
    "eos_token_ids",
    "format_prompt",
    "left_pad",
    "make_rollout",
    "right_pad",
    "truncate_at_eos",
]


def make_rollout(cfg: RolloutConfig, model, tokenizer, *, model_path: str, seed: int = 0) -> RolloutBackend:
    """The back-end named by ``cfg.backend``: "transformers" samples from ``model`` itself; "vllm" loads
    ``model_path`` into an engine and takes ``model``'s weights after every optimiser step."""
    if cfg.backend == "vllm":
        from g2rl_core.rollout.vllm_backend import VLLMRollout

        return VLLMRollout(
            model_path,
            tokenizer,
            chat_template=cfg.chat_template,
            seed=seed,
            dtype=cfg.dtype,
            max_model_len=cfg.max_model_len,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            enforce_eager=cfg.enforce_eager,
            sleep_mode=cfg.sleep_mode,
        )
    return TransformersRollout(model, tokenizer, chat_template=cfg.chat_template, batch_size=cfg.batch_size)
