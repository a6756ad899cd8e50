"""A leaner sampling loop that draws exactly the tokens Hugging Face ``model.generate`` draws.

``TransformersRollout`` samples with ``sample_tokens(...)`` below where ``fast_loop_refusal(model)`` finds
nothing against it (a causal LM on the CPU whose generation config asks for no logits processor
beyond temperature and top-p), and with ``model.generate`` elsewhere. At the tiny profile's shapes
a decode step is a few milliseconds of small kernels, and most of what ``generate`` adds to the
model's own arithmetic is copying (issue 17; benchmarks/rollout_speed.py measures it):

* the KV cache grows by ``torch.cat`` every step, copying the whole cache of every layer;
* with a padding mask, grouped-query attention (Qwen3: 4 query heads, 2 key/value heads) copies the
  cache again to repeat each key/value head (``repeat_kv``) before calling SDPA.

Design choices, each made so that the sampled tokens stay bit-identical to ``generate``'s
(transformers 5.19, ``GenerationMixin._sample`` with a ``DynamicCache``); tests/test_rollout.py
compares the two token for token and the reported log-probs bit for bit:

1. **Same model calls.** The loop calls the model itself, with the keyword arguments ``generate``
   passes: the prefill gets the whole left-padded prompt, position ids ``cumsum(mask) - 1`` (0 on
   padding), the 2D mask (``None`` when the batch has no padding, as ``generate`` drops an all-ones
   mask), ``logits_to_keep=1`` and ``use_cache=True``; each decode step gets the last token, its
   position (previous + 1) and the mask grown by a column of ones. For a Qwen3 model the decode
   steps do not call the model but repeat its operations (point 6).
2. **A KV cache written in place.** ``InPlaceKVLayer`` is a ``DynamicLayer`` that preallocates
   room for prompt + max_new_tokens positions, writes each step's keys/values into it and hands
   attention a view of the filled part. The values attention reads are the same as with
   ``torch.cat``; only the memory layout of the view differs (see 3).
3. **Grouped-query attention inside SDPA** (CPU, ``sdpa`` models only). ``gqa_sdpa_attention`` is
   transformers' ``sdpa_attention_forward`` with ``enable_gqa=True`` also when there is a padding
   mask, instead of materialising repeated heads. PyTorch's CPU flash-attention kernel reads the
   key/value head of each query head by index and by stride, so the arithmetic, and every output
   bit, is the same as on the repeated contiguous copy (tests/test_rollout.py checks the kernel
   directly too). On other devices other kernels may be picked for other layouts, which is one
   reason the loop is used on the CPU only.
4. **Same sampling arithmetic on the same RNG stream.** Logits are copied to float32, divided by
   the temperature when it is not 1.0 (``TemperatureLogitsWarper``), filtered by top-p when
   top_p < 1 (``TopPLogitsWarper``: ascending sort, softmax, cumulative sum, drop the tokens with
   cumulative probability <= 1 - top_p, always keep the most likely), turned into probabilities by
   ``softmax`` and sampled by one ``torch.multinomial(probs, 1)`` over the whole batch per step, on
   the global generator, in the same order. Finished rows still take part in that draw (their token
   is replaced by the pad id), so the RNG consumption is the same as ``generate``'s.
5. **Same stopping rule.** A row is finished once it has emitted one of the EOS ids; the loop ends
   when every row is finished or after ``max_new_tokens`` steps. The result has as many columns as
   steps were taken, finished rows padded with the pad id (the pad id is the first EOS id when the
   tokenizer has none, as in ``generate``).
6. **Decode steps without the module calls** (Qwen3 only). After the prefill, which always goes
   through the model, a decode step of a ``Qwen3ForCausalLM`` is ``qwen3_decode_step``: the same
   tensor operations in the same order as the model's forward in transformers 5.19 (embedding,
   per layer RMSNorm, q/k/v projections, q/k RMSNorm, rotary embedding, the in-place cache, SDPA as
   in 3, o projection, RMSNorm, SiLU MLP; final RMSNorm, LM head on the last position), on the
   model's own parameters, with the padding mask built once per batch instead of once per step.
   At one new token per row the model's arithmetic is a few dozen small kernels, and the Python
   around them (module calls, keyword plumbing, mask construction) was about a quarter of a decode
   step. tests/test_rollout.py compares its logits with the model's bit for bit at every step and
   the tokens with ``generate``'s; ``direct_step_refusal`` sends any other architecture,
   configuration (biases, other rotary types, sliding windows, other attention implementations,
   training mode), module (a LoRA or quantised layer, hooks) or transformers release through the
   model call.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
import transformers
from transformers import AttentionInterface, AttentionMaskInterface, DynamicCache, Qwen3ForCausalLM
from transformers.activations import SiLUActivation
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask
from transformers.models.qwen3.modeling_qwen3 import (
    Qwen3Attention,
    Qwen3DecoderLayer,
    Qwen3MLP,
    Qwen3Model,
    Qwen3RMSNorm,
    Qwen3RotaryEmbedding,
)
from transformers.utils import is_kernels_available

from g2rl_core.maths.features import DecodingFeatures

GQA_SDPA = "g2rl_gqa_sdpa"

# Generation-config fields the loop honours (it is called with explicit sampling settings) or that
# add no logits processor or stopping criterion; any other field set on the model's generation
# config sends sampling back to ``model.generate``.
NEUTRAL_GENERATION_FIELDS = {
    "_from_model_config",
    "transformers_version",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "decoder_start_token_id",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "max_length",
    "max_new_tokens",
    "use_cache",
    "output_attentions",
    "output_hidden_states",
    "output_scores",
    "output_logits",
    "return_dict_in_generate",
}


def gqa_sdpa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' ``sdpa_attention_forward`` with grouped-query attention done by SDPA itself.

    Anything this does not cover (an attention bias, head dims SDPA's GQA does not take) goes to
    ``sdpa_attention_forward`` unchanged.
    """
    if kwargs.get("position_bias") is not None or not key.shape[-1] == value.shape[-1] <= 256:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    is_causal = query.shape[2] > 1 and attention_mask is None and is_causal
    out = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        is_causal=is_causal,
        enable_gqa=key.shape[1] != query.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(GQA_SDPA, gqa_sdpa_attention)
AttentionMaskInterface.register(GQA_SDPA, sdpa_mask)  # the same boolean masks as "sdpa"


def use_gqa_sdpa(model) -> None:
    """Switch a CPU ``sdpa`` model to ``gqa_sdpa_attention`` for all its later calls (other models: unchanged).

    The native trainer's batched passes (the update's forward and backward, the reference pass, the
    old-policy pass) then skip ``repeat_kv``'s copies of every key/value head. Forward: the same bits
    as ``sdpa`` (point 3). Backward: the CPU kernel sums each key/value head's gradient over its query
    heads itself, where ``sdpa`` sums through ``repeat_kv``'s backward, so those gradients differ by
    rounding (tests/test_rollout.py checks float32; in bf16 they differ by bf16 rounding). The
    setting is not saved with the weights (``save_pretrained`` omits it).
    """
    if model.config._attn_implementation == "sdpa" and model.device.type == "cpu":
        model.set_attn_implementation(GQA_SDPA)


class InPlaceKVLayer(DynamicLayer):
    """A ``DynamicLayer`` that writes into preallocated room for ``capacity`` positions.

    ``keys``/``values`` are views of the filled part, so everything ``DynamicLayer`` reads from them
    (sequence length, mask sizes) holds. Only ``update`` is supported (no crop or reordering).
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            batch, heads, _, _ = key_states.shape
            self.key_buffer = key_states.new_empty((batch, heads, self.capacity, key_states.shape[-1]))
            self.value_buffer = value_states.new_empty((batch, heads, self.capacity, value_states.shape[-1]))
            self.filled = 0
        start, self.filled = self.filled, self.filled + key_states.shape[-2]
        self.key_buffer[:, :, start : self.filled] = key_states
        self.value_buffer[:, :, start : self.filled] = value_states
        self.keys = self.key_buffer[:, :, : self.filled]
        self.values = self.value_buffer[:, :, : self.filled]
        return self.keys, self.values


def fast_loop_refusal(model) -> str | None:
    """Why ``sample_tokens`` may not stand in for ``model.generate`` on ``model``, or None when it may."""
    if model.device.type != "cpu":
        return f"the model is on {model.device.type}; the loop's equality with generate is tested on the CPU"
    if model.config.is_encoder_decoder:
        return "an encoder-decoder model"
    accepted = inspect.signature(model.forward).parameters
    if "position_ids" not in accepted or "logits_to_keep" not in accepted:
        return "the model's forward takes no position_ids or logits_to_keep"
    extra = set(model.generation_config.to_diff_dict()) - NEUTRAL_GENERATION_FIELDS
    if extra:
        return f"the model's generation config sets {sorted(extra)}"
    return None


# The transformers release whose Qwen3 forward ``qwen3_decode_step`` follows (tests/test_rollout.py checks
# it bit for bit there); with any other release decode steps go through the model call.
DIRECT_STEP_TRANSFORMERS = "5.19."
# The only module types a model may contain for the direct step: anything else (a LoRA layer, a
# quantised linear, a wrapper) computes something the step would not.
DIRECT_STEP_MODULES = (
    Qwen3ForCausalLM,
    Qwen3Model,
    Qwen3DecoderLayer,
    Qwen3Attention,
    Qwen3MLP,
    Qwen3RMSNorm,
    Qwen3RotaryEmbedding,
    SiLUActivation,
    torch.nn.ModuleList,
    torch.nn.Linear,
    torch.nn.Embedding,
)


def direct_step_refusal(model) -> str | None:
    """Why ``qwen3_decode_step`` may not stand in for the model's own decode call, or None when it may."""
    if type(model) is not Qwen3ForCausalLM:
        return f"{type(model).__name__} is not Qwen3ForCausalLM"
    if not transformers.__version__.startswith(DIRECT_STEP_TRANSFORMERS):
        return f"transformers {transformers.__version__}; the step follows {DIRECT_STEP_TRANSFORMERS}x"
    if is_kernels_available():
        return "the kernels package is installed (hub kernels may replace module forwards)"
    if model.training:
        return "the model is in training mode (dropout)"
    config = model.config
    if config._attn_implementation not in ("sdpa", GQA_SDPA):
        return f"attention implementation {config._attn_implementation!r}"
    for name, module in model.named_modules():
        if type(module) not in DIRECT_STEP_MODULES:
            return f"module {name or 'model'} is a {type(module).__name__}"
        if module._forward_hooks or module._forward_pre_hooks or "forward" in vars(module):
            return f"module {name or 'model'} has hooks or its own forward"
    if any(getattr(module, "bias", None) is not None for module in model.modules()):
        return "biases in the attention, the MLP or the LM head"
    if any(kind != "full_attention" for kind in config.layer_types):
        return "sliding-window layers"
    if model.model.rotary_emb.rope_type != "default":
        return f"rotary type {model.model.rotary_emb.rope_type!r}"
    if any(layer.self_attn.head_dim > 256 for layer in model.model.layers):
        return "head_dim above 256"
    return None


def rms_norm(x: torch.Tensor, norm: Qwen3RMSNorm) -> torch.Tensor:
    """``Qwen3RMSNorm.forward``: normalise in float32, cast back, then scale."""
    dtype = x.dtype
    x = x.to(torch.float32)
    variance = x.pow(2).mean(-1, keepdim=True)
    x = x * torch.rsqrt(variance + norm.variance_epsilon)
    return norm.weight * x.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@torch.no_grad()
def qwen3_decode_step(model, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None, cache):
    """One decode step (one new token per row) of a ``Qwen3ForCausalLM``, without its module calls.

    The operations of the model's forward (module docstring point 6) on the model's current
    parameters and settings (each norm's epsilon, each attention's head_dim and scaling, the
    rotary embedding's frequencies and scaling). ``ids``, ``positions`` [b, 1]; ``mask`` None or
    SDPA's boolean padding mask [b, 1, 1, kv]. Returns the last position's logits [b, V] in the
    model's dtype; each cache layer is updated as the model call would update it.
    """
    decoder = model.model
    x = F.embedding(ids, decoder.embed_tokens.weight)
    rotary = decoder.rotary_emb
    freqs = positions[..., None].float() * rotary.inv_freq.to(device=x.device, dtype=torch.float)
    angles = torch.cat((freqs, freqs), dim=-1)
    cos = (angles.cos() * rotary.attention_scaling).to(x.dtype).unsqueeze(1)
    sin = (angles.sin() * rotary.attention_scaling).to(x.dtype).unsqueeze(1)
    batch = x.shape[0]
    for index, layer in enumerate(decoder.layers[: model.config.num_hidden_layers]):
        attention, mlp = layer.self_attn, layer.mlp
        residual = x
        h = rms_norm(x, layer.input_layernorm)
        shape = (batch, 1, -1, attention.head_dim)
        q = rms_norm(F.linear(h, attention.q_proj.weight).view(shape), attention.q_norm).transpose(1, 2)
        k = rms_norm(F.linear(h, attention.k_proj.weight).view(shape), attention.k_norm).transpose(1, 2)
        v = F.linear(h, attention.v_proj.weight).view(shape).transpose(1, 2)
        q = (q * cos) + (rotate_half(q) * sin)
        k = (k * cos) + (rotate_half(k) * sin)
        k, v = cache.layers[index].update(k, v)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=attention.scaling, enable_gqa=k.shape[1] != q.shape[1]
        )
        out = out.transpose(1, 2).contiguous().reshape(batch, 1, -1).contiguous()
        x = residual + F.linear(out, attention.o_proj.weight)
        residual = x
        h = rms_norm(x, layer.post_attention_layernorm)
        gate, up = F.linear(h, mlp.gate_proj.weight), F.linear(h, mlp.up_proj.weight)
        x = residual + F.linear(F.silu(gate) * up, mlp.down_proj.weight)
    x = rms_norm(x, decoder.norm)
    return F.linear(x[:, -1:], model.lm_head.weight)[:, -1]


def top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """``TopPLogitsWarper(top_p, min_tokens_to_keep=1)``: -inf on the tokens outside the nucleus."""
    sorted_scores, sorted_indices = torch.sort(scores, descending=False)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= (1 - top_p)
    remove_sorted[..., -1:] = 0  # keep the most likely token
    remove = remove_sorted.scatter(1, sorted_indices, remove_sorted)
    return scores.masked_fill(remove, -float("inf"))


@torch.no_grad()
def sample_tokens(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    pad_token_id: int | None,
    eos_token_ids: list[int],
    keep_logits: bool = False,
    features: DecodingFeatures | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """New tokens [b, steps] for left-padded prompts, and with ``keep_logits`` each step's raw float32
    logits [b, V] (``generate``'s ``output_logits``); the RNG is the global one, seeded by the caller.
    ``features`` receives every step's z / T, softmax(z / T) (before top-p) and tokens: the sampled
    responses' log-probs, entropies and Phi under the sampling policy, at no extra model call.

    Equivalent to ``model.generate(input_ids, attention_mask=..., do_sample=True, temperature=...,
    top_p=..., top_k=0, max_new_tokens=..., pad_token_id=..., eos_token_id=eos_token_ids)`` with the
    prompt columns removed; the module docstring lists what is matched and how.
    """
    batch, prompt_length = input_ids.shape
    device = input_ids.device
    pad = torch.tensor(eos_token_ids[0] if pad_token_id is None else pad_token_id, device=device)
    eos = torch.tensor(eos_token_ids, device=device)
    positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    mask = None if bool((attention_mask == 1).all()) else attention_mask
    cache = DynamicCache(config=model.config)
    cache.layers = [
        InPlaceKVLayer(prompt_length + max_new_tokens) if type(layer) is DynamicLayer else layer
        for layer in cache.layers
    ]
    direct = direct_step_refusal(model) is None
    # SDPA's boolean padding mask for every decode step: the prompt's mask, then the new columns (point 6)
    padding = None
    if direct and mask is not None:
        padding = torch.cat([mask.bool(), mask.new_ones((batch, max_new_tokens), dtype=torch.bool)], dim=-1)
    swap_attention = model.config._attn_implementation == "sdpa"
    if swap_attention:
        model.set_attn_implementation(GQA_SDPA)
    unfinished = torch.ones(batch, dtype=torch.long, device=device)
    step_ids, step_positions = input_ids, positions
    tokens, logits_per_step = [], []
    try:
        for step in range(max_new_tokens):
            if step and direct:
                step_mask = None if padding is None else padding[:, None, None, : prompt_length + step]
                raw = qwen3_decode_step(model, step_ids, step_positions, step_mask, cache)
            else:
                raw = model(
                    input_ids=step_ids,
                    attention_mask=mask,
                    position_ids=step_positions,
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                    return_dict=True,
                ).logits[:, -1]
            logits = raw.to(copy=True, dtype=torch.float32)
            if keep_logits:
                logits_per_step.append(logits)
            scores = logits / temperature if temperature != 1.0 else logits
            if top_p < 1.0:
                sampling = torch.softmax(top_p_filter(scores, float(top_p)), dim=-1)
                probs = torch.softmax(scores, dim=-1) if features is not None else None
            else:
                sampling = probs = torch.softmax(scores, dim=-1)
            next_tokens = torch.multinomial(sampling, num_samples=1).squeeze(1)
            next_tokens = next_tokens * unfinished + pad * (1 - unfinished)
            if features is not None:
                features.add(scores, probs, next_tokens, unfinished.bool())
            tokens.append(next_tokens)
            unfinished = unfinished & ~torch.isin(next_tokens, eos)
            if unfinished.max() == 0:
                break
            step_ids, step_positions = next_tokens[:, None], step_positions[:, -1:] + 1
            if mask is not None and not direct:
                mask = torch.cat([mask, mask.new_ones((batch, 1))], dim=-1)
    finally:
        if swap_attention:
            model.set_attn_implementation("sdpa")
    new_tokens = torch.stack(tokens, dim=1) if tokens else input_ids.new_empty((batch, 0))
    return new_tokens, (logits_per_step if keep_logits else None)
