"""Benchmark: median training-step time, our trainer vs TRL's GRPOTrainer, for grpo and g2rl.

Same tiny profile, same base model, same batch shapes (prompts_per_step x rollouts_per_prompt
completions per step, mini-batches of ppo_mini_batch_size prompts), same precision. A training
step is one generation plus its optimiser steps, each with its gradient clipping, optimiser step
and zeroing of gradients; log writing, validation and checkpoints are outside it for both engines
(ours does build the step's completions table for its tracker inside it). Ours logs it as
step_time_s; for TRL, ``StepClock`` times each optimiser step from ``on_step_begin`` to
``on_step_end`` (TRL's own ``step_time`` metric counts ``training_step`` only: no clipping, no
optimiser step) and the optimiser steps that share one generation are summed.
The first --warmup steps are not counted. The runs use the profile's learning rate, so the two
engines (and the two methods) sample different rollouts after the first update, of different
lengths: compare ratios over several rounds, not one run. The TRL g2rl/grpo ratio is the cost of the extra
no-grad decoder pass that computes Phi (TRL makes no old-policy pass in this setting).

    python benchmarks/trl_step.py --steps 12 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

from g2rl_core.config import load_profile
from g2rl_core.engines.native import Trainer
from g2rl_core.engines.trl import train_with_trl


def native_step_times(cfg) -> list[float]:
    with tempfile.TemporaryDirectory() as out:
        Trainer(cfg, out).train()
        rows = [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]
    return [r["step_time_s"] for r in rows if r["kind"] == "train"]


class StepClock(TrainerCallback):
    """Wall time of each optimiser step of TRL's trainer: its training_step calls (generation included),
    gradient clipping, optimiser and scheduler steps and zero_grad."""

    def __init__(self):
        self.times: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.start)


def trl_step_times(cfg) -> list[float]:
    clock = StepClock()
    with tempfile.TemporaryDirectory() as out:
        trainer = train_with_trl(cfg, out, callbacks=[clock])
    per_optimizer_step = clock.times
    k = trainer.args.steps_per_generation
    return [sum(per_optimizer_step[i : i + k]) for i in range(0, len(per_optimizer_step), k)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (order rotated each round)")
    args = parser.parse_args()
    profile = load_profile(args.profile, args.params)
    runs = [("ours", "grpo"), ("trl", "grpo"), ("ours", "g2rl"), ("trl", "g2rl")]
    steps: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
    per_round: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
    for r in range(args.rounds):
        for engine, method in runs[r % len(runs) :] + runs[: r % len(runs)]:
            cfg = profile.train_config(method, 0, steps=args.steps, val_every=10**6, checkpoint_every=10**6)
            times = (native_step_times if engine == "ours" else trl_step_times)(cfg)[args.warmup :]
            steps[(engine, method)] += times
            per_round[(engine, method)].append(statistics.median(times))
    medians = {run: statistics.median(values) for run, values in steps.items()}
    print(
        f"profile {args.profile}, {args.rounds} interleaved rounds x {args.steps} steps "
        f"({args.warmup} warm-up per run not counted), median seconds per training step"
    )
    print(f"{'engine':8s} {'grpo':>8s} {'g2rl':>8s} {'g2rl/grpo':>10s}")
    for engine in ["ours", "trl"]:
        grpo, g2rl = medians[(engine, "grpo")], medians[(engine, "g2rl")]
        print(f"{engine:8s} {grpo:8.3f} {g2rl:8.3f} {g2rl / grpo:10.3f}")
    for method in ["grpo", "g2rl"]:
        ratios = [o / t for o, t in zip(per_round[("ours", method)], per_round[("trl", method)])]
        print(
            f"ours/trl ({method}) = {statistics.median(ratios):.3f}, the median of the within-round ratios "
            f"({', '.join(f'{x:.3f}' for x in ratios)})" + ("; target <= 0.8" if method == "grpo" else "")
        )


if __name__ == "__main__":
    main()
