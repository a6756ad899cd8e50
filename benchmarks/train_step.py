"""Benchmark: median training-step time per exploration method on the tiny profile.

Every method starts from the same base model with the same seed. By default the learning
rate is 1e-12 so that all methods sample identical rollouts: the step times then differ
only by each method's own work (G2RL: nu and shaping; EVOL-RL: the sentence encoder;
entropy: the bonus term). ``--profile-lr`` uses the profile's learning rate instead.
The first --warmup steps of a run are not counted. Methods run in --rounds interleaved rounds
(grpo, entropy, evol, g2rl, grpo, ...), so that slow drift of the machine hits them alike; the
median is over all counted steps of all rounds.

    python benchmarks/train_step.py --steps 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from g2rl_core.config import load_profile, method_names
from g2rl_core.engines.native import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--methods", nargs="*", default=list(method_names()))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile-lr", action="store_true", help="train with the profile's learning rate")
    args = parser.parse_args()

    profile = load_profile(args.profile, args.params)
    times: dict[str, list[float]] = {method: [] for method in args.methods}
    overrides = {"steps": args.steps, "val_every": 10**6, "checkpoint_every": 10**6}
    if not args.profile_lr:
        overrides["lr"] = 1e-12
    for _ in range(args.rounds):
        for method in args.methods:
            with tempfile.TemporaryDirectory() as out:
                Trainer(profile.train_config(method, 0, **overrides), out).train()
                rows = [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]
            times[method] += [r["step_time_s"] for r in rows if r["kind"] == "train"][args.warmup :]
    medians = {method: statistics.median(values) for method, values in times.items()}
    print(
        f"profile {args.profile}, {args.rounds} rounds x {args.steps} steps "
        f"({args.warmup} warm-up per run not counted), "
        f"lr {'profile' if args.profile_lr else '1e-12 (identical rollouts)'}"
    )
    print(f"{'method':10s} {'median step s':>14s} {'ratio to grpo':>14s}")
    for method, seconds in medians.items():
        ratio = seconds / medians["grpo"] if "grpo" in medians else float("nan")
        print(f"{method:10s} {seconds:14.3f} {ratio:14.3f}")
    if "g2rl" in medians and "grpo" in medians:
        ratio = medians["g2rl"] / medians["grpo"]
        print(f"g2rl/grpo = {ratio:.3f} (target <= 1.05 (issue 17): {'met' if ratio <= 1.05 else 'NOT met'})")


if __name__ == "__main__":
    main()
