"""What drives the mean Phi-cosine and the share of negative pairs? (issue 15, item 2)

A controlled sweep on tiny Qwen3 models. Two kinds of points:

- random models built from configs (no training): one factor at a time around a baseline
  (hidden size, vocabulary size, response length, logit scale, i.e. per-token entropy and the
  share of near-deterministic tokens), responses of a fixed length drawn by ``sample_responses``;
- a trained tiny base (``g2rl sft``) on the task's training prompts, sampled by the rollout back-end.

On both, the sampler's distribution can differ from the p_t that Phi uses (eq. 7): a sampling
temperature other than Phi's temperature, or nucleus (top-p) truncation.

Why this matters (exact algebra, the score-function identity): if y_t is drawn from p_t itself,
E[e(y_t) - p_t | y_<t] = 0, so each phi_t = W^T (e(y_t) - p_t) has conditional mean zero and their
sum over a response has mean zero (optional stopping covers a sampled EOS; the 1/sum alpha of eq. 8
rescales a response and leaves cosines unchanged). Two responses of one group are independent given
the prompt, so E <Phi(i), Phi(j)> = |E Phi|^2 = 0. That alone does not make half the pairs negative
(a skewed Phi distribution, many small vectors one way and a few long ones the other, has mostly
positive cosines and still mean zero); the sweep measures the shares. A shared direction, i.e. a
mean that dominates the spread, appears only when the sampler is not p_t,
E[e(y_t) - p_t] = q_t - p_t != 0 (q_t the sampler), and its weight against the zero-mean noise grows
with the response length (noise ~ 1/sqrt(L)). The sweep measures all of this.

Run:  python -m g2rl_core.analysis.phi_sweep --base build/tiny/base --data build/tiny/data/train.jsonl \\
          --out artifacts/tiny/phi_sweep
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor

from g2rl_core.analysis.phi_gradient import cluster_bootstrap, mean_statistic
from g2rl_core.errors import ConfigError, G2RLError
from g2rl_core.maths.features import causal_lm_sequence_features
from g2rl_core.maths.shaping import pairwise_cosine
from g2rl_core.provenance import pin_cpu_paths, set_threads, write_run_info


@dataclass(frozen=True)
class RandomPoint:
    """One random-model setting. ``feature_temperature`` None means Phi uses the sampling temperature."""

    hidden_size: int = 64
    vocab_size: int = 512
    layers: int = 2
    length: int = 32
    logit_scale: float = 1.0
    temperature: float = 1.0
    feature_temperature: float | None = None
    top_p: float = 1.0
    seed: int = 0


def build_random_model(point: RandomPoint):
    """An untied random Qwen3ForCausalLM; the LM head is multiplied by ``logit_scale`` (lower entropy)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(point.seed)
    heads = max(2, point.hidden_size // 32)
    config = Qwen3Config(
        vocab_size=point.vocab_size,
        hidden_size=point.hidden_size,
        intermediate_size=4 * point.hidden_size,
        num_hidden_layers=point.layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=point.hidden_size // heads,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    model = Qwen3ForCausalLM(config).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(point.logit_scale)
    return model


def nucleus(probs: Tensor, top_p: float) -> Tensor:
    """Renormalised top-p truncation of ``probs`` [N, V]: the smallest set of tokens whose mass reaches top_p."""
    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True)
    keep = (sorted_p.cumsum(-1) - sorted_p) < top_p  # the top token is always kept
    truncated = torch.zeros_like(probs).scatter(-1, order, sorted_p * keep)
    return truncated / truncated.sum(-1, keepdim=True)


@torch.no_grad()
def sample_responses(model, prompt_ids: Tensor, *, length: int, temperature: float, top_p: float, seed: int) -> Tensor:
    """[N, length] tokens drawn one at a time from top-p(softmax(z / temperature)), no EOS, with a KV cache."""
    gen = torch.Generator().manual_seed(seed)
    out = model(input_ids=prompt_ids, use_cache=True)
    past, logits = out.past_key_values, out.logits[:, -1]
    tokens = []
    for _ in range(length):
        probs = nucleus(torch.softmax(logits.double() / temperature, -1), top_p)
        token = torch.multinomial(probs, 1, generator=gen)
        tokens.append(token)
        out = model(input_ids=token, past_key_values=past, use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1]
    return torch.cat(tokens, dim=1)


def phi_geometry(phi: Tensor, *, n_resamples: int = 500) -> dict[str, float]:
    """Within-group Phi-cosines (i < j): mean and share of negative pairs with bootstrap CIs over groups,
    their standard deviation, and ``resultant`` = mean over groups of |mean of the unit Phi|^2
    (1/m for independent directions with no common component)."""
    G, m, _ = phi.shape
    cos = pairwise_cosine(phi.double())
    i, j = torch.triu_indices(m, m, offset=1)
    pairs = cos[:, i, j]
    clusters = torch.arange(G).repeat_interleave(len(i)).numpy()
    values = pairs.reshape(-1).numpy()
    negative = (values < 0).astype(float)
    mean, mean_low, mean_high = cluster_bootstrap(mean_statistic, values, values, clusters, n_resamples=n_resamples)
    share, share_low, share_high = cluster_bootstrap(
        mean_statistic, negative, negative, clusters, n_resamples=n_resamples
    )
    unit = phi.double() / phi.double().norm(dim=-1, keepdim=True).clamp(min=1e-30)
    return {
        "phi_cos_mean": mean,
        "phi_cos_low": mean_low,
        "phi_cos_high": mean_high,
        "negative_share": share,
        "negative_low": share_low,
        "negative_high": share_high,
        "phi_cos_std": pairs.std().item(),
        "resultant": unit.mean(1).pow(2).sum(-1).mean().item(),
    }


def token_statistics(entropy: Tensor, logprobs: Tensor, mask: Tensor) -> dict[str, float]:
    """Mean per-token entropy (nats), share of tokens with p(y_t) > 0.9, mean response length."""
    mask = mask.double()
    n = mask.sum().clamp(min=1)
    return {
        "entropy_mean": ((entropy.double() * mask).sum() / n).item(),
        "deterministic_share": (((logprobs.double().exp() > 0.9).double() * mask).sum() / n).item(),
        "length_mean": mask.sum(1).mean().item(),
    }


def random_point(point: RandomPoint, *, groups: int, samples: int, prompt_length: int = 8) -> dict:
    """Geometry of ``groups`` x ``samples`` fixed-length responses of a random model."""
    model = build_random_model(point)
    gen = torch.Generator().manual_seed(point.seed + 1)
    prompts = torch.randint(0, point.vocab_size, (groups, prompt_length), generator=gen).repeat_interleave(samples, 0)
    responses = sample_responses(
        model, prompts, length=point.length, temperature=point.temperature, top_p=point.top_p, seed=point.seed
    )
    ones = torch.ones_like
    feats = causal_lm_sequence_features(
        model,
        prompts,
        ones(prompts),
        responses,
        ones(responses),
        temperature=point.feature_temperature or point.temperature,
    )
    return {
        **phi_geometry(feats.phi.view(groups, samples, -1)),
        **token_statistics(feats.entropy, feats.logprobs, ones(responses)),
    }


def random_grid() -> list[tuple[str, RandomPoint]]:
    """One factor at a time around the baseline, and the two mismatches crossed with length and entropy."""
    base = RandomPoint()
    grid = [("baseline", base)]
    grid += [("hidden_size", replace(base, hidden_size=d)) for d in (16, 256)]
    grid += [("vocab_size", replace(base, vocab_size=v)) for v in (64, 4096)]
    grid += [("length", replace(base, length=n)) for n in (8, 128)]
    grid += [("logit_scale", replace(base, logit_scale=s)) for s in (4.0, 16.0, 64.0)]
    grid += [("temperature_matched", replace(base, temperature=t)) for t in (0.5, 0.8)]
    mismatch = replace(base, temperature=0.8, feature_temperature=1.0)
    grid += [("mismatch_T0.8_length", replace(mismatch, length=n)) for n in (8, 32, 128)]
    grid += [("mismatch_T0.8_logit_scale", replace(mismatch, logit_scale=s)) for s in (4.0, 16.0, 64.0)]
    grid += [("mismatch_T0.5", replace(base, temperature=0.5, feature_temperature=1.0))]
    grid += [("top_p", replace(base, top_p=p)) for p in (0.9, 0.5)]
    grid += [("top_p0.9_logit_scale", replace(base, top_p=0.9, logit_scale=s)) for s in (4.0, 16.0)]
    return grid


def with_prompt_as_response(prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor, response_mask: Tensor):
    """Re-split each row so that every prompt token after the first counts as a weighted token of Phi.

    Returns (prompt_ids [N, 1], prompt_mask, response_ids [N, R'], response_mask) with the rest of the
    prompt followed by the response, right-padded. The prompt tokens were not sampled: a group shares them.
    """
    from g2rl_core.rollout import right_pad

    rows = [
        torch.cat([p[pm.bool()], r[rm.bool()]]).tolist()
        for p, pm, r, rm in zip(prompt_ids, prompt_mask, response_ids, response_mask)
    ]
    ids, mask = right_pad([row[1:] for row in rows], 0)
    first = torch.tensor([[row[0]] for row in rows])
    return first, torch.ones_like(first), ids, mask


def trained_point(
    model,
    tokenizer,
    problems,
    *,
    temperature: float,
    feature_temperature: float | None,
    top_p: float,
    max_new_tokens: int,
    samples: int,
    include_prompt: bool = False,
    seed: int = 0,
) -> dict:
    """Geometry of a trained policy's sampled groups (rollout back-end, EOS allowed) on ``problems``.

    ``include_prompt`` puts the prompt's tokens into Phi as well (alpha_t = 1 on them): not what eq. 8
    prescribes, a probe of what shared, unsampled tokens do to the geometry.
    """
    from g2rl_core.rollout import TransformersRollout

    batch = TransformersRollout(model, tokenizer).generate(
        [p.prompt for p in problems],
        n=samples,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
    )
    layout = (batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask)
    if include_prompt:
        layout = with_prompt_as_response(*layout)
    feats = causal_lm_sequence_features(model, *layout, temperature=feature_temperature or temperature)
    return {
        **phi_geometry(feats.phi.view(len(problems), samples, -1)),
        **token_statistics(feats.entropy, feats.logprobs, layout[3]),
    }


def trained_grid() -> list[tuple[str, dict]]:
    """Sampling settings for a trained policy: matched temperatures, mismatches (also with shorter
    responses), top-p, response cap, and Phi over the prompt's tokens too."""
    grid = [("temperature_matched", {"temperature": t}) for t in (0.5, 0.8, 1.0, 1.3)]
    grid += [("mismatch_feature_T1", {"temperature": t, "feature_temperature": 1.0}) for t in (0.5, 0.8)]
    grid += [
        ("mismatch_T0.5_max_new_tokens", {"temperature": 0.5, "feature_temperature": 1.0, "max_new_tokens": n})
        for n in (8, 16)
    ]
    grid += [("top_p", {"temperature": 1.0, "top_p": p}) for p in (0.9, 0.7)]
    grid += [("top_p_T0.8", {"temperature": 0.8, "top_p": 0.9})]
    grid += [("max_new_tokens", {"temperature": 1.0, "max_new_tokens": n}) for n in (16, 32)]
    grid += [("prompt_in_phi", {"temperature": t, "include_prompt": True}) for t in (0.8, 1.0)]
    return grid


def run_sweep(args: argparse.Namespace) -> pd.DataFrame:
    """Random-model grid (sweep_random.csv), each model in ``--base`` (sweep_trained.csv); sweep.csv joins them."""
    from g2rl_core.config import load_profile
    from g2rl_core.evaluation.benchmarks import load_problems
    from g2rl_core.models import load_policy

    if args.groups < 1 or args.samples < 2:
        raise ConfigError(f"--groups = {args.groups} must be >= 1 and --samples = {args.samples} >= 2")
    set_threads(args.threads if args.threads is not None else load_profile(args.profile, args.params).threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.random:
        rows = []
        for factor, point in random_grid():
            t0 = time.perf_counter()
            row = {"kind": "random", "factor": factor, **asdict(point)}
            row |= random_point(point, groups=args.groups, samples=args.samples)
            rows.append(row | {"seconds": time.perf_counter() - t0})
            print({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()}, flush=True)
        pd.DataFrame(rows).to_csv(out / "sweep_random.csv", index=False)
    if args.base:
        rows = []
        problems = load_problems(args.data, "math")[: args.groups]
        for base in args.base:
            model, tokenizer = load_policy(base)
            label = Path(base).name if Path(base).name not in ("base", "final") else str(Path(base).parent.name)
            for factor, setting in trained_grid():
                t0 = time.perf_counter()
                setting = {
                    "top_p": 1.0,
                    "feature_temperature": None,
                    "max_new_tokens": args.max_new_tokens,
                    "include_prompt": False,
                    **setting,
                }
                row = {"kind": "trained", "model": label, "factor": factor, **setting}
                row |= trained_point(model, tokenizer, problems, samples=args.samples, **setting)
                rows.append(row | {"seconds": time.perf_counter() - t0})
                print({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()}, flush=True)
        pd.DataFrame(rows).to_csv(out / "sweep_trained.csv", index=False)
    parts = [out / name for name in ("sweep_random.csv", "sweep_trained.csv") if (out / name).exists()]
    frame = pd.concat([pd.read_csv(p) for p in parts], ignore_index=True) if parts else pd.DataFrame()
    frame.to_csv(out / "sweep.csv", index=False)
    meta = {"groups": args.groups, "samples": args.samples, "seconds": time.perf_counter() - start, "base": args.base}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return frame


def main(argv: list[str] | None = None) -> int:
    pin_cpu_paths()  # before any tensor work
    parser = argparse.ArgumentParser(prog="python -m g2rl_core.analysis.phi_sweep", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--params", default="params.yaml", help="its profile's train.threads: --threads")
    parser.add_argument("--profile", default=None, help="profile in params.yaml (default: its 'profile' key)")
    parser.add_argument("--base", nargs="*", default=None, help="trained tiny model directories (g2rl sft output)")
    parser.add_argument("--data", default="build/tiny/data/train.jsonl", help="prompts for the trained models")
    parser.add_argument("--groups", type=int, default=16)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--no-random", dest="random", action="store_false", help="skip the random-model grid")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        run_sweep(args)
    except G2RLError as err:
        print(f"phi_sweep: error: {err}", file=sys.stderr)
        return 2
    write_run_info(args.out, "phi_sweep", time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
