"""Benchmark: peak memory of one native training step at a fixed micro-batch as the responses per step grow.

A Qwen3 with the 1.7B head shape (d = 2048, V = 151936, tied embeddings; 16 query / 8 KV heads,
intermediate 6144) and ``--layers`` decoder layers, random-initialised, on the CPU. One step is the
trainer's own code after the rollout: the micro-batched old-policy pass with Phi
(``native.micro_batched_features``), the micro-batched reference pass (``Trainer.reference_logprobs``)
and the PPO update (``Trainer.update``: AdamW, micro-batches of ``ppo_micro_batch_size`` accumulated into
one optimiser step, so the CPU time stays affordable; the optimiser's states are the same size either way).
Responses are random tokens of a fixed length (the rollout is not measured).

Each point runs in its own process; it reports the process's peak RSS (``ru_maxrss``) and the
step's own rise above the RSS just before the step. Target: flat within 10% across the points.

    python benchmarks/step_memory.py                   # responses 8, 32, 128
    python benchmarks/step_memory.py --responses 8 32 --layers 1 --response-length 16
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def rss_gib() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**30


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def one_point(args: argparse.Namespace) -> dict:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from g2rl_core.config import TrainConfig
    from g2rl_core.engines import native
    from g2rl_core.engines.native import Trainer
    from g2rl_core.maths.methods import METHODS
    from g2rl_core.rollout import RolloutBatch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=6144,
        num_hidden_layers=args.layers,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        tie_word_embeddings=True,
    )
    model = Qwen3ForCausalLM(config).eval()
    m = 8
    cfg = TrainConfig(
        prompts_per_step=args.n // m,
        rollouts_per_prompt=m,
        ppo_mini_batch_size=args.n // m,  # one optimiser step per training step (AdamW states exist either way)
        ppo_micro_batch_size=args.micro,
        log_prob_micro_batch_size=args.micro,
        feature_chunk_size=256,
        gradient_checkpointing=args.checkpointing,
        lr=1e-7,
        device="cpu",
    )
    trainer = Trainer.__new__(Trainer)  # the trainer's step code without data files or a rollout engine
    trainer.cfg, trainer.model, trainer.device = cfg, model, torch.device("cpu")
    trainer.ref = native.copy.deepcopy(model).requires_grad_(False)
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainer.method = METHODS["grpo"]
    trainer.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda s: 1.0)
    trainer.backend = type("NoRollout", (), {"sync_weights": lambda self, model: None})()
    g = torch.Generator().manual_seed(0)
    P, R = 8, args.response_length
    batch = RolloutBatch(
        torch.randint(0, 151936, (args.n, P), generator=g),
        torch.ones(args.n, P, dtype=torch.long),
        torch.randint(0, 151936, (args.n, R), generator=g),
        torch.ones(args.n, R, dtype=torch.long),
        [""] * args.n,
    )
    before = rss_gib()
    start = time.perf_counter()
    model.eval()
    old = native.micro_batched_features(
        model, batch, cfg.log_prob_micro_batch_size, temperature=1.0, chunk_size=cfg.feature_chunk_size
    )
    ref = trainer.reference_logprobs(batch)
    advantages = torch.randn(args.n, generator=g)
    trainer.update(batch, advantages, old.logprobs, ref)
    return {
        "responses": args.n,
        "peak_rss_gib": peak_rss_gib(),
        "rss_before_step_gib": before,
        "step_rise_gib": peak_rss_gib() - before,
        "step_s": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--responses", type=int, nargs="*", default=[8, 32, 128])
    parser.add_argument("--micro", type=int, default=4, help="log_prob_micro_batch_size = ppo_micro_batch_size")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--response-length", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)  # one point, in a child process
    args = parser.parse_args()
    if args.n is not None:
        print(json.dumps(one_point(args)))
        return
    rows = []
    for n in args.responses:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--n", str(n), "--micro", str(args.micro)]
        cmd += ["--layers", str(args.layers), "--response-length", str(args.response_length)]
        cmd += ["--threads", str(args.threads)] + (["--checkpointing"] if args.checkpointing else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=3600)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"done: {rows[-1]}", file=sys.stderr, flush=True)
    print(f"micro-batch {args.micro}, {args.layers} layer(s), d=2048, V=151936, response length {args.response_length}")
    print("responses  peak_rss_gib  rss_before_step_gib  step_rise_gib  step_s")
    for r in rows:
        print(
            f"{r['responses']:>9}  {r['peak_rss_gib']:>12.3f}  {r['rss_before_step_gib']:>19.3f}  "
            f"{r['step_rise_gib']:>13.3f}  {r['step_s']:>6.1f}"
        )
    peaks = [r["peak_rss_gib"] for r in rows]
    print(f"peak spread: {(max(peaks) - min(peaks)) / min(peaks):.1%} of the smallest (target: <= 10%)")


if __name__ == "__main__":
    main()
