"""The ``g2rl`` command line.

    g2rl sft      --profile tiny-direct --out build/tiny-direct
    g2rl train    --profile tiny-direct --method g2rl --seed 0 --out runs/tiny-direct/g2rl/seed0 [--set shaping.lam=2]
    g2rl eval     --profile tiny-direct --model runs/tiny-direct/g2rl/seed0/final --method g2rl --seed 0 --out DIR
    g2rl geometry --profile tiny-direct --runs runs/tiny-direct --out artifacts/tiny-direct/geometry
    g2rl report   --profile tiny-direct
    g2rl prepare-data --profile paper-1_7b --format verl --out build/paper-1_7b/verl
    g2rl plan     --profile paper-1_7b [--device-memory-gib 80]

Settings come from the profile in params.yaml (``--params`` and ``--profile`` choose it);
``--set field=value`` (``section.field=value`` for nested sections) overrides any of them:
``g2rl train --help`` lists every field with its meaning and default. User errors print as
one line naming the bad field, file or value, and exit with code 2 (``--debug`` shows the
traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import json
import os
import random
import sys
import time
import tokenize
import typing
from pathlib import Path

from g2rl_core.config import (
    ENGINES,
    RolloutConfig,
    SFTConfig,
    TrainConfig,
    from_mapping,
    load_profile,
    method_names,
    parse_overrides,
)
from g2rl_core.errors import ConfigError, G2RLError
from g2rl_core.provenance import format_seconds, machine_info, pin_cpu_paths, set_threads, write_run_info
from g2rl_core.runlock import run_lock

# --- helpers --------------------------------------------------------------------------------------


def field_docs(cls: type) -> dict[str, str]:
    """Each dataclass field's trailing ``# comment`` in ``cls``'s source: the settings' documentation."""
    docs: dict[str, str] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    tokens = tokenize.generate_tokens(io.StringIO(inspect.getsource(cls)).readline)
    line_name: tuple[int, str] | None = None
    for tok in tokens:
        if tok.type == tokenize.NAME and tok.string in names and tok.start[1] == 4:
            line_name = (tok.start[0], tok.string)
        elif tok.type == tokenize.COMMENT and line_name and tok.start[0] == line_name[0]:
            docs[line_name[1]] = tok.string.lstrip("# ").strip()
    return docs


def settings_help(cls: type, prefix: str = "") -> list[str]:
    """One line per setting of ``cls`` (nested sections expanded): name, default and meaning."""
    lines, docs = [], field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            lines.append(f"  {prefix}{f.name}.*: {docs.get(f.name, '')}")
            lines += settings_help(hints[f.name], prefix=f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        meaning = f"  {docs[f.name]}" if f.name in docs else ""
        lines.append(f"  {prefix}{f.name} = {default!r}{meaning}")
    return lines


def writable_dir(path: str | Path) -> Path:
    """``path`` as a directory we can write, created if missing; checked before any expensive work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path} is a file; give a directory")
    path.mkdir(parents=True, exist_ok=True)
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {path} is not writable")
    return path


def runtime_overrides(profile, pairs: list[str]) -> tuple[str | None, RolloutConfig]:
    """``data_dir`` and ``rollout`` of the profile's train section, with ``--set`` overrides (eval, geometry)."""
    overrides = parse_overrides(pairs)
    unknown = sorted(set(overrides) - {"data_dir", "rollout"})
    if unknown:
        raise ConfigError(f"--set: {unknown} cannot be set here; only data_dir=PATH and rollout.FIELD=VALUE")
    data_dir = overrides.get("data_dir", profile.train.get("data_dir"))
    rollout = {**(profile.train.get("rollout") or {}), **(overrides.get("rollout") or {})}
    return data_dir, from_mapping(RolloutConfig, rollout, f"profile {profile.name!r} train.rollout")


# --- commands --------------------------------------------------------------------------------------


def cmd_sft(args) -> Path:
    """Build an embedded base (tiny, tiny-direct): task data, tokenizer, random Qwen3, supervised warm start."""
    from g2rl_core.pipeline import tiny

    profile = load_profile(args.profile, args.params)
    sft_cfg: SFTConfig = profile.require("sft")
    out = writable_dir(args.out)
    paths = tiny.write_task(out / "data", seed=sft_cfg.task_seed)
    tokenizer = tiny.build_tokenizer()
    model = tiny.build_model(tokenizer, sft_cfg.model, seed=sft_cfg.seed)
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
    return out


def cmd_smoke_base(args) -> Path:
    """Build the paper-smoke base: a random tiny Qwen3 of the profile's sft.model shape, Qwen3-style chat tokenizer."""
    from g2rl_core.pipeline.smoke import build_smoke_base

    profile = load_profile(args.profile, args.params)
    sft_cfg: SFTConfig = profile.require("sft")
    out = writable_dir(args.out)
    print(f"wrote {build_smoke_base(out, sft_cfg.model, seed=sft_cfg.seed)}")
    return out


def cmd_train(args) -> Path:
    profile = load_profile(args.profile, args.params)
    overrides = parse_overrides(args.set)
    if args.threads is not None:  # the engines set cfg.threads themselves
        overrides["threads"] = args.threads
    cfg = profile.train_config(args.method, args.seed, **overrides)
    engine = args.engine or profile.engine
    out = writable_dir(args.out)
    if engine == "verl":
        try:
            from g2rl_core.engines.verl.run import train_with_verl
        except ModuleNotFoundError as err:
            if err.name != "g2rl_core.engines.verl.run":
                raise
            raise ConfigError(
                f"profile {profile.name!r}: engine = 'verl' is not run by `g2rl train`; "
                "launch verl runs with g2rl_core/engines/verl/launch.sh (docs/engines.md)"
            ) from None
        train_with_verl(cfg, out)
        print(f"final model: {out / 'final'}")
        return out
    if engine == "trl":
        from g2rl_core.engines.trl import train_with_trl

        train_with_trl(cfg, str(out), restart_on_config_change=args.on_config_change == "restart")
        print(f"final model: {out / 'final'}")
        return out
    from g2rl_core.engines.native import Trainer

    with run_lock(out):  # before anything is read or deleted: a second process fails at once
        if args.on_config_change == "restart":
            Trainer.discard_stale_checkpoint(cfg, out)
        final = Trainer(cfg, out).train()
    print(f"final model: {final}")
    return out


def cmd_eval(args) -> Path:
    import pandas as pd

    from g2rl_core.evaluation.benchmarks import BENCHMARKS, load_problems
    from g2rl_core.evaluation.runner import run_eval
    from g2rl_core.models import load_policy
    from g2rl_core.rollout import make_rollout

    profile = load_profile(args.profile, args.params)
    spec = profile.require("eval")
    if args.seed < 0:
        raise ConfigError(f"--seed {args.seed} must be >= 0")
    data_dir, rollout_cfg = runtime_overrides(profile, args.set)
    model_path = args.model or profile.train.get("model")
    if not model_path:
        raise ConfigError(f"profile {profile.name!r} has no train.model; pass --model PATH")
    cli = {"n": args.n, "max_new_tokens": args.max_new_tokens}
    cli = {key: value for key, value in cli.items() if value is not None}
    names = args.benchmarks or list(spec.benchmarks)
    settings = {}
    for name in names:  # every benchmark's settings are checked before the model loads
        if name not in spec.benchmarks and name in BENCHMARKS:  # any named benchmark, with the profile's defaults
            spec = dataclasses.replace(
                spec, benchmarks={**spec.benchmarks, name: {"source": name, "kind": BENCHMARKS[name].kind}}
            )
        if name not in spec.benchmarks:
            raise ConfigError(
                f"benchmark {name!r} is neither in profile {profile.name!r} eval.benchmarks "
                f"({sorted(spec.benchmarks)}) nor a known benchmark ({sorted(BENCHMARKS)})"
            )
        overrides = dict(cli)
        if args.n is not None:  # a quick look: fewer samples, and only the k that fit
            overrides["ks"] = [k for k in spec.benchmark(name).ks if k <= args.n] or [1]
        if args.limit is not None:
            overrides["limit"] = args.limit
        settings[name] = spec.benchmark(name, **overrides)
    out = writable_dir(args.out)
    problems = {name: load_problems(s.source, s.kind, data_dir, limit=s.limit) for name, s in settings.items()}
    model, tokenizer = load_policy(model_path)
    backend = make_rollout(rollout_cfg, model, tokenizer, model_path=model_path, seed=args.seed)
    summaries = []
    for name, s in settings.items():
        labels = {"model": args.model_label or model_path, "method": args.method, "seed": args.seed, "benchmark": name}
        summaries.append(
            run_eval(
                backend,
                problems[name],
                samples_csv=out / f"samples_{name}.csv",
                summary_csv=out / f"summary_{name}.csv",
                labels=labels,
                n=s.n,
                ks=s.ks,
                temperature=s.temperature,
                top_p=s.top_p,
                max_new_tokens=s.max_new_tokens,
                seed=args.seed,
            )
        )
    summary = pd.concat(summaries, ignore_index=True)
    summary.to_csv(out / "summary.csv", index=False)
    print(summary[~summary.metric.str.endswith("unbiased")].to_string(index=False))
    return out


def cmd_geometry(args) -> Path:
    """Figure 3 data: within-problem pairs of every trained policy (methods x seeds of params.yaml)."""
    import pandas as pd

    from g2rl_core import paths
    from g2rl_core.analysis.geometry import policy_geometry, summarize_pairs
    from g2rl_core.config import load_params
    from g2rl_core.evaluation.benchmarks import load_problems
    from g2rl_core.models import load_policy, sentence_encoder
    from g2rl_core.rollout import make_rollout

    params = load_params(args.params)
    profile = load_profile(args.profile, args.params)
    spec = profile.require("geometry")
    data_dir, rollout_cfg = runtime_overrides(profile, args.set)
    methods, seeds = args.methods or params.get("methods", []), args.seeds or params.get("seeds", [0])
    runs = Path(args.runs) if args.runs else paths.runs_dir(profile.name)
    out = writable_dir(args.out or paths.geometry_dir(profile.name))
    pool = load_problems(spec.source, spec.kind, data_dir)
    chosen = sorted(random.Random(0).sample(range(len(pool)), min(spec.problems, len(pool))))
    problems = [pool[i] for i in chosen]
    encode = sentence_encoder(spec.encoder)
    frames, summaries = [], []
    for method in methods:
        for seed in seeds:
            cfg = profile.train_config(method, seed)
            model_path = str(runs / method / f"seed{seed}" / "final")
            model, tokenizer = load_policy(model_path)
            pairs = policy_geometry(
                model,
                make_rollout(rollout_cfg, model, tokenizer, model_path=model_path, seed=seed),
                encode,
                problems,
                samples=spec.samples,
                temperature=spec.temperature,
                top_p=spec.top_p,
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
    return out


def cmd_prepare_data(args) -> Path:
    """verl's parquet files (train.parquet, val.parquet) of the profile's training and validation sets."""
    from g2rl_core import paths
    from g2rl_core.engines.verl.data import prepare_verl_data

    profile = load_profile(args.profile, args.params)
    cfg = profile.train_config(args.method, 0, **parse_overrides(args.set))
    out = writable_dir(args.out or paths.BUILD / profile.name / args.format)
    for path in prepare_verl_data(cfg, out):
        print(f"wrote {path}")
    return out


def cmd_plan(args) -> None:
    """The memory plan of one run per device and the total work of the profile's runs (g2rl_core.plan)."""
    from g2rl_core.config import load_params
    from g2rl_core.plan import GIB, format_plan, memory_plan, model_shape, work_plan

    params = load_params(args.params)
    profile = load_profile(args.profile, args.params)
    methods = [args.method] if args.method else params.get("methods") or method_names()
    configs = {m: profile.train_config(m, 0, **parse_overrides(args.set)) for m in methods}
    if args.device_memory_gib is not None:
        device_bytes = args.device_memory_gib * GIB
    else:
        import torch

        cuda = torch.cuda.is_available()
        device_bytes = torch.cuda.get_device_properties(0).total_memory if cuda else None
    shape = model_shape(configs[methods[0]].model)
    plans = {
        m: memory_plan(c, shape, prompt_tokens=args.prompt_tokens, device_bytes=device_bytes)
        for m, c in configs.items()
    }
    largest = max(plans, key=lambda m: plans[m]["peak"])
    seeds, points = params.get("seeds") or [0], params.get("ablation") or []
    work = work_plan(configs[largest], runs=len(methods) * len(seeds))
    print(format_plan(f"{profile.name}, method {largest} (the largest of {', '.join(methods)})", plans[largest], work))
    if points and not args.method:
        extra = len(points) * len(seeds)
        print(f"      + the shaping ablation: {len(points)} points x {len(seeds)} seeds = {extra} runs more")
    if device_bytes is None:
        print("device memory unknown (no GPU here): pass --device-memory-gib to check the fit")


def cmd_report(args) -> None:
    from g2rl_core.pipeline.report import write_results_index

    profile = load_profile(args.profile, args.params)
    print(f"wrote {write_results_index(args.results, profile.name)}")


# --- the parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    def common_options(defaults: bool) -> argparse.ArgumentParser:
        """The options every command takes, before or after its name (only the top level sets defaults)."""
        common = argparse.ArgumentParser(add_help=False)
        kw = {} if defaults else {"default": argparse.SUPPRESS}
        common.add_argument("--params", **({"default": "params.yaml"} | kw), help="parameter file (params.yaml)")
        common.add_argument("--profile", **({"default": None} | kw), help="profile (default: the file's 'profile')")
        common.add_argument("--debug", action="store_true", **kw, help="show the traceback of an error")
        common.add_argument(
            "--threads",
            type=int,
            **({"default": None} | kw),
            help="torch CPU threads (default: the profile's train.threads, else torch's default); "
            "another count gives other bits",
        )
        return common

    parser = argparse.ArgumentParser(
        prog="g2rl",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common_options(defaults=True)],
    )
    common = common_options(defaults=False)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func, help: str, epilog: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name, help=help, parents=[common], epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        p.set_defaults(func=func)
        return p

    p = command("sft", cmd_sft, "build an embedded base model and its task data (tiny, tiny-direct)")
    p.add_argument("--out", required=True)

    p = command("smoke-base", cmd_smoke_base, "build the paper-smoke base model (random tiny Qwen3, chat tokenizer)")
    p.add_argument("--out", required=True)

    train_settings = "training settings (--set FIELD=VALUE; defaults, before the profile's values):\n"
    p = command(
        "train",
        cmd_train,
        "GRPO training with one exploration method",
        epilog=train_settings + "\n".join(settings_help(TrainConfig)),
    )
    p.add_argument("--method", required=True, choices=method_names())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="run directory (resumes from its checkpoint)")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="override settings (listed below)")
    p.add_argument(
        "--engine",
        choices=list(ENGINES),
        default=None,
        help="default: the profile's engine. native: g2rl_core.engines.native (one process); "
        "trl: TRL's GRPOTrainer, same profile; verl: g2rl_core.engines.verl",
    )
    p.add_argument(
        "--on-config-change",
        choices=["error", "restart"],
        default="error",
        help="a checkpoint in --out written with another config: stop (default) or start afresh",
    )

    p = command("eval", cmd_eval, "sample n responses per problem and write samples + summary CSVs")
    p.add_argument("--model", default=None, help="model directory or hub name (default: the profile's train.model)")
    p.add_argument("--model-label", default=None, help="value of the 'model' column (default: --model)")
    p.add_argument(
        "--method",
        default="base",
        choices=("base", *method_names()),
        help="value of the 'method' column (base: the untrained model)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--benchmarks", nargs="*", default=None, help="subset of the profile's eval benchmarks")
    p.add_argument("--limit", type=int, default=None, help="first N problems of each benchmark")
    p.add_argument("--n", type=int, default=None, help="samples per problem (default: the profile's)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="response length cap (default: the profile's)")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="data_dir=PATH, rollout.FIELD=VALUE")

    p = command("geometry", cmd_geometry, "Figure 3 data: Phi and semantic cosines of sampled groups per policy")
    p.add_argument("--runs", default=None, help="directory holding <method>/seed<k>/final (default: runs/<profile>)")
    p.add_argument("--out", default=None, help="default: artifacts/<profile>/geometry")
    p.add_argument("--methods", nargs="*", default=None, choices=method_names(), help="default: params.yaml's methods")
    p.add_argument("--seeds", nargs="*", type=int, default=None, help="default: params.yaml's seeds")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="data_dir=PATH, rollout.FIELD=VALUE")

    p = command("prepare-data", cmd_prepare_data, "write an engine's data files (verl: parquet) for a profile")
    p.add_argument("--format", required=True, choices=["verl"])
    p.add_argument("--method", default="grpo", choices=method_names(), help="whose data settings (the same for all)")
    p.add_argument("--out", default=None, help="default: build/<profile>/<format>")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="e.g. data_dir=../shared/data")

    p = command("plan", cmd_plan, "memory plan of one run per device, and the profile's total work")
    p.add_argument(
        "--method", default=None, choices=method_names(), help="default: the largest of params.yaml's methods"
    )
    p.add_argument("--device-memory-gib", type=float, default=None, help="default: the first GPU's, if any")
    p.add_argument("--prompt-tokens", type=int, default=1024, help="prompt tokens assumed per response")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="override training settings")

    p = command("report", cmd_report, "write results/README.md from the notebooks' tables and figures")
    p.add_argument("--results", default="results")
    return parser


def main(argv: list[str] | None = None) -> int:
    pinned = pin_cpu_paths()  # before any tensor work (g2rl_core.provenance)
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        set_threads(args.threads if args.threads is not None else load_profile(args.profile, args.params).threads)
        out = args.func(args)
        seconds = time.perf_counter() - start
        info = machine_info()
        # the stage's record (machine, command, wall time); under a launcher only the main process writes it
        if isinstance(out, Path) and out.is_dir() and os.environ.get("RANK", "0") == "0":
            info = write_run_info(out, args.command, seconds, resumable=args.command == "train")
    except (G2RLError, OSError) as err:
        if args.debug:
            raise
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        if isinstance(err, OSError) and not isinstance(err, G2RLError) and err.filename:
            message = f"{err.filename}: {err.strerror or message}"
        print(f"g2rl {args.command}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2
    print(
        f"g2rl {args.command}: done in {format_seconds(seconds)} on {info['cpu']} "
        f"({info['threads']} threads, {info['cpu_capability']}{'' if pinned else ', CPU paths not pinned'})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
