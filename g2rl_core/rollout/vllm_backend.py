"""vLLM rollout back-end, with the trainer's weights pushed into the engine after every optimiser step.

The engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``). A weight sync is vLLM's
in-place ``reload_weights`` with the trainer's state dict (Hugging Face names): unlike a bare
``load_weights`` it also redoes the post-load processing of each layer (the CPU back-end
repacks linear weights). Then the prefix cache is reset, so that no KV entry computed with the
old weights is reused.
Log-probs are reported after temperature scaling (``logprobs_mode="processed_logprobs"``),
which is what the trainer recomputes. Prompts are tokenised here, exactly as for the
transformers back-end, and passed to the engine as token ids.

vLLM and this package's main environment pin different numpy versions; the README's
vLLM section sets up a separate environment (``scripts/setup_extra.sh vllm``).
"""

from __future__ import annotations

import os

import torch

from g2rl_core.errors import ConfigError
from g2rl_core.rollout.batch import RolloutBatch, encode_prompts, eos_token_ids, right_pad, truncate_at_eos


class VLLMRollout:
    def __init__(
        self,
        model_path: str,
        tokenizer,
        *,
        chat_template: bool = False,
        seed: int = 0,
        dtype: str = "float32",
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.5,
    ):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB, CPU back-end only
        try:
            from vllm import LLM
        except ImportError as err:
            raise ConfigError(
                "rollout = 'vllm' but vllm is not importable in this environment; use the vLLM environment "
                "(bash scripts/setup_extra.sh vllm, then .venv-vllm/bin/g2rl ...) or set rollout.backend=transformers"
            ) from err

        self.tokenizer, self.chat_template = tokenizer, chat_template
        self.llm = LLM(
            model=model_path,
            tokenizer=model_path,
            dtype=dtype,
            seed=seed,
            enforce_eager=True,
            logprobs_mode="processed_logprobs",
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
        )
        self.eos = eos_token_ids(tokenizer, self.llm.llm_engine.model_config.hf_config)

    def generate(self, prompts, *, n, temperature, top_p, max_new_tokens, seed) -> RolloutBatch:
        from vllm import SamplingParams

        prompt_ids, prompt_mask = encode_prompts(self.tokenizer, prompts, self.chat_template)
        requests = [{"prompt_token_ids": ids[mask.bool()].tolist()} for ids, mask in zip(prompt_ids, prompt_mask)]
        params = [
            SamplingParams(
                n=n,
                temperature=temperature,
                top_p=top_p,
                max_tokens=max_new_tokens,
                seed=seed + i,
                logprobs=0,
                stop_token_ids=sorted(self.eos),
            )
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        responses, logprobs = [], []
        for out in outputs:
            for completion in sorted(out.outputs, key=lambda c: c.index):
                tokens = truncate_at_eos(list(completion.token_ids), self.eos)
                responses.append(tokens)
                logprobs.append([step[token].logprob for step, token in zip(completion.logprobs, tokens)])
        response_ids, response_mask = right_pad(responses, self.tokenizer.pad_token_id)
        reported = right_pad(logprobs, 0.0, torch.float32)[0]
        texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
        return RolloutBatch(
            prompt_ids.repeat_interleave(n, 0),
            prompt_mask.repeat_interleave(n, 0),
            response_ids,
            response_mask,
            texts,
            reported,
        )

    @torch.no_grad()
    def sync_weights(self, model: torch.nn.Module) -> None:
        weights = [(name, tensor.detach().clone()) for name, tensor in model.state_dict().items()]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()
