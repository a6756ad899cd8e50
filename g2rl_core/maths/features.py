"""Sequence gradient features Phi (G2RL, eq. 5-8 and 14 of ../shared/docs/g2rl-paper.md).

For a response y to prompt x, with final-layer states h_t (the input of the LM head),
LM head z_t = W h_t + b (W is [V, d], Hugging Face ``lm_head.weight``) and
p_t = softmax(z_t / T):

    d log p(y_t) / d h_t = (1/T) W^T (e(y_t) - p_t)                       (eq. 6)
    phi_t = W^T (e(y_t) - p_t) = W[y_t] - sum_v p_t[v] W[v]                 (eq. 7, 14)
    Phi   = sum_t a_t phi_t,   a_t = alpha_t / (sum_s alpha_s + eps)        (eq. 8)

We use the residual-sum identity (exact algebra: eq. 7 summed before the product with W)

    Phi = W^T r,   r = sum_t a_t (e(y_t) - p_t)   (in vocabulary space, [V])

so each response costs one [V] x [V, d] product instead of one per token, and the
per-token softmax is the one the log-prob pass computes anyway. ``sequence_features``
returns Phi, the log-probs of the realised tokens and the token entropies from a single
pass over the vocabulary, chunked over tokens so that no [B, T, V] tensor is ever held.

Cost, per chunk of c tokens: the [c, d] x [d, V] logits GEMM (1/T folded into it), one fused
softmax, two max reductions, one product and one sum over [c, V] (no logsumexp, and without
autograd no [c, V] temporaries: two [c, V] buffers serve every chunk), and for Phi one
matrix-vector product per sequence in the chunk; per batch one [B, V] x [V, d] product.
benchmarks/features.py measures it against a lean log-prob + entropy pass.

``phi_sums_from_logits`` does the same from LM-head outputs an engine has already computed
(verl's packed log-prob pass), as per-sequence sums that add up across sequence-parallel shards.
``literal_sequence_features`` is the per-token eq. 14 written out literally; it is the
reference for the tests and the benchmark, not for production use.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

#: eps of eq. 8, in the token-weight normaliser a_t = alpha_t / (sum_s alpha_s + eps).
TOKEN_WEIGHT_EPS = 1e-8


@dataclass(frozen=True)
class SequenceFeatures:
    """Output of one fused pass.

    phi: [B, d] sequence gradient features (eq. 8); zero for a response with no tokens.
    logprobs: [B, T] log p(y_t) at the given temperature; 0 where response_mask is 0.
    entropy: [B, T] entropy of p_t at the given temperature; 0 where response_mask is 0.
    """

    phi: Tensor
    logprobs: Tensor
    entropy: Tensor


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax statistics are accumulated in float32, or float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tracks_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd records operations on any of ``tensors`` (then no buffer may be reused)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _scaled_logits(
    hidden: Tensor, lm_head_weight: Tensor, lm_head_bias: Tensor | None, temperature: float, out: Tensor | None
) -> Tensor:
    """z_t / T = (W h_t + b) / T for the rows of ``hidden`` [c, d]: [c, V] in one GEMM.

    1/T is the GEMM's alpha (and the bias's beta), so no separate pass over [c, V] divides by T.
    ``out`` (only without autograd) receives the result in place of a new [c, V] allocation.
    """
    inv_t = 1.0 / temperature
    if lm_head_bias is None:  # beta = 0: the scalar input is never read
        return torch.addmm(hidden.new_zeros(()), hidden, lm_head_weight.T, beta=0.0, alpha=inv_t, out=out)
    return torch.addmm(lm_head_bias, hidden, lm_head_weight.T, beta=inv_t, alpha=inv_t, out=out)


def _softmax_statistics(
    scaled_logits: Tensor, token_ids: Tensor, probs_out: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """(p_t [c, V], log p(y_t) [c], entropy of p_t [c]) from z_t / T [c, V] in the compute dtype.

    p_t = softmax(z_t / T) is one fused pass per row. The log-partition log Z_t is read off it instead
    of a separate logsumexp (which builds two [c, V] temporaries): the largest probability is
    exp(max_v z_v / T - log Z_t), so log Z_t = max_v z_v / T - log max_v p_t[v], and max_v p_t[v] >= 1/V
    cannot underflow. Then log p(y_t) = z_{y_t} / T - log Z_t and H(p_t) = log Z_t - sum_v p_t[v] z_v / T
    (a pairwise-summed reduction, as accurate as the lean pass's). All of it is differentiable.
    With ``probs_out`` (only without autograd) p_t is written there and the product p_t[v] z_v into
    ``scaled_logits`` itself, so no [c, V] tensor is allocated; the arithmetic is the same either way.
    """
    z = scaled_logits
    probs = torch.softmax(z, -1) if probs_out is None else torch.softmax(z, -1, out=probs_out)
    logprob, entropy = _token_statistics(z, probs, token_ids, in_place=probs_out is not None)
    return probs, logprob, entropy


def _token_statistics(
    scaled_logits: Tensor, probs: Tensor, token_ids: Tensor, *, in_place: bool = False
) -> tuple[Tensor, Tensor]:
    """(log p(y_t), H(p_t)) from z_t / T and p_t = softmax(z_t / T): ``_softmax_statistics``'s arithmetic.

    ``in_place`` writes the product p_t[v] z_v into ``scaled_logits`` instead of a new [c, V] tensor.
    """
    z = scaled_logits
    log_z = z.amax(-1) - probs.amax(-1).log()
    logprob = z.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1) - log_z
    weighted = z.mul_(probs) if in_place else probs * z
    entropy = log_z - weighted.sum(-1)
    return logprob, entropy


def _accumulate_residual(
    residual: Tensor, probs: Tensor, weights: Tensor, owner: Tensor, token_ids: Tensor, *, by_runs: bool | None = None
) -> None:
    """residual[owner_i] += w_i (e(y_i) - p_i) for every token i of a chunk, in place.

    Summed over a sequence's tokens this is sum_t a_t (e(y_t) - p_t), whose product with W is Phi
    (eq. 7, 8, 14). ``by_runs`` (default: on CPU) adds the probability part as one matrix-vector
    product per run of consecutive tokens of one sequence, reading each row of ``probs`` once; a
    dense [S, c] x [c, V] product costs about S passes over ``probs`` with CPU BLAS. Otherwise (GPU)
    it is that one product, with no host synchronisation.
    """
    residual.index_put_((owner, token_ids), weights.to(residual.dtype), accumulate=True)
    if by_runs is None:
        by_runs = probs.device.type == "cpu"
    if not by_runs:
        scatter = probs.new_zeros(residual.shape[0], owner.numel())
        scatter[owner, torch.arange(owner.numel(), device=owner.device)] = weights.to(probs.dtype)
        residual.addmm_(scatter, probs, alpha=-1)
        return
    owners, counts = torch.unique_consecutive(owner, return_counts=True)
    start = 0
    for row, count in zip(owners.tolist(), counts.tolist(), strict=True):
        residual[row].addmv_(probs[start : start + count].T, weights[start : start + count], alpha=-1)
        start += count


#: Rows of a low-precision LM head converted to the compute dtype at a time in ``_project_residual``.
_HEAD_BLOCK_ROWS = 8192


def _project_residual(residual: Tensor, lm_head_weight: Tensor) -> Tensor:
    """residual [S, V] x W [V, d] -> [S, d] in the residual's dtype: the one vocabulary-sized product per batch.

    A head stored in another dtype (bf16) is converted block by block, never as a full copy.
    """
    if lm_head_weight.dtype == residual.dtype:
        return residual @ lm_head_weight
    out = residual.new_zeros(residual.shape[0], lm_head_weight.shape[1])
    for start in range(0, lm_head_weight.shape[0], _HEAD_BLOCK_ROWS):
        block = slice(start, start + _HEAD_BLOCK_ROWS)
        out.addmm_(residual[:, block], lm_head_weight[block].to(residual.dtype))
    return out


def _check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size}")


def _masked_token_chunks(
    hidden_states: Tensor,
    lm_head_weight: Tensor,
    lm_head_bias: Tensor | None,
    token_ids: Tensor,
    token_mask: Tensor,
    temperature: float,
    chunk_size: int | None,
) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor, Tensor]]:
    """Yield (flat_index, probs, logprob, entropy, token_id) per chunk of masked tokens.

    Only positions with ``token_mask != 0`` are computed. ``flat_index`` indexes the
    flattened [B * T] grid; ``probs`` is the [c, V] softmax of the chunk at ``temperature``.
    Without autograd, every chunk's logits and ``probs`` live in the same two [c, V] buffers:
    ``probs`` is valid until the next chunk is requested.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    _check_chunk_size(chunk_size)
    B, T, d = hidden_states.shape
    if lm_head_weight.shape[1] != d:
        raise ValueError(
            f"lm_head_weight has shape {tuple(lm_head_weight.shape)}; expected [V, {d}] to match hidden_states"
        )
    if token_ids.shape != (B, T) or token_mask.shape != (B, T):
        raise ValueError(
            f"response_ids {tuple(token_ids.shape)} and response_mask {tuple(token_mask.shape)} "
            f"must both have shape [B, T] = {(B, T)}"
        )
    flat_index = token_mask.reshape(-1).nonzero().squeeze(-1)
    n = int(flat_index.numel())
    flat_h = hidden_states.reshape(B * T, d)
    flat_ids = token_ids.reshape(-1)
    step = chunk_size or max(n, 1)
    acc = _compute_dtype(hidden_states.dtype)
    reuse = not _tracks_grad(hidden_states, lm_head_weight, lm_head_bias)
    logits_buf = probs_buf = None
    if reuse and n > 0:
        rows, V = min(step, n), lm_head_weight.shape[0]
        logits_buf = hidden_states.new_empty(rows, V, dtype=torch.result_type(hidden_states, lm_head_weight))
        probs_buf = hidden_states.new_empty(rows, V, dtype=acc)
    for start in range(0, n, step):
        idx = flat_index[start : start + step]
        c = int(idx.numel())
        z = _scaled_logits(
            flat_h.index_select(0, idx),
            lm_head_weight,
            lm_head_bias,
            temperature,
            out=None if logits_buf is None else logits_buf[:c],
        )
        ids = flat_ids.index_select(0, idx)
        probs, logprob, entropy = _softmax_statistics(
            z.to(acc), ids, probs_out=None if probs_buf is None else probs_buf[:c]
        )
        yield idx, probs, logprob, entropy, ids


def token_logprobs_and_entropy(
    hidden_states: Tensor,
    lm_head_weight: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    *,
    lm_head_bias: Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Log p(y_t) and entropy of p_t at ``temperature``, [B, T] each, 0 off the mask.

    This is what a GRPO trainer computes every step without G2RL (the benchmark's
    baseline). It is differentiable, so the trainer's update pass uses it too; with and
    without autograd it runs the same kernels, so both give bitwise the same numbers.
    """
    B, T, _ = hidden_states.shape
    acc = _compute_dtype(hidden_states.dtype)
    index, logprobs, entropy = [], [], []
    for idx, _probs, logprob, ent, _ids in _masked_token_chunks(
        hidden_states, lm_head_weight, lm_head_bias, response_ids, response_mask, temperature, chunk_size
    ):
        index.append(idx)
        logprobs.append(logprob)
        entropy.append(ent)
    zeros = hidden_states.new_zeros(B * T, dtype=acc)
    if not index:
        return zeros.view(B, T), zeros.clone().view(B, T)
    index = torch.cat(index)
    return (
        zeros.index_copy(0, index, torch.cat(logprobs)).view(B, T),
        zeros.index_copy(0, index, torch.cat(entropy)).view(B, T),
    )


def normalized_token_weights(response_mask: Tensor, token_weights: Tensor | None, dtype: torch.dtype) -> Tensor:
    """a_t = alpha_t / (sum_s alpha_s + eps) of eq. 8, with alpha_t = 0 off the mask. [B, T]."""
    alpha = response_mask.to(dtype)
    if token_weights is not None:
        if token_weights.shape != response_mask.shape:
            raise ValueError(
                f"token_weights has shape {tuple(token_weights.shape)}; expected {tuple(response_mask.shape)}"
            )
        if bool((token_weights < 0).any()):
            raise ValueError("token_weights must be non-negative")
        alpha = alpha * token_weights.to(dtype)
    return alpha / (alpha.sum(-1, keepdim=True) + TOKEN_WEIGHT_EPS)


@torch.no_grad()
def sequence_features(
    hidden_states: Tensor,
    lm_head_weight: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    *,
    lm_head_bias: Tensor | None = None,
    temperature: float = 1.0,
    token_weights: Tensor | None = None,
    chunk_size: int | None = None,
) -> SequenceFeatures:
    """Phi (eq. 8), log-probs and entropies from ONE chunked pass over the vocabulary.

    Args:
        hidden_states: [B, T, d] final-layer states whose LM-head outputs predict
            ``response_ids`` (the caller has already shifted by one position).
        lm_head_weight: [V, d] LM-head matrix W.
        response_ids: [B, T] realised tokens y_t.
        response_mask: [B, T], 1 on response tokens, 0 on prompt and padding.
        lm_head_bias: optional [V] bias b of the LM head.
        temperature: T of p_t = softmax(z_t / T); the rollout's sampling temperature.
        token_weights: optional [B, T] non-negative alpha_t; default 1 on the mask.
        chunk_size: tokens per chunk; None processes all masked tokens at once.
            Peak extra memory is O(chunk_size * V + B * V).

    Returns:
        SequenceFeatures with phi [B, d], logprobs [B, T], entropy [B, T]. A response
        with an empty mask (or all-zero weights) gets phi = 0.

    Each response needs one [V] x [V, d] product: Phi = W^T sum_t a_t (e(y_t) - p_t).
    Phi is returned in the compute dtype (float32, or float64 for float64 inputs).
    """
    B, T, _ = hidden_states.shape
    acc = _compute_dtype(hidden_states.dtype)
    a = normalized_token_weights(response_mask, token_weights, acc).reshape(-1)
    logprobs = hidden_states.new_zeros(B * T, dtype=acc)
    entropy = hidden_states.new_zeros(B * T, dtype=acc)
    # sum_t a_t (e(y_t) - p_t) per response, in vocabulary space: [B, V]
    residual = hidden_states.new_zeros(B, lm_head_weight.shape[0], dtype=acc)
    for idx, probs, logprob, ent, ids in _masked_token_chunks(
        hidden_states, lm_head_weight, lm_head_bias, response_ids, response_mask, temperature, chunk_size
    ):
        logprobs.index_copy_(0, idx, logprob)
        entropy.index_copy_(0, idx, ent)
        _accumulate_residual(residual, probs, a.index_select(0, idx), idx.div(T, rounding_mode="floor"), ids)
    phi = _project_residual(residual, lm_head_weight)
    return SequenceFeatures(phi=phi, logprobs=logprobs.view(B, T), entropy=entropy.view(B, T))


@dataclass(frozen=True)
class PhiSums:
    """Per-sequence sums that make up Phi, additive over any split of a sequence's tokens.

    weighted: [S, d] sum_t alpha_t phi_t;  weight: [S] sum_t alpha_t.
    Phi = weighted / (weight + eps) (eq. 8): see ``phi_from_sums``.
    """

    weighted: Tensor
    weight: Tensor


def phi_from_sums(sums: PhiSums) -> Tensor:
    """Phi [S, d] of eq. 8 from (possibly all-reduced) ``PhiSums``; zero for a sequence without weight."""
    return sums.weighted / (sums.weight.unsqueeze(-1) + TOKEN_WEIGHT_EPS)


@torch.no_grad()
def phi_sums_from_logits(
    logits: Tensor,
    rows: Tensor,
    token_ids: Tensor,
    token_weights: Tensor,
    segment_ids: Tensor,
    num_segments: int,
    lm_head_weight: Tensor,
    *,
    temperature: float | Tensor = 1.0,
    chunk_size: int | None = None,
) -> PhiSums:
    """Phi's per-sequence sums from LM-head outputs a forward pass has already computed (eq. 7, 8, 14).

    For an engine that materialises the logits anyway (verl's log-prob pass), this reuses them:
    only the softmax of the selected rows and one [S, V] x [V, d] product are added.

    Args:
        logits: [..., V] raw LM-head outputs z_t = W h_t + b (any leading shape; flattened to [M, V]).
        rows: [n] long, which rows of the flattened logits are weighted tokens.
        token_ids: [n] realised token y_t predicted by each selected row.
        token_weights: [n] alpha_t >= 0 of each selected row.
        segment_ids: [n] long in [0, num_segments): the sequence each row belongs to.
        num_segments: number of sequences S.
        lm_head_weight: [V, d] LM-head matrix W.
        temperature: float, or [n] tensor of per-row temperatures (p_t = softmax(z_t / T)).
        chunk_size: rows per chunk; None processes all selected rows at once.

    Sums over disjoint token sets of the same sequences add up, so shards of a sequence
    (sequence parallelism) are all-reduced before ``phi_from_sums``.
    """
    _check_chunk_size(chunk_size)
    V = lm_head_weight.shape[0]
    if logits.shape[-1] != V:
        raise ValueError(f"logits have {logits.shape[-1]} columns; lm_head_weight has V = {V} rows")
    n = rows.numel()
    for name, t in (("token_ids", token_ids), ("token_weights", token_weights), ("segment_ids", segment_ids)):
        if t.shape != (n,):
            raise ValueError(f"{name} has shape {tuple(t.shape)}; expected ({n},) like rows")
    per_row_temperature = isinstance(temperature, Tensor)
    if per_row_temperature and temperature.shape != (n,):
        raise ValueError(f"temperature has shape {tuple(temperature.shape)}; expected a float or ({n},)")
    if bool((torch.as_tensor(temperature) <= 0).any()):
        raise ValueError("temperature must be > 0")
    flat = logits.reshape(-1, V)
    acc = _compute_dtype(logits.dtype)
    residual = flat.new_zeros(num_segments, V, dtype=acc)
    weights = token_weights.to(acc)
    step = chunk_size or max(n, 1)
    logits_buf = probs_buf = None
    if n > 0:  # two [c, V] buffers serve every chunk
        probs_buf = flat.new_empty(min(step, n), V, dtype=acc)
        logits_buf = probs_buf.new_empty(probs_buf.shape) if flat.dtype == acc else None
    for start in range(0, n, step):
        chunk = slice(start, start + step)
        c = int(rows[chunk].numel())
        if logits_buf is None:
            z = flat.index_select(0, rows[chunk]).to(acc)
        else:
            z = torch.index_select(flat, 0, rows[chunk], out=logits_buf[:c])
        if per_row_temperature:
            z.div_(temperature[chunk].to(acc).unsqueeze(-1))
        elif temperature != 1.0:
            z.div_(temperature)
        probs = torch.softmax(z, -1, out=probs_buf[:c])
        _accumulate_residual(residual, probs, weights[chunk], segment_ids[chunk], token_ids[chunk])
    weight_sum = weights.new_zeros(num_segments).index_add_(0, segment_ids, weights)
    return PhiSums(weighted=_project_residual(residual, lm_head_weight), weight=weight_sum)


class DecodingFeatures:
    """Phi (eq. 8), log-probs and entropies accumulated one decoding step at a time from the sampler's logits.

    A sampler that computes z_t / T for every new token feeds each step to ``add``; ``finish``
    returns what ``sequence_features`` returns for the finished responses (alpha_t = 1 on response
    tokens), so the old policy needs no pass of its own. The residual sum_t (e(y_t) - p_t) is kept
    in vocabulary space, [b, V] float32, and projected onto W once (eq. 14's algebra, as
    ``sequence_features``). The logits of a cached decoding step and of a full forward pass differ
    by float32 rounding only, so the two agree to rounding (tests/test_rollout.py).
    """

    def __init__(self, batch: int, vocab: int, device: torch.device):
        self.residual = torch.zeros(batch, vocab, dtype=torch.float32, device=device)
        self.lengths = torch.zeros(batch, dtype=torch.float32, device=device)
        self.logprobs: list[Tensor] = []
        self.entropy: list[Tensor] = []

    @torch.no_grad()
    def add(self, scaled_logits: Tensor, probs: Tensor, token_ids: Tensor, active: Tensor) -> None:
        """One step: z_t / T and p_t = softmax(z_t / T) [b, V] float32, sampled y_t [b], rows still sampling [b]."""
        logprob, entropy = _token_statistics(scaled_logits, probs, token_ids)
        weight = active.to(torch.float32)
        self.logprobs.append(logprob * weight)
        self.entropy.append(entropy * weight)
        rows = torch.arange(token_ids.shape[0], device=token_ids.device)
        self.residual.index_put_((rows, token_ids), weight, accumulate=True)
        self.residual.addcmul_(probs, weight.unsqueeze(-1), value=-1.0)
        self.lengths += weight

    @torch.no_grad()
    def finish(self, lm_head_weight: Tensor) -> SequenceFeatures:
        """phi [b, d], logprobs and entropy [b, steps] (0 after a row's last token)."""
        phi = phi_from_sums(PhiSums(weighted=_project_residual(self.residual, lm_head_weight), weight=self.lengths))
        empty = self.lengths.new_zeros(self.lengths.shape[0], 0)
        return SequenceFeatures(
            phi=phi,
            logprobs=torch.stack(self.logprobs, 1) if self.logprobs else empty,
            entropy=torch.stack(self.entropy, 1) if self.entropy else empty,
        )


@torch.no_grad()
def literal_sequence_features(
    hidden_states: Tensor,
    lm_head_weight: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    *,
    lm_head_bias: Tensor | None = None,
    temperature: float = 1.0,
    token_weights: Tensor | None = None,
) -> Tensor:
    """Reference Phi [B, d] by eq. 14 token by token: phi_t = W[y_t] - sum_v p_t[v] W[v].

    One [V] x [V, d] product per token: the cost the residual-sum identity avoids.
    """
    B, T, d = hidden_states.shape
    acc = _compute_dtype(hidden_states.dtype)
    a = normalized_token_weights(response_mask, token_weights, acc)
    W = lm_head_weight.to(acc)
    phi = hidden_states.new_zeros(B, d, dtype=acc)
    for b in range(B):
        for t in range(T):
            if response_mask[b, t] == 0:
                continue
            z = hidden_states[b, t].to(acc) @ W.T
            if lm_head_bias is not None:
                z = z + lm_head_bias.to(acc)
            p_t = torch.softmax(z / temperature, dim=-1)
            phi_t = W[response_ids[b, t]] - p_t @ W
            phi[b] += a[b, t] * phi_t
    return phi


# --- Hugging Face causal LMs -------------------------------------------------------------


def lm_head_parameters(model: torch.nn.Module) -> tuple[Tensor, Tensor | None]:
    """(W [V, d], b [V] or None) of a Hugging Face causal LM's output embedding."""
    head = model.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise ValueError(f"{type(model).__name__} has no output embedding (lm_head) with a weight")
    return head.weight, getattr(head, "bias", None)


def final_hidden_states(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """[B, L, d] states the LM head consumes (after the final norm), for left/right padded input.

    Runs the decoder only (``model.base_model``), so no [B, L, V] logits are built.
    Position ids count only attended tokens, so left padding does not shift positions.
    """
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    out = model.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    return out.last_hidden_state


def response_hidden_states(
    model: torch.nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
) -> Tensor:
    """[B, R, d] states that predict each response token (already shifted by one).

    Layout as in verl: prompts [B, P] left-padded, responses [B, R] right-padded.
    """
    if prompt_ids.shape[1] < 1:
        raise ValueError("prompt_ids must hold at least one token: it predicts the first response token")
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    hidden = final_hidden_states(model, input_ids, attention_mask)
    P = prompt_ids.shape[1]
    return hidden[:, P - 1 : -1]


@torch.no_grad()
def causal_lm_sequence_features(
    model: torch.nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    *,
    temperature: float = 1.0,
    token_weights: Tensor | None = None,
    chunk_size: int | None = None,
) -> SequenceFeatures:
    """The old-policy pass: Phi, log-probs and entropies of ``response_ids`` under ``model``.

    One decoder forward pass plus one chunked pass over the vocabulary; the logits of the
    prompt are never computed. Shapes: prompts [B, P] left-padded, responses [B, R].
    """
    hidden = response_hidden_states(model, prompt_ids, prompt_mask, response_ids, response_mask)
    weight, bias = lm_head_parameters(model)
    return sequence_features(
        hidden,
        weight,
        response_ids,
        response_mask,
        lm_head_bias=bias,
        temperature=temperature,
        token_weights=token_weights,
        chunk_size=chunk_size,
    )
