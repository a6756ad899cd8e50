"""vLLM rollout back-end, with the trainer's weights pushed into the engine after every optimiser step.

The engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``). A weight sync is vLLM's
in-place ``reload_weights`` with the trainer's state dict (Hugging Face names): unlike a bare
``load_weights`` it also redoes the post-load processing of each layer (the CPU back-end
repacks linear weights). Then the prefix cache is reset, so that no KV entry computed with the
old weights is reused.
Log-probs are reported after temperature scaling (``logprobs_mode="processed_logprobs"``),
which is what the trainer recomputes. Prompts are tokenised here, exactly as for the
transformers back-end, and passed to the engine as token ids.

Settings (``RolloutConfig``): ``dtype`` ("bfloat16" on GPUs), ``gpu_memory_utilization`` (vLLM's
share of the GPU, weights + KV cache), ``enforce_eager`` and ``sleep_mode``. With sleep mode the
trainer calls ``sleep()`` once a step's responses are in (level 1: weights offloaded to CPU, KV
cache freed, so the policy's update has the GPU) and ``wake_up()`` after the update; a weight
sync requested while asleep is applied at wake-up. vLLM's sleep mode needs CUDA: on any other
platform ``sleep_mode: true`` is refused with a ConfigError before the engine loads.

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
        enforce_eager: bool = True,
        sleep_mode: bool = False,
        ignore_eos: bool = False,
    ):
        """``ignore_eos`` samples every response to ``max_new_tokens`` (benchmarks/gpu_smoke.py only)."""
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB, CPU back-end only
        try:
            from vllm import LLM
        except ImportError as err:
            raise ConfigError(
                "rollout = 'vllm' but vllm is not importable in this environment; use the vLLM environment "
                "(bash scripts/setup_extra.sh vllm, then .venv-vllm/bin/g2rl ...) or set rollout.backend=transformers"
            ) from err

        if sleep_mode and not torch.cuda.is_available():
            raise ConfigError(
                "rollout.sleep_mode = true needs a CUDA GPU (vLLM's sleep mode is CUDA-only); "
                "set rollout.sleep_mode: false on this machine"
            )
        self.tokenizer, self.chat_template = tokenizer, chat_template
        self.sleep_mode, self.asleep, self.pending, self.ignore_eos = sleep_mode, False, None, ignore_eos
        self.llm = LLM(
            model=model_path,
            tokenizer=model_path,
            dtype=dtype,
            seed=seed,
            enforce_eager=enforce_eager,
            enable_sleep_mode=sleep_mode,
            logprobs_mode="processed_logprobs",
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
        )
        self.eos = eos_token_ids(tokenizer, self.llm.llm_engine.model_config.hf_config)

    def generate(self, prompts, *, n, temperature, top_p, max_new_tokens, seed, policy_features=False) -> RolloutBatch:
        if policy_features:  # TrainConfig refuses old_policy_from_rollout with vLLM first; this guards direct calls
            raise ValueError("vLLM reports sampled log-probs only, not the full distributions Phi needs")
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
                stop_token_ids=[] if self.ignore_eos else sorted(self.eos),
                ignore_eos=self.ignore_eos,
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

    def sleep(self) -> None:
        """Free the GPU for the policy's update (sleep mode only; a no-op otherwise)."""
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake_up(self) -> None:
        """Restore the engine, then apply the newest weight sync requested while asleep."""
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False
            if self.pending is not None:
                model, self.pending = self.pending, None
                self.sync_weights(model)

    @torch.no_grad()
    def sync_weights(self, model: torch.nn.Module) -> None:
        if self.asleep:  # weights are offloaded; push them once the engine is awake
            self.pending = model
            return
        weights = [(name, tensor.detach().clone()) for name, tensor in model.state_dict().items()]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()
