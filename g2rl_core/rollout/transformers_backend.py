"""Rollouts with Hugging Face transformers: samples from the trained model in place.

Sampling draws exactly the tokens of ``model.generate``: on the CPU through the leaner loop of
``g2rl_core.rollout.decode`` (tested token for token against ``generate``), elsewhere through
``generate`` itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from g2rl_core.maths.features import DecodingFeatures, SequenceFeatures, lm_head_parameters
from g2rl_core.rollout.batch import RolloutBatch, encode_prompts, eos_token_ids, right_pad, truncate_at_eos
from g2rl_core.rollout.decode import fast_loop_refusal, sample_tokens


class TransformersRollout:
    """Batched sampling from the trained model in place, ``batch_size`` sequences per model call batch."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        chat_template: bool = False,
        batch_size: int = 256,
        return_logprobs: bool = False,
        use_generate: bool = False,
    ):
        """``return_logprobs`` keeps the sampler's [N, R, V] logits to report its log-probs (tests, debugging).
        ``use_generate`` always samples with ``model.generate``, the reference the leaner loop is tested against."""
        self.model, self.tokenizer = model, tokenizer
        self.chat_template, self.batch_size, self.return_logprobs = chat_template, batch_size, return_logprobs
        self.use_generate = use_generate
        self.eos = eos_token_ids(tokenizer, model.config)

    @torch.no_grad()
    def generate(self, prompts, *, n, temperature, top_p, max_new_tokens, seed, policy_features=False) -> RolloutBatch:
        """``policy_features``: the batch also carries the sampled responses' log-probs, entropies and Phi
        under the sampling policy at ``temperature`` (``RolloutBatch.policy_features``), computed from the
        sampling loop's own logits; None where the loop is refused (``fast_loop_refusal``)."""
        expanded = [p for p in prompts for _ in range(n)]
        prompt_ids, prompt_mask = encode_prompts(self.tokenizer, expanded, self.chat_template)
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        was_training = self.model.training
        self.model.eval()
        responses: list[list[int]] = []
        sampler_logprobs: list[list[float]] = []
        streamed = policy_features and not self.use_generate and fast_loop_refusal(self.model) is None
        weight = lm_head_parameters(self.model)[0] if streamed else None
        parts: list[SequenceFeatures] = []
        try:
            for start in range(0, len(expanded), self.batch_size):
                ids = prompt_ids[start : start + self.batch_size].to(self.model.device)
                mask = prompt_mask[start : start + self.batch_size].to(self.model.device)
                features = DecodingFeatures(ids.shape[0], weight.shape[0], ids.device) if streamed else None
                new_tokens, step_logits = self.sample(ids, mask, temperature, top_p, max_new_tokens, features)
                if features is not None:
                    parts.append(features.finish(weight))
                for row in new_tokens.tolist():
                    responses.append(truncate_at_eos(row, self.eos))
                if self.return_logprobs:
                    logits = torch.stack(step_logits, dim=1).float() / temperature  # [b, R, V]
                    chosen = torch.log_softmax(logits, -1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
                    sampler_logprobs.extend(chosen.tolist())
        finally:
            torch.random.set_rng_state(generator_state)
            self.model.train(was_training)
        response_ids, response_mask = right_pad(responses, self.tokenizer.pad_token_id)
        texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
        reported = None
        if self.return_logprobs:
            reported = right_pad([lp[: len(r)] for lp, r in zip(sampler_logprobs, responses)], 0.0, torch.float32)[0]
        policy = None
        if parts:
            width = response_ids.shape[1]
            policy = SequenceFeatures(
                phi=torch.cat([part.phi for part in parts]),
                logprobs=torch.cat([F.pad(part.logprobs, (0, width - part.logprobs.shape[1])) for part in parts]),
                entropy=torch.cat([F.pad(part.entropy, (0, width - part.entropy.shape[1])) for part in parts]),
            )
        return RolloutBatch(prompt_ids, prompt_mask, response_ids, response_mask, texts, reported, policy)

    def sample(
        self, ids, mask, temperature, top_p, max_new_tokens, features: DecodingFeatures | None = None
    ) -> tuple[torch.Tensor, tuple | list | None]:
        """New tokens [b, steps] of one batch (finished rows padded), and each step's raw logits if kept;
        ``features`` (only where ``fast_loop_refusal`` is None) accumulates the policy's features."""
        pad, eos = self.tokenizer.pad_token_id, sorted(self.eos)
        if not self.use_generate and fast_loop_refusal(self.model) is None:
            return sample_tokens(
                self.model,
                ids,
                mask,
                temperature=temperature,
                top_p=top_p,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
                eos_token_ids=eos,
                keep_logits=self.return_logprobs,
                features=features,
            )
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            top_k=0,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad,
            eos_token_id=eos,
            return_dict_in_generate=True,
            output_logits=self.return_logprobs,
        )
        return out.sequences[:, ids.shape[1] :], out.logits

    def sync_weights(self, model) -> None:
        if model is not self.model:
            raise ValueError("TransformersRollout samples from the model it was built with; pass that model")
