"""Benchmark: sampling time of the transformers back-end, ``model.generate`` vs the leaner loop (issue 17).

Two shapes of the profile: the training rollout (prompts_per_step x rollouts_per_prompt responses,
max_response_length new tokens, the training temperature and top_p) and the evaluation of its first
benchmark (every problem x eval n, at the eval temperature, top_p and max_new_tokens, in batches of
rollout.batch_size). Each round times both samplers on the same prompts and seed, alternating which
goes first, so that slow drift of the machine hits them alike; the table gives medians over the
rounds and the ratio loop/generate. Every round also checks that the two drew identical tokens.

    python benchmarks/rollout_speed.py --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from g2rl_core.config import load_profile
from g2rl_core.evaluation.benchmarks import load_jsonl, load_problems
from g2rl_core.models import load_policy
from g2rl_core.rollout import TransformersRollout


def shapes(profile) -> dict[str, tuple[list[str], dict]]:
    """name -> (prompts, generate keywords) of the training and evaluation shapes."""
    cfg = profile.train_config("grpo", 0)
    train = load_problems(cfg.train_data, cfg.train_kind, cfg.data_dir)[: cfg.prompts_per_step]
    out = {
        "train": (
            [p.prompt for p in train],
            dict(
                n=cfg.rollouts_per_prompt,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                max_new_tokens=cfg.max_response_length,
            ),
        )
    }
    if profile.eval is not None and profile.eval.benchmarks:
        name = next(iter(profile.eval.benchmarks))
        spec = profile.eval.benchmark(name)
        problems = load_jsonl(spec.source, spec.kind, name=name, limit=spec.limit).problems
        out[f"eval {name}"] = (
            [p.prompt for p in problems],
            dict(
                n=spec.n,
                temperature=spec.temperature,
                top_p=spec.top_p,
                max_new_tokens=spec.max_new_tokens or cfg.max_response_length,
            ),
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the profile's)")
    args = parser.parse_args()

    profile = load_profile(args.profile, args.params)
    cfg = profile.train_config("grpo", 0)
    torch.set_num_threads(args.threads or cfg.threads or torch.get_num_threads())
    model, tokenizer = load_policy(cfg.model)
    batch_size, chat_template = cfg.rollout.batch_size, cfg.rollout.chat_template
    samplers = {
        "generate": TransformersRollout(
            model, tokenizer, chat_template=chat_template, batch_size=batch_size, use_generate=True
        ),
        "loop": TransformersRollout(model, tokenizer, chat_template=chat_template, batch_size=batch_size),
    }
    print(
        f"profile {args.profile}, {args.rounds} rounds, {torch.get_num_threads()} threads, "
        f"model {cfg.model}, median seconds per rollout call"
    )
    print(f"{'shape':18s} {'responses':>9s} {'generate s':>11s} {'loop s':>9s} {'loop/generate':>14s} {'tokens':>10s}")
    for name, (prompts, kwargs) in shapes(profile).items():
        times: dict[str, list[float]] = {key: [] for key in samplers}
        identical = True
        for round_index in range(args.rounds + 1):  # round 0 warms up and is not counted
            order = list(samplers) if round_index % 2 == 0 else list(reversed(samplers))
            batches = {}
            for key in order:
                start = time.perf_counter()
                batches[key] = samplers[key].generate(prompts, seed=round_index, **kwargs)
                if round_index > 0:
                    times[key].append(time.perf_counter() - start)
            identical &= torch.equal(batches["loop"].response_ids, batches["generate"].response_ids)
        medians = {key: statistics.median(values) for key, values in times.items()}
        print(
            f"{name:18s} {len(prompts) * kwargs['n']:9d} {medians['generate']:11.3f} {medians['loop']:9.3f} "
            f"{medians['loop'] / medians['generate']:14.3f} {'identical' if identical else 'DIFFER':>10s}"
        )
        if not identical:
            raise SystemExit("the loop drew other tokens than model.generate")


if __name__ == "__main__":
    main()
