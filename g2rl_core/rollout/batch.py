"""The rollout batch layout and the prompt/padding helpers every back-end shares.

Rollout back-ends behind one interface: Hugging Face transformers (default on CPU) and vLLM.

``backend.generate(prompts, n=m, ...)`` returns a ``RolloutBatch`` in group layout: response
i * m + j is the j-th sample for prompt i. Prompts are left-padded, responses right-padded
(verl's layout), so ``features.causal_lm_sequence_features`` consumes the batch directly.
Sampling is seeded per call, so a run resumed from a checkpoint draws the same samples.
``backend.sync_weights(model)`` pushes the trainer's weights to the engine after every
optimiser step (a no-op for transformers, which samples from the trained model itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from g2rl_core.errors import ConfigError
from g2rl_core.maths.features import SequenceFeatures


@dataclass
class RolloutBatch:
    prompt_ids: Tensor  # [N, P] left-padded
    prompt_mask: Tensor  # [N, P]
    response_ids: Tensor  # [N, R] right-padded
    response_mask: Tensor  # [N, R], 1 on sampled tokens up to and including EOS
    texts: list[str]  # decoded responses, special tokens removed
    sampler_logprobs: Tensor | None = None  # [N, R] log-probs reported by the engine, if any
    # the sampling policy's Phi [N, d], log-probs and entropies [N, R] at the sampling temperature, from
    # the sampling pass itself (transformers back-end, ``generate(..., policy_features=True)``), if any
    policy_features: SequenceFeatures | None = None


class RolloutBackend(Protocol):
    def generate(
        self,
        prompts: list[str],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seed: int,
        policy_features: bool = False,
    ) -> RolloutBatch: ...

    def sync_weights(self, model: torch.nn.Module) -> None: ...


SYSTEM_PROMPT = "You are a helpful assistant."


def prompt_messages(prompt: str) -> list[dict[str, str]]:
    """The chat of one problem in SimpleRL-Zoo's ``qwen-boxed`` template: a system turn and a user turn.

    Source: repository hkust-nlp/simpleRL-reason, file examples/simplelr_math_eval/utils.py at
    commit cf1c7858bfc145a27aa733e75d930d34f0d318a6, ``PROMPT_TEMPLATES["qwen-boxed"]``, the
    template its README uses for the Qwen base models (the "complex prompts (qwen)" format of its
    training data). Rendered by a Qwen chat template it reads::

        <|im_start|>system
        You are a helpful assistant.<|im_end|>
        <|im_start|>user
        {question}
        Please reason step by step, and put your final answer within \\boxed{}.<|im_end|>
        <|im_start|>assistant

    ``prompt`` is ``Problem.prompt``: the question (stripped; multiple choice with its lettered
    options) and the instruction on its own line, as ``evaluation.benchmarks`` writes it.
    """
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]


def format_prompt(tokenizer, prompt: str, chat_template: bool) -> str:
    """THE prompt text every engine feeds the policy (native trainer, eval, TRL, verl).

    ``chat_template`` on: ``prompt_messages(prompt)`` rendered by the tokenizer's chat template
    with the generation prompt (``<|im_start|>assistant\\n`` for Qwen3; no thinking switch is
    passed, so a Qwen3 template adds no empty think block). Off (the tiny profile, whose
    tokenizer has no template): the bare ``prompt``. An engine that tokenizes prompts itself
    takes this text as a plain string prompt (TRL applies no template to strings); one that
    insists on chat messages and applies the same tokenizer's template (verl's RLHFDataset)
    takes ``prompt_messages(prompt)``, which renders to this same text.
    """
    if not chat_template:
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"chat_template: true, but the tokenizer of {getattr(tokenizer, 'name_or_path', '?')!r} has no chat "
            "template; set rollout.chat_template: false or use a model that ships one"
        )
    return tokenizer.apply_chat_template(prompt_messages(prompt), tokenize=False, add_generation_prompt=True)


def encode_prompts(tokenizer, prompts: list[str], chat_template: bool) -> tuple[Tensor, Tensor]:
    """Left-padded prompt ids and mask."""
    texts = [format_prompt(tokenizer, p, chat_template) for p in prompts]
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    return left_pad(rows, tokenizer.pad_token_id)


def _pad(rows: list[list], pad: float, dtype: torch.dtype, side: str) -> tuple[Tensor, Tensor]:
    """``rows`` as one [len(rows), longest] tensor padded on ``side`` with ``pad``, and the 0/1 mask of real entries."""
    ids = pad_sequence(
        [torch.as_tensor(row, dtype=dtype) for row in rows], batch_first=True, padding_value=pad, padding_side=side
    )
    mask = pad_sequence(
        [torch.ones(len(row), dtype=torch.long) for row in rows], batch_first=True, padding_value=0, padding_side=side
    )
    return ids, mask


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Token ids [N, longest] left-padded with ``pad_id`` (prompts), and the attention mask."""
    return _pad(rows, pad_id, torch.long, "left")


def right_pad(rows: list[list], pad: float, dtype: torch.dtype = torch.long) -> tuple[Tensor, Tensor]:
    """Values [N, max(1, longest)] right-padded with ``pad`` (responses, their log-probs), and the mask.

    At least one column, so a batch of empty responses still has a response axis.
    """
    ids, mask = _pad(rows, pad, dtype, "right")
    if ids.shape[1] == 0:
        ids, mask = torch.full((len(rows), 1), pad, dtype=dtype), torch.zeros((len(rows), 1), dtype=torch.long)
    return ids, mask


def truncate_at_eos(tokens: list[int], eos_ids: set[int]) -> list[int]:
    """Tokens up to and including the first EOS."""
    for pos, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: pos + 1]
    return tokens


def eos_token_ids(tokenizer, model_config=None) -> set[int]:
    ids = {tokenizer.eos_token_id}
    extra = getattr(model_config, "eos_token_id", None) if model_config is not None else None
    ids |= set(extra) if isinstance(extra, (list, tuple)) else ({extra} if extra is not None else set())
    return {i for i in ids if i is not None}
