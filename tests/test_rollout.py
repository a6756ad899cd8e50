"""The transformers back-end's leaner sampling loop draws exactly the tokens of ``model.generate`` (issue 17).

Every comparison is exact (``torch.equal``): the new tokens including the pad columns of finished
rows, the RNG state after sampling, the decoded batch and the sampler's log-probs. The models: the
tiny profile's base model when it is built (build/tiny/base, ``g2rl sft --profile tiny``; skipped
otherwise; 4 query heads, 2 key/value heads) and the ``tiny_base`` fixture (2 query heads, 1
key/value head).
"""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_qwen3

from g2rl_core.config import load_profile
from g2rl_core.maths.features import causal_lm_sequence_features
from g2rl_core.models import load_policy
from g2rl_core.rollout import TransformersRollout, encode_prompts
from g2rl_core.rollout.decode import (
    GQA_SDPA,
    InPlaceKVLayer,
    direct_step_refusal,
    fast_loop_refusal,
    qwen3_decode_step,
    use_gqa_sdpa,
)

PROFILE_BASE = Path(__file__).resolve().parents[1] / "build" / "tiny" / "base"
TASK_PROMPTS = [
    "Compute 2+7+6+1+2.",
    "Compute 1+5+8.",
    "Compute 4+5+9+5+5.\nPlease reason step by step, and put your final answer within \\boxed{}.",
    "Compute 9+1.",
]


@pytest.fixture(scope="module", params=["profile_base", "tiny_base"])
def policy(request):
    """(model, tokenizer, prompts) of each test model."""
    if request.param == "profile_base":
        if not (PROFILE_BASE / "config.json").is_file():
            pytest.skip("the tiny profile's base model is not built (g2rl sft --profile tiny --out build/tiny)")
        model, tokenizer = load_policy(str(PROFILE_BASE))
        train = PROFILE_BASE.parents[0] / "data" / "train.jsonl"
        prompts = (
            [json.loads(line)["problem"] for line in train.read_text().splitlines()[:8]] if train.is_file() else []
        )
        return model, tokenizer, prompts or TASK_PROMPTS
    model, tokenizer = load_policy(str(request.getfixturevalue("tiny_base") / "base"))
    return model, tokenizer, TASK_PROMPTS


def both_samplers(model, tokenizer, **kwargs):
    return TransformersRollout(model, tokenizer, use_generate=True, **kwargs), TransformersRollout(
        model, tokenizer, **kwargs
    )


# (prompts taken, n, temperature, top_p, max_new_tokens, seed)
SETTINGS = [
    (8, 8, 1.0, 1.0, 64, 0),  # the tiny training shape
    (8, 8, 0.8, 1.0, 64, 1),  # the validation / evaluation temperature
    (4, 3, 1.0, 0.9, 40, 2),
    (3, 2, 0.8, 0.9, 17, 3),
    (1, 8, 1.0, 1.0, 30, 4),  # one prompt: no padding, the mask is dropped
    (2, 1, 0.8, 1.0, 1, 5),  # a single new token
    (5, 2, 1.3, 0.5, 25, 6),
]


@pytest.mark.parametrize("taken,n,temperature,top_p,max_new_tokens,seed", SETTINGS)
def test_loop_draws_generates_tokens_and_rng_stream(policy, taken, n, temperature, top_p, max_new_tokens, seed):
    """Raw new tokens per model-call batch (finished rows padded) and the RNG state afterwards."""
    model, tokenizer, prompts = policy
    assert fast_loop_refusal(model) is None
    assert direct_step_refusal(model) is None  # decode steps run qwen3_decode_step
    reference, loop = both_samplers(model, tokenizer)
    expanded = [p for p in prompts[:taken] for _ in range(n)]
    ids, mask = encode_prompts(tokenizer, expanded, False)
    results = []
    model.eval()
    for sampler in (reference, loop):
        torch.manual_seed(seed)
        tokens, _ = sampler.sample(ids, mask, temperature, top_p, max_new_tokens)
        results.append((tokens, torch.random.get_rng_state()))
    (expected, expected_rng), (got, got_rng) = results
    assert got.shape == expected.shape and torch.equal(got, expected)
    assert torch.equal(got_rng, expected_rng)  # the same draws were consumed
    assert model.config._attn_implementation == "sdpa"  # restored after sampling


@pytest.mark.parametrize("batch_size", [256, 5])
@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.8, 0.9)])
def test_rollout_batches_and_logprobs_are_identical(policy, batch_size, temperature, top_p):
    """Whole ``generate`` calls, over several model-call batches (batch_size 5 splits 24 rows unevenly)."""
    model, tokenizer, prompts = policy
    reference, loop = both_samplers(model, tokenizer, batch_size=batch_size, return_logprobs=True)
    kwargs = dict(n=6, temperature=temperature, top_p=top_p, max_new_tokens=48, seed=11)
    expected = reference.generate(prompts[:4], **kwargs)
    got = loop.generate(prompts[:4], **kwargs)
    assert torch.equal(got.response_ids, expected.response_ids)
    assert torch.equal(got.response_mask, expected.response_mask)
    assert got.texts == expected.texts
    assert torch.equal(got.sampler_logprobs, expected.sampler_logprobs)
    assert expected.response_mask.sum(1).unique().numel() > 1  # rows finish at different steps


def test_gqa_inside_sdpa_matches_repeated_heads_bit_for_bit():
    """The CPU kernel fact the loop relies on: SDPA with enable_gqa on views of a preallocated cache
    gives the bits of SDPA on contiguous repeated key/value heads (decode and prefill shapes)."""
    generator = torch.Generator().manual_seed(0)
    for batch, query_heads, kv_heads, q_len, kv_len in [
        (64, 4, 2, 1, 13),
        (64, 4, 2, 1, 77),
        (256, 4, 2, 1, 130),
        (3, 2, 1, 1, 40),
        (8, 4, 2, 12, 12),
        (5, 8, 2, 1, 33),
    ]:
        q = torch.randn(batch, query_heads, q_len, 32, generator=generator)
        k = torch.randn(batch, kv_heads, kv_len, 32, generator=generator)
        v = torch.randn(batch, kv_heads, kv_len, 32, generator=generator)
        mask = torch.rand(batch, 1, q_len, kv_len, generator=generator) > 0.3
        mask[..., -1] = True
        if q_len > 1:
            mask &= torch.ones(q_len, kv_len, dtype=torch.bool).tril(kv_len - q_len)
        groups = query_heads // kv_heads
        repeated_k = k[:, :, None].expand(-1, -1, groups, -1, -1).reshape(batch, query_heads, kv_len, 32)
        repeated_v = v[:, :, None].expand(-1, -1, groups, -1, -1).reshape(batch, query_heads, kv_len, 32)
        expected = F.scaled_dot_product_attention(q, repeated_k, repeated_v, attn_mask=mask, scale=32**-0.5)
        k_buffer, v_buffer = torch.zeros(batch, kv_heads, kv_len + 9, 32), torch.zeros(batch, kv_heads, kv_len + 9, 32)
        k_buffer[:, :, :kv_len], v_buffer[:, :, :kv_len] = k, v
        got = F.scaled_dot_product_attention(
            q, k_buffer[:, :, :kv_len], v_buffer[:, :, :kv_len], attn_mask=mask, scale=32**-0.5, enable_gqa=True
        )
        assert torch.equal(got, expected), (batch, query_heads, kv_heads, q_len, kv_len)


def test_batched_passes_with_gqa_inside_sdpa_match_sdpa(tiny_base, tmp_path, monkeypatch):
    """``use_gqa_sdpa``: the trainer's padded forward gives ``sdpa``'s bits, and its backward the same
    gradients up to float32 rounding; a model off the CPU or with another attention is left alone."""
    from transformers.integrations import sdpa_attention

    from g2rl_core.engines.native import Trainer
    from g2rl_core.maths.features import response_hidden_states

    model = tiny_qwen3(tie_word_embeddings=False, hidden_size=64)
    generator = torch.Generator().manual_seed(1)
    prompt_ids, response_ids = torch.randint(0, 97, (6, 9), generator=generator), torch.randint(0, 97, (6, 7))
    prompt_mask, response_mask = torch.ones(6, 9, dtype=torch.long), torch.ones(6, 7, dtype=torch.long)
    for row, (left, right) in enumerate([(0, 0), (3, 2), (8, 6), (1, 0), (5, 4), (2, 1)]):
        prompt_mask[row, :left], response_mask[row, 7 - right :] = 0, 0

    def forward_backward():
        model.zero_grad(set_to_none=True)
        hidden = response_hidden_states(model, prompt_ids, prompt_mask, response_ids, response_mask)
        (hidden * response_mask[..., None]).pow(2).sum().backward()
        return hidden.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    expected, expected_grads = forward_backward()
    use_gqa_sdpa(model)
    assert model.config._attn_implementation == GQA_SDPA
    with monkeypatch.context() as patch:  # the key/value heads are not repeated: SDPA's enable_gqa ran
        patch.setattr(sdpa_attention, "repeat_kv", lambda *a: pytest.fail("repeat_kv ran"))
        got, grads = forward_backward()
    assert torch.equal(got, expected)
    assert grads.keys() == expected_grads.keys() and "model.layers.0.self_attn.k_proj.weight" in grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-5, atol=1e-6, msg=name)
    eager = tiny_qwen3(tie_word_embeddings=False)
    eager.set_attn_implementation("eager")
    use_gqa_sdpa(eager)
    assert eager.config._attn_implementation == "eager"
    off_cpu = tiny_qwen3(tie_word_embeddings=False).to("meta")  # a device other than the CPU
    use_gqa_sdpa(off_cpu)
    assert off_cpu.config._attn_implementation == "sdpa"
    cfg = load_profile("tiny", tiny_base / "params.yaml").train_config("grpo", 0, steps=1, device="cpu")
    trainer = Trainer(cfg, tmp_path)
    trainer.train_step()  # the sampling loop leaves the switched policy as it is
    assert trainer.model.config._attn_implementation == trainer.ref.config._attn_implementation == GQA_SDPA


def test_a_generation_config_with_other_processors_goes_to_generate():
    from g2rl_core.pipeline.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    model = tiny_qwen3(tie_word_embeddings=False, vocab_size=len(tokenizer))
    assert fast_loop_refusal(model) is None
    model.generation_config.repetition_penalty = 1.2
    assert "repetition_penalty" in fast_loop_refusal(model)
    reference, loop = both_samplers(model, tokenizer)
    kwargs = dict(n=3, temperature=1.0, top_p=1.0, max_new_tokens=10, seed=0)
    assert loop.generate(TASK_PROMPTS[:2], **kwargs).texts == reference.generate(TASK_PROMPTS[:2], **kwargs).texts


def decode_logits(model, ids, mask, feed, direct: bool) -> list[torch.Tensor]:
    """Logits [b, V] of the prefill and of each decode step that feeds ``feed[:, i]``, through the model
    call or through ``qwen3_decode_step`` (same prefill, same in-place cache layout, same attention)."""
    from transformers import DynamicCache

    batch, width = ids.shape
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    padded = not bool(mask.all())
    cache = DynamicCache(config=model.config)
    cache.layers = [InPlaceKVLayer(width + feed.shape[1]) for _ in cache.layers]
    model.set_attn_implementation(GQA_SDPA)
    try:
        out = model(
            input_ids=ids,
            attention_mask=mask if padded else None,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits, grown, step_positions = [out.logits[:, -1]], mask, positions[:, -1:]
        for i in range(feed.shape[1]):
            step_positions = step_positions + 1
            grown = torch.cat([grown, grown.new_ones((batch, 1))], dim=-1)
            if direct:
                bool_mask = grown.bool()[:, None, None, :] if padded else None
                logits.append(qwen3_decode_step(model, feed[:, i : i + 1], step_positions, bool_mask, cache))
            else:
                logits.append(
                    model(
                        input_ids=feed[:, i : i + 1],
                        attention_mask=grown if padded else None,
                        position_ids=step_positions,
                        past_key_values=cache,
                        use_cache=True,
                        logits_to_keep=1,
                    ).logits[:, -1]
                )
    finally:
        model.set_attn_implementation("sdpa")
    return logits


def odd_qwen3():
    """A random Qwen3 whose settings differ from the config defaults the step could wrongly assume:
    head_dim 16 with hidden size 32 and 4 heads (not hidden / heads), rms_norm_eps 1e-5, rope_theta 500."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from g2rl_core.pipeline.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(1)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        max_position_embeddings=128,
    )
    model = Qwen3ForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    return model, tokenizer, TASK_PROMPTS


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("which", ["policy", "odd"])
def test_direct_decode_step_gives_the_model_calls_logits_bit_for_bit(policy, which, dtype, padded):
    """Point 6 of rollout.decode: every decode step's logits equal the model call's exactly."""
    model, tokenizer, prompts = policy if which == "policy" else odd_qwen3()
    model = copy_in(model, dtype)
    assert direct_step_refusal(model) is None
    ids, mask = encode_prompts(tokenizer, prompts[:4] if padded else prompts[:1] * 3, False)
    assert bool(mask.all()) != padded
    feed = torch.randint(0, model.config.vocab_size, (ids.shape[0], 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = decode_logits(model, ids, mask, feed, direct=False)
        got = decode_logits(model, ids, mask, feed, direct=True)
    assert len(got) == len(expected) == 13
    for step, (a, b) in enumerate(zip(got, expected)):
        assert a.dtype == b.dtype == dtype and torch.equal(a, b), step


def copy_in(model, dtype):
    import copy

    return copy.deepcopy(model).to(dtype).eval()


@pytest.mark.parametrize(
    "change,reason",
    [
        (dict(attention_bias=True), "biases"),
        (
            dict(layer_types=["full_attention", "sliding_attention"], sliding_window=4, use_sliding_window=True),
            "sliding",
        ),
        (dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}), "rotary"),
    ],
)
def test_other_qwen3_configurations_decode_through_the_model_call(change, reason):
    """A configuration the direct step does not cover is refused, and the loop still draws generate's tokens."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from g2rl_core.pipeline.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    base = tiny_qwen3(tie_word_embeddings=True, vocab_size=len(tokenizer)).config.to_dict() | change
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(**base)).eval()
    assert reason in direct_step_refusal(model)
    assert fast_loop_refusal(model) is None
    reference, loop = both_samplers(model, tokenizer)
    kwargs = dict(n=3, temperature=1.0, top_p=1.0, max_new_tokens=10, seed=0)
    assert torch.equal(
        loop.generate(TASK_PROMPTS[:2], **kwargs).response_ids,
        reference.generate(TASK_PROMPTS[:2], **kwargs).response_ids,
    )


class LoRALikeLinear(torch.nn.Linear):
    """A stand-in for an adapter layer: the same weight, something added to the output."""

    def forward(self, x):
        return super().forward(x) + 1.0


@pytest.mark.parametrize(
    "change,reason",
    [
        (lambda m: m.set_attn_implementation("eager"), "attention implementation"),
        (lambda m: m.train(), "training mode"),
        (lambda m: m.model.layers[0].mlp.register_forward_hook(lambda *a: None), "hooks"),
        (
            lambda m: setattr(m.model.layers[1].self_attn, "q_proj", LoRALikeLinear(32, 32, bias=False)),
            "LoRALikeLinear",
        ),
        (lambda m: setattr(m.model.layers[0].mlp, "act_fn", torch.nn.GELU()), "GELU"),
        (None, "the step follows 5.18.x"),  # the step written for another transformers release
    ],
)
def test_direct_step_refuses_what_it_does_not_compute(monkeypatch, change, reason):
    model = tiny_qwen3(tie_word_embeddings=True)
    assert direct_step_refusal(model) is None
    if change is None:  # the release the step follows, set in the refusal's own globals
        monkeypatch.setitem(direct_step_refusal.__globals__, "DIRECT_STEP_TRANSFORMERS", "5.18.")
    else:
        change(model)
    assert reason in direct_step_refusal(model)


@pytest.mark.parametrize("batch_size", [256, 5])
@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.8, 0.9)])
def test_policy_features_of_the_sampling_loop_equal_an_old_policy_pass(policy, batch_size, temperature, top_p):
    """``generate(..., policy_features=True)``: the same draws, and the old-policy pass's Phi, log-probs and
    entropies (untruncated p_t at the sampling temperature) to float32 rounding."""
    model, tokenizer, prompts = policy
    backend = TransformersRollout(model, tokenizer, batch_size=batch_size)
    kwargs = dict(n=6, temperature=temperature, top_p=top_p, max_new_tokens=48, seed=11)
    plain = backend.generate(prompts[:4], **kwargs)
    got = backend.generate(prompts[:4], **kwargs, policy_features=True)
    assert plain.policy_features is None
    assert torch.equal(got.response_ids, plain.response_ids) and got.texts == plain.texts
    expected = causal_lm_sequence_features(
        model, got.prompt_ids, got.prompt_mask, got.response_ids, got.response_mask, temperature=temperature
    )
    feats, mask = got.policy_features, got.response_mask.bool()
    lengths = got.response_mask.sum(1)
    assert lengths.unique().numel() > 1  # rows end at different steps
    if batch_size < lengths.numel():  # and sampling batches at different steps: their columns are padded
        assert lengths.split(batch_size).__len__() > 1
        assert len({int(part.max()) for part in lengths.split(batch_size)}) > 1
    assert feats.logprobs.shape == feats.entropy.shape == got.response_ids.shape
    assert torch.all(feats.logprobs[~mask] == 0) and torch.all(feats.entropy[~mask] == 0)
    torch.testing.assert_close(feats.logprobs[mask], expected.logprobs[mask], rtol=0, atol=2e-5)
    torch.testing.assert_close(feats.entropy[mask], expected.entropy[mask], rtol=0, atol=2e-5)
    torch.testing.assert_close(feats.phi, expected.phi, rtol=1e-4, atol=1e-6)
    assert expected.phi.abs().max() > 1e-2  # a scale at which the tolerance means something


def test_policy_features_when_every_row_is_cut_at_max_new_tokens(policy):
    model, tokenizer, prompts = policy
    backend = TransformersRollout(model, tokenizer)
    got = backend.generate(prompts[:3], n=2, temperature=1.0, top_p=1.0, max_new_tokens=2, seed=3, policy_features=True)
    expected = causal_lm_sequence_features(
        model, got.prompt_ids, got.prompt_mask, got.response_ids, got.response_mask, temperature=1.0
    )
    assert got.response_ids.shape[1] <= 2
    torch.testing.assert_close(got.policy_features.phi, expected.phi, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got.policy_features.logprobs, expected.logprobs, rtol=0, atol=2e-5)


def test_policy_features_are_absent_where_the_loop_is_refused(policy):
    model, tokenizer, prompts = policy
    backend = TransformersRollout(model, tokenizer, use_generate=True)
    batch = backend.generate(
        prompts[:2], n=2, temperature=1.0, top_p=1.0, max_new_tokens=8, seed=0, policy_features=True
    )
    assert batch.policy_features is None  # the trainer then runs its own old-policy pass
