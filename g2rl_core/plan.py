"""The memory and work plan of a training run, from its config and the model's shape alone (``g2rl plan``).

Nothing is loaded: the model's shape comes from its ``config.json`` (a local directory), from
``KNOWN_SHAPES`` (the paper's base models, so a machine without the hub can plan them), or from the
hub's config file. Every figure is an estimate of what the native engine allocates on one device:

- **weights, gradients, optimiser states, reference**: parameters x bytes of ``precision``; AdamW
  keeps two states per parameter in the parameters' dtype; the reference exists with ``use_kl_loss``.
- **update pass** (one micro-batch of ``ppo_micro_batch_size`` responses, forward and backward):
  the tensors autograd saves, counted from the Qwen3 decoder layer as transformers runs it (RMSNorm
  upcasts to float32; q/k norms; the grouped KV heads repeated for attention with a padding mask;
  a fused attention kernel, so no T x T matrix is kept: true of the GPU kernels, and of torch's CPU
  flash kernel) plus the vocabulary head, which keeps float32 logits and probabilities for every
  response token (``features.token_logprobs_and_entropy``), plus one chunk's transients. With
  ``gradient_checkpointing`` the decoder keeps only each layer's input and recomputes one layer at
  a time in the backward.
- **no-grad pass** (old policy with Phi, reference; ``log_prob_micro_batch_size`` responses): the
  largest transient of one decoder layer, the final hidden states, the two [chunk, V] buffers of
  the vocabulary pass and Phi's [responses, V] float32 residual.
- **vLLM**: its share (``rollout.gpu_memory_utilization`` of the device) while it generates; the
  KV cache of one longest response (prompt + ``max_response_length``) and how many such responses
  the share holds at once after vLLM's copy of the weights. With ``sleep_mode`` vLLM frees both
  while the policy trains.

``tests/test_plan.py`` checks the update-pass estimate against the peak memory measured on the CPU
for small shapes, with and without checkpointing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from g2rl_core.config import TrainConfig
from g2rl_core.errors import ConfigError
from g2rl_core.maths.methods import METHODS

GIB = 2**30
BYTES = {"float32": 4, "bf16": 2}
VLLM_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "auto": 2}
#: Prompt tokens assumed per response when the plan is not told (verl's ``data.max_prompt_length`` is
#: often 1024; a MATH problem in the chat template is 100-500 tokens).
DEFAULT_PROMPT_TOKENS = 1024
#: Memory a sentence encoder takes on the device (EVOL-RL): parameters in bf16, by name.
ENCODER_PARAMETERS = {"Qwen/Qwen3-Embedding-4B": 4.02e9, "all-MiniLM-L6-v2": 22.7e6}


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of a decoder-only (Qwen3-style) model's config."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    tie_word_embeddings: bool = True

    @classmethod
    def from_config(cls, config: dict, source: str) -> ModelShape:
        try:
            heads = int(config["num_attention_heads"])
            return cls(
                vocab_size=int(config["vocab_size"]),
                hidden_size=int(config["hidden_size"]),
                intermediate_size=int(config["intermediate_size"]),
                num_hidden_layers=int(config["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=int(config.get("num_key_value_heads") or heads),
                head_dim=int(config.get("head_dim") or int(config["hidden_size"]) // heads),
                tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"{source}: not a decoder config the plan can read ({err!r})") from None

    def parameters(self) -> int:
        d, h = self.hidden_size, self.head_dim
        attention = d * h * (2 * self.num_attention_heads + 2 * self.num_key_value_heads) + 2 * h
        layer = attention + 3 * d * self.intermediate_size + 2 * d
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.num_hidden_layers * layer + d + head


_QWEN3 = dict(vocab_size=151936, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True)
#: The paper's base models (their hub config.json), so that the plan needs no hub.
KNOWN_SHAPES = {
    "Qwen/Qwen3-1.7B-Base": ModelShape(
        hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16, **_QWEN3
    ),
    "Qwen/Qwen3-4B-Base": ModelShape(
        hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32, **_QWEN3
    ),
}


def model_shape(name_or_path: str) -> ModelShape:
    """The shape of a local model directory (its config.json), a known hub model, or any hub model."""
    config_file = Path(name_or_path) / "config.json"
    if config_file.is_file():
        try:
            return ModelShape.from_config(json.loads(config_file.read_text()), str(config_file))
        except (OSError, ValueError) as err:
            raise ConfigError(f"{config_file}: cannot read it ({err})") from None
    if name_or_path in KNOWN_SHAPES:
        return KNOWN_SHAPES[name_or_path]
    try:
        from transformers import AutoConfig

        return ModelShape.from_config(AutoConfig.from_pretrained(name_or_path).to_dict(), name_or_path)
    except OSError as err:
        raise ConfigError(
            f"model = {name_or_path!r}: no local config.json and the hub's is unreachable ({err})"
        ) from None


# --- activations --------------------------------------------------------------------------------------


def decoder_layer_saved_bytes(shape: ModelShape, p: int) -> float:
    """Bytes autograd keeps per token for one Qwen3 decoder layer's backward, weights in ``p``-byte floats.

    RMSNorm (x2 over d, q_norm over the query heads, k_norm over the KV heads) keeps a float32 copy of
    its input and its normalised output: (4 + p) per element. Attention keeps the rotated queries,
    the KV heads repeated to every query head (keys and values), its output and the output's
    contiguous copy that o_proj reads: 5 p per query element. The MLP keeps gate, up, SiLU(gate) and
    their product: 4 p per intermediate element.
    """
    d, qh, kvh = (
        shape.hidden_size,
        shape.num_attention_heads * shape.head_dim,
        shape.num_key_value_heads * shape.head_dim,
    )
    norms = (4 + p) * (2 * d + qh + kvh)
    attention = 5 * p * qh
    mlp = 4 * p * shape.intermediate_size
    return norms + attention + mlp


def head_saved_bytes(shape: ModelShape) -> float:
    """Bytes kept per response token by the differentiable vocabulary pass: float32 logits and probabilities."""
    return 8 * shape.vocab_size


def head_backward_transient_bytes(shape: ModelShape, p: int, chunk: int) -> float:
    """The largest transient of the vocabulary pass's backward, for one chunk of ``chunk`` tokens: four
    [chunk, V] float32 gradients alive at once (measured on the CPU with ``token_logprobs_and_entropy``),
    the chunk's low-precision logits when the model is not float32, and the head's [V, d] weight gradient
    before it is added to ``.grad``."""
    low_precision_logits = p if p != 4 else 0
    return chunk * shape.vocab_size * (4 * 4 + low_precision_logits) + p * shape.vocab_size * shape.hidden_size


def update_activation_bytes(
    shape: ModelShape, p: int, responses: int, prompt_tokens: int, response_tokens: int, chunk: int, checkpointing: bool
) -> float:
    """Peak activation bytes of the update pass (forward + backward) of one micro-batch of ``responses``.

    The backward runs the head first, while the decoder's saved tensors are all held; then the
    decoder, layer by layer. Without checkpointing the first moment is the peak. With it, the decoder
    holds only each layer's input, and the peak is the larger of that moment and one recomputed layer.
    """
    tokens = responses * (prompt_tokens + response_tokens)
    layer = tokens * decoder_layer_saved_bytes(shape, p)
    inputs = tokens * shape.num_hidden_layers * p * shape.hidden_size  # each layer's input
    final_norm = tokens * (4 + p) * shape.hidden_size
    chunk_rows = min(chunk, responses * response_tokens)
    head = responses * response_tokens * head_saved_bytes(shape) + head_backward_transient_bytes(shape, p, chunk_rows)
    if not checkpointing:
        return shape.num_hidden_layers * layer + final_norm + head
    return max(inputs + final_norm + head, inputs + layer)


def no_grad_pass_bytes(shape: ModelShape, p: int, responses: int, prompt_tokens: int, response_tokens: int, chunk: int):
    """Peak bytes of one no-grad micro-batch (old policy with Phi, reference), beyond the weights."""
    tokens = responses * (prompt_tokens + response_tokens)
    d, I = shape.hidden_size, shape.intermediate_size  # noqa: E741
    layer = tokens * p * (2 * d + 3 * I)  # residual stream, gate, up and their product alive at once
    hidden = tokens * p * d
    chunk_rows = min(chunk, responses * response_tokens)
    buffers = chunk_rows * shape.vocab_size * (p + 4)
    residual = responses * shape.vocab_size * 4
    return layer + hidden + buffers + residual


# --- the plan -----------------------------------------------------------------------------------------


def kv_cache_bytes_per_token(shape: ModelShape, dtype_bytes: int) -> int:
    return 2 * shape.num_hidden_layers * shape.num_key_value_heads * shape.head_dim * dtype_bytes


def memory_plan(
    cfg: TrainConfig,
    shape: ModelShape,
    *,
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
    device_bytes: float | None = None,
) -> dict:
    """Bytes per component of one run on one device, the phases' peaks, and what vLLM's share holds."""
    if cfg.precision not in BYTES:
        raise ConfigError(f"precision = {cfg.precision!r}; the plan knows {sorted(BYTES)}")
    p, n = BYTES[cfg.precision], shape.parameters()
    R, chunk = cfg.max_response_length, cfg.feature_chunk_size or cfg.max_response_length
    weights = n * p
    parts = {
        "weights": weights,
        "gradients": weights,
        "optimizer": 2 * weights,  # AdamW's two states, in the parameters' dtype
        "reference": weights if cfg.use_kl_loss else 0,
        "encoder": 2 * ENCODER_PARAMETERS.get(cfg.encoder, 0) if METHODS[cfg.method].needs_encoder else 0,
        "update_activations": update_activation_bytes(
            shape, p, cfg.ppo_micro_batch_size, prompt_tokens, R, chunk, cfg.gradient_checkpointing
        ),
        "update_activations_other_checkpointing": update_activation_bytes(
            shape, p, cfg.ppo_micro_batch_size, prompt_tokens, R, chunk, not cfg.gradient_checkpointing
        ),
        "no_grad_pass": no_grad_pass_bytes(shape, p, cfg.log_prob_micro_batch_size, prompt_tokens, R, chunk),
    }
    resident = sum(parts[k] for k in ("weights", "gradients", "optimizer", "reference", "encoder"))
    plan = {"parameters": n, "bytes_per_parameter": p, "prompt_tokens": prompt_tokens, "parts": parts}
    plan["training_peak"] = resident + max(parts["update_activations"], parts["no_grad_pass"])
    rollout = cfg.rollout
    if rollout.backend == "vllm":
        vp = VLLM_DTYPE_BYTES.get(rollout.dtype, 2)
        kv_one = kv_cache_bytes_per_token(shape, vp) * (prompt_tokens + R)
        plan["vllm"] = {"kv_cache_longest_response": kv_one, "weights": n * vp}
        if device_bytes is not None:
            share = rollout.gpu_memory_utilization * device_bytes
            plan["vllm"]["share"] = share
            plan["vllm"]["longest_responses_at_once"] = max(0, math.floor((share - n * vp) / kv_one))
            # while vLLM generates, the trainer's resident state stays on the device
            plan["generation_peak"] = resident + share
            plan["vllm"]["asleep_while_training"] = rollout.sleep_mode
            if not rollout.sleep_mode:
                plan["training_peak"] += share
    plan["peak"] = max(plan["training_peak"], plan.get("generation_peak", 0))
    if device_bytes is not None:
        plan["device_bytes"] = device_bytes
        plan["fits"] = plan["peak"] <= device_bytes
    return plan


def work_plan(cfg: TrainConfig, runs: int) -> dict:
    """Upper bounds of the work of ``runs`` training runs: responses and response tokens generated."""
    responses = cfg.prompts_per_step * cfg.rollouts_per_prompt
    return {
        "runs": runs,
        "steps": cfg.steps,
        "responses_per_step": responses,
        "max_tokens_per_response": cfg.max_response_length,
        "responses": runs * cfg.steps * responses,
        "max_response_tokens": runs * cfg.steps * responses * cfg.max_response_length,
    }


def format_plan(name: str, plan: dict, work: dict) -> str:
    """The plan as the text ``g2rl plan`` prints."""

    def gib(x: float) -> str:
        return f"{x / GIB:8.2f} GiB"

    parts = plan["parts"]
    on, off = (
        ("with", "without")
        if parts["update_activations"] <= parts["update_activations_other_checkpointing"]
        else (
            "without",
            "with",
        )
    )
    lines = [
        f"{name}: {plan['parameters'] / 1e9:.3f} B parameters, {plan['bytes_per_parameter']} bytes each; "
        f"{plan['prompt_tokens']} prompt tokens assumed per response",
        "memory of one run on one device:",
        f"  weights                {gib(parts['weights'])}",
        f"  gradients              {gib(parts['gradients'])}",
        f"  optimizer (AdamW)      {gib(parts['optimizer'])}",
        f"  reference model        {gib(parts['reference'])}",
    ]
    if parts["encoder"]:
        lines.append(f"  sentence encoder       {gib(parts['encoder'])}")
    lines += [
        f"  update micro-batch     {gib(parts['update_activations'])}  activations, {on} gradient checkpointing "
        f"({gib(parts['update_activations_other_checkpointing']).strip()} {off})",
        f"  no-grad micro-batch    {gib(parts['no_grad_pass'])}  old policy with Phi / reference",
    ]
    if "vllm" in plan:
        v = plan["vllm"]
        lines.append(f"  vLLM KV cache          {gib(v['kv_cache_longest_response'])}  per longest response")
        if "share" in v:
            lines.append(
                f"  vLLM share             {gib(v['share'])}  holds {v['longest_responses_at_once']} longest "
                f"responses at once ({'asleep' if v['asleep_while_training'] else 'awake'} while training)"
            )
    lines.append(f"  peak while training    {gib(plan['training_peak'])}")
    if "generation_peak" in plan:
        lines.append(f"  peak while generating  {gib(plan['generation_peak'])}")
    if "device_bytes" in plan:
        verdict = "fits" if plan["fits"] else "does NOT fit"
        lines.append(f"  device                 {gib(plan['device_bytes'])}  the run {verdict}")
    lines.append(
        f"work: {work['runs']} runs x {work['steps']} steps x {work['responses_per_step']} responses x "
        f"<= {work['max_tokens_per_response']} tokens = {work['responses']:,} responses, "
        f"<= {work['max_response_tokens'] / 1e9:.2f} B response tokens"
    )
    return "\n".join(lines)


def require_fit(cfg: TrainConfig, device_bytes: float, *, prompt_tokens: int = DEFAULT_PROMPT_TOKENS) -> dict:
    """The run's plan; a ConfigError that says what the run needs when it does not fit ``device_bytes``."""
    shape = model_shape(cfg.model)
    plan = memory_plan(cfg, shape, prompt_tokens=prompt_tokens, device_bytes=device_bytes)
    if not plan["fits"]:
        parts = plan["parts"]
        resident = sum(parts[k] for k in ("weights", "gradients", "optimizer", "reference"))
        raise ConfigError(
            f"model = {cfg.model!r} needs about {plan['peak'] / GIB:.1f} GiB on one device "
            f"(weights, gradients, AdamW and reference {resident / GIB:.1f}, "
            f"update micro-batch {parts['update_activations'] / GIB:.1f}"
            + (f", vLLM share {plan['vllm']['share'] / GIB:.1f}" if "vllm" in plan else "")
            + f") but the device has {device_bytes / GIB:.1f} GiB; lower ppo_micro_batch_size, max_response_length "
            "or rollout.gpu_memory_utilization, or turn on gradient_checkpointing (`g2rl plan` shows the plan)"
        )
    return plan
