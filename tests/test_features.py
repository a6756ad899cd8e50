"""Phi (eq. 5-8, 14) against autograd, the literal eq. 14, chunking and padding."""

import pytest
import torch
from conftest import tiny_qwen3
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from g2rl_core.maths import features
from g2rl_core.maths.features import (
    DecodingFeatures,
    PhiSums,
    causal_lm_sequence_features,
    final_hidden_states,
    literal_sequence_features,
    lm_head_parameters,
    phi_from_sums,
    phi_sums_from_logits,
    sequence_features,
    token_logprobs_and_entropy,
)


def _with_bias(model):
    """Replace the head by an untied Linear with a random bias (Qwen3 has none)."""
    old = model.get_output_embeddings()
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True, dtype=old.weight.dtype)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.normal_(0.0, 2.0)
    model.set_output_embeddings(head)
    return model


def _relative_error(x, y):
    return ((x - y).norm() / y.norm()).item()


def _batch(vocab, seed=1, B=3, P=5, R=7):
    g = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(0, vocab, (B, P), generator=g)
    response_ids = torch.randint(0, vocab, (B, R), generator=g)
    prompt_mask = torch.ones(B, P, dtype=torch.long)
    response_mask = torch.ones(B, R, dtype=torch.long)
    prompt_mask[1, :2] = 0  # left padding
    response_mask[2, 4:] = 0  # right padding
    response_mask[1, 6:] = 0
    return prompt_ids, prompt_mask, response_ids, response_mask


@pytest.mark.parametrize("variant", ["tied", "untied", "bias"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_phi_equals_scaled_autograd_gradient(variant, temperature):
    model = tiny_qwen3(tie_word_embeddings=(variant == "tied")).double()
    if variant == "bias":
        model = _with_bias(model)
    if variant == "tied":
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    prompt_ids, prompt_mask, response_ids, response_mask = _batch(model.config.vocab_size)
    weights = torch.rand(response_ids.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    feats = causal_lm_sequence_features(
        model, prompt_ids, prompt_mask, response_ids, response_mask, temperature=temperature, token_weights=weights
    )

    # Autograd: d/dh_t of sum_t alpha_t log p(y_t), h the input of the LM head.
    ids = torch.cat([prompt_ids, response_ids], 1)
    mask = torch.cat([prompt_mask, response_mask], 1)
    with torch.no_grad():
        h = final_hidden_states(model, ids, mask)
    h = h.detach().requires_grad_(True)
    logits = model.get_output_embeddings()(h)
    with torch.no_grad():  # h must be the state the LM head consumes
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        full_logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    torch.testing.assert_close(logits.detach(), full_logits, rtol=1e-10, atol=1e-10)
    P = prompt_ids.shape[1]
    logp = torch.log_softmax(logits[:, P - 1 : -1] / temperature, -1).gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)
    alpha = weights * response_mask
    (grad,) = torch.autograd.grad((alpha * logp).sum(), h)
    expected = temperature / alpha.sum(-1, keepdim=True) * grad.sum(1)

    assert _relative_error(feats.phi, expected) <= 1e-6
    torch.testing.assert_close(feats.logprobs, (logp * response_mask).detach(), rtol=1e-10, atol=1e-10)


def _random_head(seed, B=3, T=6, d=8, V=23, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, d, generator=g, dtype=dtype)
    W = 3 * torch.randn(V, d, generator=g, dtype=dtype)
    b = torch.randn(V, generator=g, dtype=dtype)
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.3).long()
    return h, W, b, ids, mask


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), chunk=st.integers(1, 20), temperature=st.floats(0.3, 2.0))
def test_fused_pass_matches_literal_eq14_for_any_chunk(seed, chunk, temperature):
    h, W, b, ids, mask = _random_head(seed)
    literal = literal_sequence_features(h, W, ids, mask, lm_head_bias=b, temperature=temperature)
    whole = sequence_features(h, W, ids, mask, lm_head_bias=b, temperature=temperature)
    chunked = sequence_features(h, W, ids, mask, lm_head_bias=b, temperature=temperature, chunk_size=chunk)
    torch.testing.assert_close(whole.phi, literal, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(chunked.phi, whole.phi, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(chunked.logprobs, whole.logprobs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(chunked.entropy, whole.entropy, rtol=1e-12, atol=1e-12)


def test_logprobs_and_entropy_match_dense_softmax():
    h, W, b, ids, mask = _random_head(7)
    logits = (h @ W.T + b) / 0.8
    logp_all = torch.log_softmax(logits, -1)
    expected_lp = logp_all.gather(-1, ids.unsqueeze(-1)).squeeze(-1) * mask
    expected_ent = -(logp_all.exp() * logp_all).sum(-1) * mask
    feats = sequence_features(h, W, ids, mask, lm_head_bias=b, temperature=0.8, chunk_size=4)
    lp, ent = token_logprobs_and_entropy(h, W, ids, mask, lm_head_bias=b, temperature=0.8, chunk_size=5)
    for got_lp, got_ent in [(feats.logprobs, feats.entropy), (lp, ent)]:
        torch.testing.assert_close(got_lp, expected_lp, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got_ent, expected_ent, rtol=1e-12, atol=1e-12)


def test_logprobs_are_differentiable_for_the_update_pass():
    h, W, b, ids, mask = _random_head(8)
    h.requires_grad_(True)
    lp, _ = token_logprobs_and_entropy(h, W, ids, mask, lm_head_bias=b, chunk_size=3)
    (grad,) = torch.autograd.grad(lp.sum(), h)
    assert grad.abs().sum() > 0
    assert torch.all(grad[mask == 0] == 0)


def test_padding_and_prompt_do_not_change_phi():
    model = tiny_qwen3(tie_word_embeddings=False).double()
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(5)
    prompt = torch.randint(0, V, (1, 4), generator=g)
    response = torch.randint(0, V, (1, 6), generator=g)
    alone = causal_lm_sequence_features(model, prompt, torch.ones_like(prompt), response, torch.ones_like(response))

    # Same sequence left-padded by 3 and right-padded by 5, next to another sequence.
    pad_p = torch.cat([torch.full((1, 3), 7), prompt], 1)
    pad_r = torch.cat([response, torch.full((1, 5), 11)], 1)
    mask_p = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 4, dtype=torch.long)], 1)
    mask_r = torch.cat([torch.ones(1, 6, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long)], 1)
    other_p = torch.randint(0, V, (1, 7), generator=g)
    other_r = torch.randint(0, V, (1, 11), generator=g)
    batched = causal_lm_sequence_features(
        model,
        torch.cat([pad_p, other_p]),
        torch.cat([mask_p, torch.ones_like(other_p)]),
        torch.cat([pad_r, other_r]),
        torch.cat([mask_r, torch.ones_like(other_r)]),
        chunk_size=4,
    )
    torch.testing.assert_close(batched.phi[0], alone.phi[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(batched.logprobs[0, :6], alone.logprobs[0], rtol=1e-9, atol=1e-9)
    assert torch.all(batched.logprobs[0, 6:] == 0)

    # Changing padded-out response tokens does not change Phi either.
    pad_r2 = pad_r.clone()
    pad_r2[0, 6:] = 3
    again = causal_lm_sequence_features(model, pad_p, mask_p, pad_r2, mask_r)
    torch.testing.assert_close(again.phi[0], alone.phi[0], rtol=1e-9, atol=1e-9)


def test_empty_response_gives_zero_phi_and_float32_inputs_work():
    h, W, b, ids, mask = _random_head(9, dtype=torch.float32)
    mask[0] = 0
    feats = sequence_features(h, W, ids, mask, chunk_size=2)
    assert feats.phi.dtype == torch.float32
    assert torch.all(feats.phi[0] == 0)
    ref = literal_sequence_features(h.double(), W.double(), ids, mask)
    torch.testing.assert_close(feats.phi.double(), ref, rtol=1e-4, atol=1e-4)


def test_lm_head_parameters_and_input_errors():
    model = tiny_qwen3(tie_word_embeddings=True)
    W, b = lm_head_parameters(model)
    assert W.shape == (model.config.vocab_size, model.config.hidden_size) and b is None
    h, W, b, ids, mask = _random_head(1)
    with pytest.raises(ValueError, match="temperature"):
        sequence_features(h, W, ids, mask, temperature=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        sequence_features(h, W, ids, mask, chunk_size=0)
    with pytest.raises(ValueError, match="lm_head_weight"):
        sequence_features(h, W[:, :3], ids, mask)
    with pytest.raises(ValueError, match="token_weights"):
        sequence_features(h, W, ids, mask, token_weights=-torch.ones(ids.shape))


def _packed_from_logits(model, prompt_ids, prompt_mask, response_ids, response_mask):
    """Logits of one packed forward over the unpadded sequences, and each response token's row."""
    rows, ids, segs, full = [], [], [], []
    offset = 0
    for i in range(prompt_ids.shape[0]):
        seq = torch.cat([prompt_ids[i][prompt_mask[i].bool()], response_ids[i][response_mask[i].bool()]])
        r = int(response_mask[i].sum())
        full.append(seq)
        # The row at packed position q predicts the token at q + 1.
        rows.append(torch.arange(offset + len(seq) - r - 1, offset + len(seq) - 1))
        ids.append(seq[len(seq) - r :])
        segs.append(torch.full((r,), i))
        offset += len(seq)
    logits = torch.cat([model(input_ids=seq.unsqueeze(0)).logits[0] for seq in full])
    return logits, torch.cat(rows), torch.cat(ids), torch.cat(segs)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_phi_from_engine_logits_matches_the_hidden_state_pass(temperature):
    model = tiny_qwen3(tie_word_embeddings=False).double()
    prompt_ids, prompt_mask, response_ids, response_mask = _batch(model.config.vocab_size)
    ref = causal_lm_sequence_features(
        model, prompt_ids, prompt_mask, response_ids, response_mask, temperature=temperature
    )
    logits, rows, ids, segs = _packed_from_logits(model, prompt_ids, prompt_mask, response_ids, response_mask)
    W, _ = lm_head_parameters(model)
    weights = torch.ones(rows.numel(), dtype=torch.float64)
    sums = phi_sums_from_logits(logits, rows, ids, weights, segs, 3, W, temperature=temperature, chunk_size=4)
    torch.testing.assert_close(phi_from_sums(sums), ref.phi, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(sums.weight, response_mask.sum(-1).double())

    # Per-row temperatures equal to the scalar give the same sums; a different one does not.
    same = phi_sums_from_logits(
        logits,
        rows,
        ids,
        weights,
        segs,
        3,
        W,
        temperature=torch.full((rows.numel(),), temperature, dtype=torch.float64),
    )
    torch.testing.assert_close(same.weighted, sums.weighted, rtol=1e-12, atol=1e-12)
    other = phi_sums_from_logits(logits, rows, ids, weights, segs, 3, W, temperature=temperature + 0.5)
    assert not torch.allclose(other.weighted, sums.weighted)


def test_phi_sums_add_up_across_sequence_parallel_shards():
    """Sequence parallelism: each rank holds a slice of the packed tokens; all-reduced sums give Phi."""
    model = tiny_qwen3(tie_word_embeddings=True).double()
    prompt_ids, prompt_mask, response_ids, response_mask = _batch(model.config.vocab_size, seed=3)
    logits, rows, ids, segs = _packed_from_logits(model, prompt_ids, prompt_mask, response_ids, response_mask)
    W, _ = lm_head_parameters(model)
    g = torch.Generator().manual_seed(0)
    weights = torch.rand(rows.numel(), generator=g, dtype=torch.float64)  # any alpha_t >= 0
    whole = phi_sums_from_logits(logits, rows, ids, weights, segs, 3, W)
    cut = logits.shape[0] // 2  # a shard boundary that falls inside a response
    assert bool(((rows < cut) & (segs == segs[rows >= cut][0])).any())
    shards = []
    for lo, hi in ((0, cut), (cut, logits.shape[0])):
        keep = (rows >= lo) & (rows < hi)
        shards.append(phi_sums_from_logits(logits[lo:hi], rows[keep] - lo, ids[keep], weights[keep], segs[keep], 3, W))
    reduced = PhiSums(weighted=shards[0].weighted + shards[1].weighted, weight=shards[0].weight + shards[1].weight)
    torch.testing.assert_close(phi_from_sums(reduced), phi_from_sums(whole), rtol=1e-10, atol=1e-10)
    # The normaliser must be applied after the reduction: normalising each shard first is wrong.
    per_shard = phi_from_sums(shards[0]) + phi_from_sums(shards[1])
    assert not torch.allclose(per_shard, phi_from_sums(whole))
    # With random weights it is eq. 8 with a_t = alpha_t / sum alpha_t, as in the hidden-state pass.
    token_weights = torch.zeros(response_mask.shape, dtype=torch.float64)
    token_weights[response_mask.bool()] = weights  # rows are in (sequence, position) order
    ref = causal_lm_sequence_features(
        model, prompt_ids, prompt_mask, response_ids, response_mask, token_weights=token_weights
    )
    torch.testing.assert_close(phi_from_sums(whole), ref.phi, rtol=1e-9, atol=1e-9)


def test_phi_sums_from_logits_input_errors():
    logits = torch.randn(5, 7)
    W = torch.randn(7, 3)
    rows, ids, segs = torch.tensor([1, 2]), torch.tensor([0, 6]), torch.tensor([0, 0])
    w = torch.ones(2)
    with pytest.raises(ValueError, match="columns"):
        phi_sums_from_logits(logits, rows, ids, w, segs, 1, W[:5])
    with pytest.raises(ValueError, match="segment_ids"):
        phi_sums_from_logits(logits, rows, ids, w, segs[:1], 1, W)
    with pytest.raises(ValueError, match="temperature"):
        phi_sums_from_logits(logits, rows, ids, w, segs, 1, W, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        phi_sums_from_logits(logits, rows, ids, w, segs, 1, W, temperature=torch.ones(3))


def _dense_statistics(h, W, b, ids, mask, temperature):
    """Reference log p(y_t) and entropy [B, T] from the full [B, T, V] log-softmax."""
    logp_all = torch.log_softmax((h @ W.T + b) / temperature, -1)
    logprobs = logp_all.gather(-1, ids.unsqueeze(-1)).squeeze(-1) * mask
    entropy = -(logp_all.exp() * logp_all).sum(-1) * mask
    return logprobs, entropy


def test_gradients_of_logprobs_and_entropy_match_the_dense_log_softmax():
    """The update pass backpropagates through log p(y_t) (policy loss) and H(p_t) (entropy bonus)."""
    h, W, b, ids, mask = _random_head(11)
    coef = torch.randn(2, *ids.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    leaves = [t.clone().requires_grad_(True) for t in (h, W, b)]
    lp, ent = token_logprobs_and_entropy(
        leaves[0], leaves[1], ids, mask, lm_head_bias=leaves[2], temperature=0.7, chunk_size=4
    )
    got = torch.autograd.grad((coef[0] * lp + coef[1] * ent).sum(), leaves)
    ref_leaves = [t.clone().requires_grad_(True) for t in (h, W, b)]
    ref_lp, ref_ent = _dense_statistics(*ref_leaves, ids, mask, 0.7)
    expected = torch.autograd.grad((coef[0] * ref_lp + coef[1] * ref_ent).sum(), ref_leaves)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)


def test_update_pass_gives_bitwise_the_old_policy_numbers():
    """With and without autograd the same kernels run: the PPO ratio exp(logp - old_logp) is exactly 1 on-policy."""
    h, W, b, ids, mask = _random_head(12, B=2, T=9, V=301, dtype=torch.float32)
    old = sequence_features(h, W, ids, mask, lm_head_bias=b, temperature=0.7, chunk_size=4)
    lp, ent = token_logprobs_and_entropy(
        h.clone().requires_grad_(True), W, ids, mask, lm_head_bias=b, temperature=0.7, chunk_size=4
    )
    assert torch.equal(lp.detach(), old.logprobs) and torch.equal(ent.detach(), old.entropy)


def test_float32_statistics_are_accurate_at_a_full_qwen3_vocabulary():
    """At V = 151936 in float32, errors stay at the lean pass's level (a plain dot product over V would not)."""
    g = torch.Generator().manual_seed(4)
    V, d = 151936, 16
    h = torch.randn(1, 6, d, generator=g)
    W = torch.randn(V, d, generator=g) * d**-0.5
    ids = torch.randint(0, V, (1, 6), generator=g)
    mask = torch.ones(1, 6, dtype=torch.long)
    ref_lp, ref_ent = _dense_statistics(h.double(), W.double(), torch.zeros(V, dtype=torch.float64), ids, mask, 1.0)
    lp, ent = token_logprobs_and_entropy(h, W, ids, mask, chunk_size=4)
    feats = sequence_features(h, W, ids, mask, chunk_size=4)
    for got, ref in [(lp, ref_lp), (ent, ref_ent), (feats.logprobs, ref_lp), (feats.entropy, ref_ent)]:
        assert (got.double() - ref).abs().max().item() <= 1e-5  # |values| ~ 12: relative 1e-6


class _LargeAllocations(TorchDispatchMode):
    """Records every op whose output is a NEW tensor of at least ``numel`` elements (not a view, not out=)."""

    def __init__(self, numel):
        super().__init__()
        self.numel, self.ops = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        inputs = {t.untyped_storage().data_ptr() for t in tensors}
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.numel() >= self.numel and t.untyped_storage().data_ptr() not in inputs:
                self.ops.append(str(func))
        return out


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_vocabulary_passes_allocate_two_chunk_buffers_whatever_the_number_of_chunks(bias, dtype):
    """No [c, V] temporaries per chunk (logsumexp, division by T, exp, products): two buffers serve all chunks."""
    c, V = 16, 97
    h, W, b, ids, mask = _random_head(13, B=2, T=40, d=8, V=V, dtype=dtype)  # ~5 chunks; B*V, V*d < c*V
    b = b if bias else None
    calls = {
        "sequence_features": lambda: sequence_features(h, W, ids, mask, lm_head_bias=b, temperature=0.7, chunk_size=c),
        "token_logprobs_and_entropy": lambda: token_logprobs_and_entropy(
            h, W, ids, mask, lm_head_bias=b, temperature=0.7, chunk_size=c
        ),
    }
    logits = torch.randn(90, V, dtype=dtype)
    rows = torch.arange(3, 83)
    calls["phi_sums_from_logits"] = lambda: phi_sums_from_logits(
        logits, rows, rows % V, torch.ones(80, dtype=dtype), (rows - 3) // 40, 2, W, temperature=0.7, chunk_size=c
    )
    for name, call in calls.items():
        with torch.no_grad(), _LargeAllocations(c * V) as seen:
            call()
        assert len(seen.ops) <= 2, f"{name}: {seen.ops}"


@pytest.mark.parametrize("seed", range(3))
def test_residual_by_runs_equals_the_one_product_form(seed):
    """CPU adds sum_t a_t (e(y_t) - p_t) run by run, other devices in one [S, c] x [c, V] product: same sums."""
    g = torch.Generator().manual_seed(seed)
    c, V, S = 12, 31, 4
    probs = torch.softmax(torch.randn(c, V, generator=g, dtype=torch.float64), -1)
    weights = torch.rand(c, generator=g, dtype=torch.float64)
    owner = torch.randint(0, S, (c,), generator=g)  # runs of any length, in any order
    ids = torch.randint(0, V, (c,), generator=g)
    expected = torch.zeros(S, V, dtype=torch.float64)
    for i in range(c):
        expected[owner[i]] += weights[i] * (torch.nn.functional.one_hot(ids[i], V) - probs[i])
    by_runs = torch.zeros(S, V, dtype=torch.float64)
    features._accumulate_residual(by_runs, probs, weights, owner, ids)
    one_product = torch.zeros(S, V, dtype=torch.float64)
    features._accumulate_residual(one_product, probs, weights, owner, ids, by_runs=False)
    torch.testing.assert_close(by_runs, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(one_product, expected, rtol=1e-12, atol=1e-12)


def test_low_precision_head_is_projected_in_float32_blocks(monkeypatch):
    """A bf16 LM head: Phi's [S, V] x [V, d] product runs in float32, block by block, equal to a float32 copy."""
    monkeypatch.setattr(features, "_HEAD_BLOCK_ROWS", 7)
    g = torch.Generator().manual_seed(6)
    residual = torch.randn(3, 30, generator=g)
    W = torch.randn(30, 5, generator=g).to(torch.bfloat16)
    got = features._project_residual(residual, W)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, residual @ W.float(), rtol=1e-5, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), temperature=st.floats(0.3, 2.0))
@example(seed=585, temperature=0.3)  # entropy off by 1.1e-5: rounding at max |z / T| = 114
def test_decoding_features_step_by_step_equal_the_fused_pass(seed, temperature):
    """Fed each step's z_t / T and p_t (as a sampler has them), Phi, log-probs and entropies are the pass's."""
    h, W, b, ids, mask = _random_head(seed, dtype=torch.float32)
    mask[:, 0] = 1  # the first row has a token; holes elsewhere are steps a row does not take
    B, T, _ = h.shape
    stream = DecodingFeatures(B, W.shape[0], h.device)
    largest = 0.0
    for t in range(T):
        scores = (h[:, t] @ W.T + b) / temperature
        largest = max(largest, scores.abs().max().item())
        stream.add(scores, torch.softmax(scores, -1), ids[:, t], mask[:, t].bool())
    got = stream.finish(W)
    fused = sequence_features(h, W, ids, mask, lm_head_bias=b, temperature=temperature)
    literal = literal_sequence_features(
        h.double(), W.double(), ids, mask, lm_head_bias=b.double(), temperature=temperature
    )
    torch.testing.assert_close(got.phi, fused.phi, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.phi.double(), literal, rtol=1e-5, atol=1e-5)
    # log p and H are differences of float32 terms as large as max |z / T| (over 100 at T = 0.3), whose
    # rounding the two orders of summation do not share: up to 3.3 eps * max |z / T| over 12,000 draws
    rounding = 8 * torch.finfo(torch.float32).eps * largest
    torch.testing.assert_close(got.logprobs, fused.logprobs, rtol=1e-5, atol=rounding)
    torch.testing.assert_close(got.entropy, fused.entropy, rtol=1e-5, atol=rounding)
