"""The ``g2rl`` command line: sft, train, eval.

    g2rl sft   --profile tiny --out build/tiny
    g2rl train --profile tiny --method g2rl --seed 0 --out runs/tiny/g2rl/seed0
    g2rl eval  --profile tiny --model runs/tiny/g2rl/seed0/final --method g2rl --seed 0 --out DIR

``--set field=value`` overrides any TrainConfig field. Errors name the bad field, value or
path and say what is allowed; they print as one line, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from g2rl_core.config import METHOD_NAMES, ConfigError, from_mapping, load_profile, parse_overrides
from g2rl_core.errors import G2RLError
from g2rl_core.runlock import run_lock


def cmd_sft(args) -> None:
    """Build the tiny base: task data, tokenizer and random Qwen3 model, supervised warm start."""
    import torch

    from g2rl_core.pipeline import tiny

    profile = load_profile(args.profile, args.params)
    if not profile.sft:
        raise ConfigError(f"profile {profile.name!r} has no 'sft' section: only the tiny profile builds its base model")
    settings = dict(profile.sft)
    model_cfg = from_mapping(tiny.TinyModelConfig, settings.pop("model", {}), f"profile {profile.name!r} sft.model")
    task_seed = settings.pop("task_seed", 0)
    sft_cfg = from_mapping(tiny.SFTConfig, settings, f"profile {profile.name!r} sft")
    torch.set_num_threads(args.threads or torch.get_num_threads())
    out = Path(args.out)
    paths = tiny.write_task(out / "data", seed=task_seed)
    tokenizer = tiny.build_tokenizer()
    model = tiny.build_model(tokenizer, model_cfg, seed=sft_cfg.seed)
    rows = {name: [json.loads(line) for line in open(path)] for name, path in paths.items()}
    start = time.perf_counter()
    losses = tiny.sft(model, tokenizer, rows["train"], rows["choice"] + rows["choice10"], sft_cfg)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out / "base")
    tokenizer.save_pretrained(out / "base")
    summary = {
        "sft_seconds": time.perf_counter() - start,
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "parameters": sum(p.numel() for p in model.parameters()),
        "splits": {k: len(v) for k, v in rows.items()},
    }
    (out / "base" / "sft_summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


def cmd_train(args) -> None:
    from g2rl_core.engines.native import Trainer

    profile = load_profile(args.profile, args.params)
    cfg = profile.train_config(args.method, args.seed, **parse_overrides(args.set))
    if args.engine == "trl":
        from g2rl_core.engines.trl import train_with_trl

        train_with_trl(cfg, args.out)
        print(f"final model: {Path(args.out) / 'final'}")
        return
    with run_lock(args.out):  # before anything is read or deleted: a second process fails at once
        if args.on_config_change == "restart":
            Trainer.discard_stale_checkpoint(cfg, args.out)
        final = Trainer(cfg, args.out).train()
    print(f"final model: {final}")


def cmd_eval(args) -> None:
    import pandas as pd

    from g2rl_core.evaluation.benchmarks import BENCHMARKS, load_problems
    from g2rl_core.evaluation.runner import run_eval
    from g2rl_core.models import load_policy
    from g2rl_core.rollout import make_rollout

    profile = load_profile(args.profile, args.params)
    model_path = args.model or profile.train["model"]
    method = args.method if args.method in METHOD_NAMES else "grpo"  # "base" labels the untrained model
    cfg = profile.train_config(method, args.seed, model=model_path, **parse_overrides(args.set))
    settings = dict(profile.eval)
    benchmarks = dict(settings.pop("benchmarks", None) or {})
    if not benchmarks:
        raise ConfigError(f"profile {profile.name!r} has no eval.benchmarks")
    model, tokenizer = load_policy(model_path)
    backend = make_rollout(cfg, model, tokenizer)
    out = Path(args.out)
    summaries = []
    selected = args.benchmarks or list(benchmarks)
    for name in selected:
        if name not in benchmarks and name in BENCHMARKS:  # any named benchmark, with the profile's settings
            benchmarks[name] = {"source": name, "kind": BENCHMARKS[name].kind}
        if name not in benchmarks:
            raise ConfigError(
                f"benchmark {name!r} is neither in profile {profile.name!r} eval.benchmarks "
                f"({sorted(benchmarks)}) nor a known benchmark ({sorted(BENCHMARKS)})"
            )
        spec = {
            "n": 16,
            "ks": [1, 16],
            "temperature": 0.8,
            "top_p": 1.0,
            "limit": None,
            "max_new_tokens": cfg.max_response_length,
            "kind": "math",
            **settings,
            **benchmarks[name],
        }
        if args.n:  # a quick look: fewer samples, and only the k that fit
            spec["n"], spec["ks"] = args.n, [k for k in spec["ks"] if k <= args.n] or [1]
        if args.max_new_tokens:
            spec["max_new_tokens"] = args.max_new_tokens
        unknown = sorted(set(spec) - {"n", "ks", "temperature", "top_p", "limit", "max_new_tokens", "kind", "source"})
        if unknown or "source" not in spec:
            raise ConfigError(
                f"profile {profile.name!r} eval.benchmarks.{name}: needs 'source'; unknown field(s) {unknown}"
            )
        problems = load_problems(spec["source"], spec["kind"], cfg.data_dir, limit=args.limit or spec["limit"])
        labels = {"model": args.model_label or model_path, "method": args.method, "seed": args.seed, "benchmark": name}
        summaries.append(
            run_eval(
                backend,
                problems,
                samples_csv=out / f"samples_{name}.csv",
                summary_csv=out / f"summary_{name}.csv",
                labels=labels,
                n=spec["n"],
                ks=spec["ks"],
                temperature=spec["temperature"],
                top_p=spec["top_p"],
                max_new_tokens=spec["max_new_tokens"],
                seed=args.seed,
            )
        )
    summary = pd.concat(summaries, ignore_index=True)
    summary.to_csv(out / "summary.csv", index=False)
    print(summary[~summary.metric.str.endswith("unbiased")].to_string(index=False))


def cmd_geometry(args) -> None:
    """Figure 3 data: within-problem pairs of every trained policy (methods x seeds of params.yaml)."""
    import pandas as pd

    from g2rl_core.analysis.geometry import policy_geometry, summarize_pairs
    from g2rl_core.config import load_params
    from g2rl_core.evaluation.benchmarks import load_problems
    from g2rl_core.models import load_policy, sentence_encoder
    from g2rl_core.rollout import make_rollout

    params = load_params(args.params)
    profile = load_profile(args.profile, args.params)
    spec = {
        "problems": 30,
        "samples": 8,
        "temperature": 0.8,
        "top_p": 1.0,
        "encoder": "all-MiniLM-L6-v2",
        "kind": "math",
        **profile.geometry,
    }
    if "source" not in spec:
        raise ConfigError(f"profile {profile.name!r} geometry: needs 'source' (the split or benchmark to sample)")
    encode = sentence_encoder(spec["encoder"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    methods, seeds = args.methods or params.get("methods", []), args.seeds or params.get("seeds", [0])
    pool = load_problems(spec["source"], spec["kind"], profile.train_config(methods[0], seeds[0]).data_dir)
    problems = [pool[i] for i in sorted(random.Random(0).sample(range(len(pool)), min(spec["problems"], len(pool))))]
    frames, summaries = [], []
    for method in methods:
        for seed in seeds:
            cfg = profile.train_config(method, seed)
            run = Path(args.runs) / method / f"seed{seed}" / "final"
            model, tokenizer = load_policy(str(run))
            pairs = policy_geometry(
                model,
                make_rollout(cfg, model, tokenizer),
                encode,
                problems,
                samples=spec["samples"],
                temperature=spec["temperature"],
                top_p=spec["top_p"],
                max_new_tokens=cfg.max_response_length,
                seed=seed,
                chunk_size=cfg.feature_chunk_size,
            )
            pairs.insert(0, "seed", seed)
            pairs.insert(0, "method", method)
            frames.append(pairs)
            summaries.append({"method": method, "seed": seed, **summarize_pairs(pairs)})
            print(summaries[-1])
    pd.concat(frames, ignore_index=True).to_csv(out / "pairs.csv", index=False)
    pd.DataFrame(summaries).to_csv(out / "summary.csv", index=False)


def cmd_report(args) -> None:
    from g2rl_core.pipeline.report import write_results_index

    profile = load_profile(args.profile, args.params)
    print(f"wrote {write_results_index(args.results, profile.name)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="g2rl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", default="params.yaml", help="parameter file with the profiles")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sft", help="build the tiny base model (tiny profile)")
    p.add_argument("--profile", default=None, help="profile in params.yaml (default: its 'profile' key)")
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("train", help="GRPO training with one exploration method")
    p.add_argument("--profile", default=None)
    p.add_argument("--method", required=True, help="grpo | entropy | evol | g2rl")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="run directory (resumes from its checkpoint)")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="override TrainConfig fields")
    p.add_argument(
        "--engine",
        choices=["native", "trl"],
        default="native",
        help="native: g2rl_core.engines.native (one machine); trl: TRL's GRPOTrainer with the same profile",
    )
    p.add_argument(
        "--on-config-change",
        choices=["error", "restart"],
        default="error",
        help="a checkpoint in --out written with another config: stop (default) or start afresh",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="sample n responses per problem and write samples + summary CSVs")
    p.add_argument("--profile", default=None)
    p.add_argument("--model", default=None, help="model directory or hub name (default: the profile's train.model)")
    p.add_argument("--model-label", default=None, help="value of the 'model' column (default: --model)")
    p.add_argument("--method", default="base", help="value of the 'method' column (base: the untrained model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--benchmarks", nargs="*", default=None, help="subset of the profile's eval benchmarks")
    p.add_argument("--limit", type=int, default=None, help="first N problems of each benchmark")
    p.add_argument("--n", type=int, default=None, help="samples per problem (default: the profile's)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="response length cap (default: the profile's)")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("geometry", help="Figure 3 data: Phi and semantic cosines of sampled groups, per trained policy")
    p.add_argument("--profile", default=None)
    p.add_argument("--runs", required=True, help="directory holding <method>/seed<k>/final")
    p.add_argument("--out", required=True)
    p.add_argument("--methods", nargs="*", default=None, help="default: params.yaml's methods")
    p.add_argument("--seeds", nargs="*", type=int, default=None, help="default: params.yaml's seeds")
    p.set_defaults(func=cmd_geometry)

    p = sub.add_parser("report", help="write results/README.md from the notebooks' tables and figures")
    p.add_argument("--profile", default=None)
    p.add_argument("--results", default="results")
    p.set_defaults(func=cmd_report)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (G2RLError, FileNotFoundError) as err:
        print(f"g2rl {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
