"""Benchmark: what pinning the CPU code paths costs, side by side (issue 18).

Each variant is a set of environment variables that torch and MKL read at their first kernel, so
each run is a fresh process. Variants:

  pinned      provenance.PINNED_CPU_ENV, what every g2rl command sets (MKL_CBWR=AVX2: honoured on
              Intel only; AMD CPUs keep MKL's own branch);
  compatible  the same with MKL_CBWR=COMPATIBLE: MKL's vendor-neutral branch, the same on every x86
              CPU (the candidate for identity across Intel and AMD machines);
  torch_default  pinned with ATEN_CPU_CAPABILITY=default: torch's own kernels without AVX2, MKL's as
              pinned;
  generic     compatible plus ATEN_CPU_CAPABILITY=default: neither torch nor MKL uses AVX2.

A run trains the tiny profile's GRPO for --steps steps (lr 1e-12, so every variant samples the same
kind of rollouts) and reports its median step time after --warmup steps, and a hash of its log's
losses, so the table also says whether the variant changes the numbers. A variant that changes the
numbers may also sample responses of other lengths: tokens/s (response tokens per second of step)
is printed beside the step time for that reason. Rounds run the variants
interleaved in a rotated order; a ratio is the median over rounds of the within-round ratio to
pinned.

    python benchmarks/cpu_paths.py --rounds 3 --steps 12
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from g2rl_core.provenance import PINNED_CPU_ENV, can_pin

VARIANTS = {
    "pinned": dict(PINNED_CPU_ENV),
    "compatible": dict(PINNED_CPU_ENV, MKL_CBWR="COMPATIBLE"),
    "torch_default": dict(PINNED_CPU_ENV, ATEN_CPU_CAPABILITY="default"),
    "generic": dict(PINNED_CPU_ENV, MKL_CBWR="COMPATIBLE", ATEN_CPU_CAPABILITY="default"),
}


def child(profile_name: str, params: str, steps: int, warmup: int) -> None:
    """One run in this process (its environment is the variant's): prints a JSON line."""
    from g2rl_core.config import load_profile
    from g2rl_core.engines.native import Trainer

    profile = load_profile(profile_name, params)
    overrides = {"steps": steps, "val_every": 10**6, "checkpoint_every": 10**6, "lr": 1e-12}
    with tempfile.TemporaryDirectory() as out:
        Trainer(profile.train_config("grpo", 0, **overrides), out).train()
        rows = [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    losses = json.dumps([r.get("loss") for r in train]).encode()
    print(
        json.dumps(
            {
                "median_step_s": statistics.median(r["step_time_s"] for r in train[warmup:]),
                "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in train[warmup:]),
                "losses_sha": hashlib.sha256(losses).hexdigest()[:12],
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.profile, args.params, args.steps, args.warmup)
        return
    if not can_pin():
        sys.exit("cpu_paths.py: this CPU has no AVX2/FMA (or is not x86-64): the pinned paths cannot be set")
    results: dict[str, list[dict]] = {v: [] for v in args.variants}
    for r in range(args.rounds):
        order = args.variants[r % len(args.variants) :] + args.variants[: r % len(args.variants)]
        for variant in order:
            env = {k: v for k, v in os.environ.items() if k not in PINNED_CPU_ENV} | VARIANTS[variant]
            cmd = [sys.executable, __file__, "--child", "--profile", args.profile, "--params", args.params]
            cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"cpu_paths.py: the {variant} run failed:\n{done.stderr[-3000:]}")
            results[variant].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {r}: {variant:10s} {results[variant][-1]['median_step_s']:.3f} s", flush=True)
    base = args.variants[0]
    print(f"\nprofile {args.profile}, grpo, {args.rounds} rounds x {args.steps} steps, {args.warmup} warm-up")
    print(f"{'variant':10s} {'median step s':>14s} {'ratio to ' + base:>18s} {'tokens/s':>9s}  losses")
    for variant, runs in results.items():
        ratio = statistics.median(run["median_step_s"] / b["median_step_s"] for run, b in zip(runs, results[base]))
        median = statistics.median(run["median_step_s"] for run in runs)
        tokens = statistics.median(run["median_tokens_per_s"] for run in runs)
        hashes = sorted({run["losses_sha"] for run in runs})
        print(f"{variant:10s} {median:14.3f} {ratio:18.3f} {tokens:9.0f}  {', '.join(hashes)}")


if __name__ == "__main__":
    main()
