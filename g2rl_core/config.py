"""Typed, validated configuration, and the profiles of params.yaml.

``params.yaml`` holds one block per profile (``tiny-direct``, ``tiny``, ``paper-1_7b``, ``paper-4b``,
``paper-smoke``); the
top-level ``profile`` key selects the one ``dvc repro`` runs. A profile has

- ``train``:    every ``TrainConfig`` field (Table 3's values for the paper profiles);
- ``methods``:  per-method settings merged over ``train`` (e.g. ``g2rl: {shaping: {lam: 1.0}}``);
- ``eval``:     an ``EvalSpec`` (defaults and one entry per benchmark);
- ``geometry``: a ``GeometrySpec`` (Figure 3's sampling);
- ``sft``:      an ``SFTConfig`` (embedded profiles: how the base model is built);
- ``engine``:   who trains (``native``, ``trl`` or ``verl``; default ``native``), see docs/engines.md.

Every setting is declared once, below, with its meaning and default. Every error is a
``ConfigError`` that names the field, the bad value and what is allowed; an unknown field gets
a "did you mean". Nested sections (``shaping``, ``rollout``, ``model``) are dataclasses too.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from g2rl_core.errors import ConfigError
from g2rl_core.maths.methods import METHODS
from g2rl_core.maths.shaping import ShapingConfig

ROLLOUT_BACKENDS = ("transformers", "vllm")
ENGINES = ("native", "trl", "verl")  # who runs `g2rl train` for a profile (docs/engines.md)
PRECISIONS = ("float32", "bf16")
VLLM_DTYPES = ("auto", "float32", "bfloat16", "float16")
ANSWER_KINDS = ("math", "choice")
LOGGERS = ("dvclive", "trackio", "wandb", "tensorboard")  # experiment trackers (g2rl_core.tracking)


def method_names() -> tuple[str, ...]:
    """The registered exploration methods (``maths.methods.METHODS``), in registry order."""
    return tuple(METHODS)


# --- checking ------------------------------------------------------------------------------------


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and all(_matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items())
    return isinstance(value, hint)


def _check_fields(cfg: Any) -> None:
    """Types of every field (ints are accepted for floats and converted); numbers must be finite."""
    hints = typing.get_type_hints(type(cfg))
    for f in fields(cfg):
        value, hint = getattr(cfg, f.name), hints[f.name]
        if not _matches(value, hint):
            allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
            names = " or ".join(_type_name(a) for a in allowed)
            raise ConfigError(f"{f.name} = {value!r} has type {type(value).__name__}; expected {names}")
        if float in (hint, *typing.get_args(hint)) and type(value) is int:
            value = float(value)
            object.__setattr__(cfg, f.name, value)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name} = {value!r} must be a finite number")


def _check_choice(cfg: Any, name: str, allowed: tuple[str, ...]) -> None:
    if getattr(cfg, name) not in allowed:
        raise ConfigError(f"{name} = {getattr(cfg, name)!r} is not allowed; choose one of {list(allowed)}")


def _check_positive(cfg: Any, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise ConfigError(f"{name} = {value!r} must be > 0")


def _check_non_negative(cfg: Any, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name} = {getattr(cfg, name)!r} must be >= 0")


def _check_unit_interval(cfg: Any, *names: str) -> None:
    for name in names:
        if not 0 < getattr(cfg, name) <= 1:
            raise ConfigError(f"{name} = {getattr(cfg, name)!r} must be in (0, 1]")


def _check_device(device: str) -> None:
    """ "auto", "cpu", "cuda", "cuda:N", "meta" (tests); a parse error names the field and the fix."""
    if device == "auto":
        return
    import torch

    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device = {device!r} is not a torch device; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None


def _dataclass_of(hint: Any) -> type | None:
    for candidate in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(candidate):
            return candidate
    return None


def from_mapping(cls: type, values: Any, where: str = "config"):
    """Build config dataclass ``cls`` from a mapping; nested dataclass fields from nested mappings.

    Unknown keys are errors that suggest the closest known field. ``where`` prefixes every
    message (e.g. "profile 'tiny' train").
    """
    if isinstance(values, cls):
        return values
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of fields, got {type(values).__name__} {values!r}")
    known = {f.name: f for f in fields(cls)}
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known fields: {sorted(known)}"
            raise ConfigError(f"{where}: unknown field {key!r}{hint}")
    hints = typing.get_type_hints(cls)
    built = {}
    for key, value in values.items():
        nested = _dataclass_of(hints[key])
        built[key] = from_mapping(nested, value, f"{where}: {key}") if nested and isinstance(value, dict) else value
    try:
        return cls(**built)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def deep_merge(base: dict[str, Any], *updates: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by each of ``updates`` in turn; nested mappings are merged, not replaced."""
    out = dict(base)
    for update in updates:
        for key, value in update.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = deep_merge(out[key], value)
            else:
                out[key] = value
    return out


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["lr=1e-6", "shaping.lam=2"]`` -> ``{"lr": 1e-6, "shaping": {"lam": 2}}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} must look like field=value (or section.field=value)")
        key, raw = pair.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"override {pair!r}: the value is not valid YAML") from None
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        *sections, name = key.strip().split(".")
        target = out
        for section in sections:
            target = target.setdefault(section, {})
        target[name] = value
    return out


# --- sections --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutConfig:
    """How responses are sampled; shared by training, evaluation and geometry."""

    backend: str = "transformers"  # "transformers" (model.generate) or "vllm"
    batch_size: int = 256  # transformers: sequences per generate() call
    chat_template: bool = False  # wrap prompts in the tokenizer's chat template
    # vllm only (ignored by transformers):
    dtype: str = "float32"  # vLLM weights/compute dtype; "bfloat16" on GPUs (float32: the CPU back-end's exact match)
    gpu_memory_utilization: float = 0.5  # share of GPU memory vLLM may take (weights + KV cache), in (0, 1]
    enforce_eager: bool = True  # no CUDA graphs (slower decoding, less memory, faster start)
    sleep_mode: bool = False  # offload vLLM's weights and free its KV cache while the policy trains (GPU only)
    max_model_len: int | None = None  # prompt + response tokens vLLM plans KV cache for (None: the model's maximum)

    def __post_init__(self) -> None:
        _check_fields(self)
        _check_choice(self, "backend", ROLLOUT_BACKENDS)
        _check_choice(self, "dtype", VLLM_DTYPES)
        _check_positive(self, "batch_size", "max_model_len")
        _check_unit_interval(self, "gpu_memory_utilization")


@dataclass(frozen=True)
class TrainConfig:
    """One training run: model, data, Table 3's optimisation settings, the method, engineering.

    Table 3 names are verl's. Settings the paper does not state are marked in params.yaml.
    """

    # model and data
    model: str = "build/tiny/base"  # path or hub name, loaded with from_pretrained
    train_data: str = "build/tiny/data/train.jsonl"  # a benchmark name or a JSONL path
    train_kind: str = "math"  # "math" (math-verify) or "choice" (option letter)
    val_data: str = "build/tiny/data/hard.jsonl"  # validation set of Figure 2 (mean@val_samples)
    val_kind: str = "math"
    data_dir: str | None = None  # local copies of the named benchmarks (None: the Hugging Face hub)
    # Table 3
    prompts_per_step: int = 16  # verl data.train_batch_size
    rollouts_per_prompt: int = 16  # m, verl rollout.n
    ppo_mini_batch_size: int = 1  # prompts per optimiser step (all their responses)
    ppo_micro_batch_size: int = 2  # responses per forward/backward (gradient accumulation)
    ppo_epochs: int = 1
    lr: float = 5e-7
    lr_warmup_steps: int = 0  # linear warm-up, then constant
    weight_decay: float = 0.0  # AdamW
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    use_kl_loss: bool = True  # k3 KL to the frozen reference in the loss (eq. 4)
    kl_coef: float = 0.001
    clip_ratio: float = 0.2  # PPO epsilon
    dual_clip_ratio: float = 3.0  # dual-clip bound c for negative advantages (> 1; verl's clip_ratio_c)
    loss_agg_mode: str = "token-mean"
    temperature: float = 1.0  # sampling temperature of training rollouts (and of the log-prob passes)
    val_temperature: float = 0.8
    top_p: float = 1.0
    max_response_length: int = 8192  # tokens
    steps: int = 200  # training steps (each: prompts_per_step x rollouts_per_prompt responses)
    seed: int = 0
    # exploration method (see maths.methods.METHODS)
    method: str = "grpo"
    entropy_coeff: float = 0.0  # entropy bonus coefficient (methods with uses_entropy_bonus)
    shaping: ShapingConfig = field(default_factory=ShapingConfig)  # G2RL's eq. 10-13 settings
    encoder: str = "all-MiniLM-L6-v2"  # EVOL-RL's sentence encoder (path or hub name)
    # engineering
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    feature_chunk_size: int | None = 1024  # tokens per chunk of the vocabulary pass (None: all at once)
    val_every: int = 10  # steps between validations
    val_problems: int = 32  # first N problems of val_data
    val_samples: int = 8  # samples per validation problem (mean@k)
    checkpoint_every: int = 10  # steps between checkpoints
    keep_checkpoints: int = 1  # newest checkpoints kept in <out>/checkpoints (>= 1; may change on resume)
    threads: int | None = None  # torch CPU threads (None: torch's default)
    device: str = "auto"  # torch device of policy, reference and every batch tensor ("auto": cuda if available)
    precision: str = "float32"  # "float32" or "bf16": weights and compute of policy and reference (Phi sums: float32)
    gradient_checkpointing: bool = False  # recompute decoder activations in the update's backward (HF's switch)
    log_prob_micro_batch_size: int = (
        8  # responses per no-grad forward (old policy + Phi unless below, reference); verl's name
    )
    # native engine: the old policy's log-probs, entropies and Phi come from the sampling loop's own logits
    # (the policy samples itself, float32), not from a separate no-grad pass over the batch; equal to
    # float32 rounding. Needs the transformers back-end and float32; where that loop is refused (GPU:
    # rollout.decode.fast_loop_refusal) the pass runs as usual. TRL and verl always run their own pass.
    old_policy_from_rollout: bool = False
    # experiment trackers fed every log.jsonl row and a per-step completions table: any of LOGGERS
    # (dvclive, trackio, wandb, tensorboard; [] none); g2rl_core.tracking. The pipeline's profiles use dvclive.
    loggers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_fields(self)
        _check_choice(self, "method", method_names())
        _check_choice(self, "precision", PRECISIONS)
        _check_device(self.device)
        _check_choice(self, "loss_agg_mode", ("token-mean",))
        _check_choice(self, "train_kind", ANSWER_KINDS)
        _check_choice(self, "val_kind", ANSWER_KINDS)
        _check_positive(
            self,
            "prompts_per_step",
            "rollouts_per_prompt",
            "ppo_mini_batch_size",
            "ppo_micro_batch_size",
            "ppo_epochs",
            "max_response_length",
            "steps",
            "val_every",
            "val_problems",
            "val_samples",
            "checkpoint_every",
            "keep_checkpoints",
            "temperature",
            "val_temperature",
            "lr",
            "feature_chunk_size",
            "threads",
            "log_prob_micro_batch_size",
        )
        _check_non_negative(
            self, "lr_warmup_steps", "weight_decay", "grad_clip", "kl_coef", "clip_ratio", "entropy_coeff", "seed"
        )
        _check_unit_interval(self, "top_p")
        if self.dual_clip_ratio <= 1:
            raise ConfigError(f"dual_clip_ratio = {self.dual_clip_ratio!r} must be > 1")
        if self.old_policy_from_rollout and (self.rollout.backend != "transformers" or self.precision != "float32"):
            raise ConfigError(
                f"old_policy_from_rollout needs rollout.backend: transformers and precision: float32 (got "
                f"{self.rollout.backend!r}, {self.precision!r}): vLLM reports no full distributions, and bf16 "
                "decoding and a bf16 forward pass differ by far more than rounding; set old_policy_from_rollout: false"
            )
        for name in self.loggers:
            if name not in LOGGERS or self.loggers.count(name) > 1:
                raise ConfigError(f"loggers = {list(self.loggers)}: list each of {list(LOGGERS)} at most once, or []")
        if self.prompts_per_step % self.ppo_mini_batch_size:
            raise ConfigError(
                f"ppo_mini_batch_size = {self.ppo_mini_batch_size} must divide "
                f"prompts_per_step = {self.prompts_per_step}"
            )
        if self.rollouts_per_prompt < 2 and METHODS[self.method].needs_groups:
            raise ConfigError(
                f"rollouts_per_prompt = {self.rollouts_per_prompt}: method {self.method!r} compares "
                "responses within a group; use >= 2"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class BenchmarkEval:
    """How one benchmark is evaluated: the eval defaults with the benchmark's own settings over them."""

    source: str  # a benchmark name (hub) or a JSONL path
    kind: str = "math"
    n: int = 16  # samples per problem
    ks: list[int] = field(default_factory=lambda: [1, 16])  # the k of pass@k and maj@k
    temperature: float = 0.8
    top_p: float = 1.0
    limit: int | None = None  # first N problems (None: all)
    max_new_tokens: int | None = None  # None: the profile's train.max_response_length

    def __post_init__(self) -> None:
        _check_fields(self)
        _check_choice(self, "kind", ANSWER_KINDS)
        _check_positive(self, "n", "temperature", "limit", "max_new_tokens")
        _check_unit_interval(self, "top_p")
        if not self.ks or any(k < 1 or k > self.n for k in self.ks):
            raise ConfigError(f"ks = {self.ks!r} must be a non-empty list of k with 1 <= k <= n = {self.n}")


@dataclass(frozen=True)
class EvalSpec:
    """The ``eval`` section: defaults for every benchmark, and the benchmarks by name."""

    n: int = 16
    ks: list[int] = field(default_factory=lambda: [1, 16])
    temperature: float = 0.8
    top_p: float = 1.0
    limit: int | None = None
    max_new_tokens: int | None = None
    benchmarks: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> BenchmarkEval fields

    def __post_init__(self) -> None:
        _check_fields(self)
        for name in self.benchmarks:
            self.benchmark(name)  # every entry is checked when the profile loads

    def benchmark(self, name: str, **overrides: Any) -> BenchmarkEval:
        """The settings of benchmark ``name`` (``overrides`` win, e.g. ``n`` from the command line)."""
        if name not in self.benchmarks:
            raise ConfigError(f"eval.benchmarks has no {name!r}; defined: {sorted(self.benchmarks)}")
        defaults = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "benchmarks"}
        return from_mapping(
            BenchmarkEval, {**defaults, **self.benchmarks[name], **overrides}, f"eval.benchmarks.{name}"
        )


@dataclass(frozen=True)
class GeometrySpec:
    """The ``geometry`` section: how Figure 3's groups are sampled from each trained policy."""

    source: str  # the split or benchmark to sample
    kind: str = "math"
    problems: int = 30
    samples: int = 8  # responses per problem (one group)
    temperature: float = 0.8
    top_p: float = 1.0
    encoder: str = "all-MiniLM-L6-v2"  # sentence encoder of the semantic cosines

    def __post_init__(self) -> None:
        _check_fields(self)
        _check_choice(self, "kind", ANSWER_KINDS)
        _check_positive(self, "problems", "samples", "temperature")
        _check_unit_interval(self, "top_p")


@dataclass(frozen=True)
class TinyModelConfig:
    """The embedded Qwen3's shape (``g2rl sft``)."""

    hidden_size: int = 128
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 256

    def __post_init__(self) -> None:
        _check_fields(self)
        _check_positive(self, *(f.name for f in fields(self)))


SOLUTION_FORMATS = ("steps", "answer")


@dataclass(frozen=True)
class SFTConfig:
    """The ``sft`` section (tiny, tiny-direct): the supervised warm start of the embedded base model."""

    steps: int = 600
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 30
    demo_error_rate: float = 0.15  # chance that each partial sum of a demonstration is off by one
    # what a demonstration writes: "steps" (each partial sum, then \boxed{sum}; the tiny task) or
    # "answer" (\boxed{sum} alone, its errors those of the unwritten steps; the tiny-direct task)
    solution_format: str = "steps"
    choice_fraction: float = 0.15  # share of batches of multiple-choice demonstrations
    seed: int = 0  # model initialisation and batches
    task_seed: int = 0  # the synthetic task's problems
    model: TinyModelConfig = field(default_factory=TinyModelConfig)

    def __post_init__(self) -> None:
        _check_fields(self)
        _check_positive(self, "steps", "batch_size", "lr")
        _check_non_negative(self, "warmup_steps", "seed", "task_seed")
        _check_choice(self, "solution_format", SOLUTION_FORMATS)
        for name in ("demo_error_rate", "choice_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} = {getattr(self, name)!r} must be in [0, 1]")


# --- profiles ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """One profile of params.yaml, every section typed and checked when it loads."""

    name: str
    train: dict[str, Any]  # TrainConfig fields shared by every method
    methods: dict[str, dict[str, Any]]  # per-method TrainConfig fields
    eval: EvalSpec | None = None
    geometry: GeometrySpec | None = None
    sft: SFTConfig | None = None
    engine: str = "native"  # who runs `g2rl train` (ENGINES); `g2rl train --engine` overrides it

    def train_config(self, method: str, seed: int, **overrides: Any) -> TrainConfig:
        """The run's config: ``train``, then ``methods[method]``, then ``overrides`` (nested merges)."""
        if method not in METHODS:
            raise ConfigError(f"method = {method!r} is not allowed; choose one of {list(method_names())}")
        values = deep_merge(self.train, self.methods.get(method) or {}, {"method": method, "seed": seed}, overrides)
        return from_mapping(TrainConfig, values, f"profile {self.name!r}")

    @property
    def threads(self) -> int | None:
        """``train.threads``: the one CPU thread count of every command run for this profile (None: unset)."""
        return self.train.get("threads")

    def require(self, section: str):
        value = getattr(self, section)
        if value is None:
            raise ConfigError(f"profile {self.name!r} has no {section!r} section in params.yaml")
        return value


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no parameter file at {path}; run from the repository root or pass --params PATH")
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(err, 'problem', None) or err})") from None
    if not isinstance(params, dict) or not isinstance(params.get("profiles"), dict):
        raise ConfigError(f"{path}: expected a mapping with a 'profiles' mapping")
    return params


def load_profile(name: str | None = None, params_path: str | Path = "params.yaml") -> Profile:
    """The named profile (default: params.yaml's ``profile``), with every section checked."""
    params = load_params(params_path)
    name = name or params.get("profile")
    profiles = params["profiles"]
    if name not in profiles:
        raise ConfigError(f"{params_path}: profile = {name!r} is not defined; defined profiles: {sorted(profiles)}")
    block = profiles[name]
    if not isinstance(block, dict):
        raise ConfigError(f"{params_path}: profile {name!r} must be a mapping of sections")
    where = f"{params_path}: profile {name!r}"
    sections = {"train": None, "methods": None, "eval": EvalSpec, "geometry": GeometrySpec, "sft": SFTConfig}
    for key in block:
        if key == "engine":
            if block[key] not in ENGINES:
                raise ConfigError(f"{where}: engine = {block[key]!r} is not allowed; choose one of {list(ENGINES)}")
            continue
        if key not in sections:
            raise ConfigError(f"{where} has unknown section {key!r}; allowed: {sorted([*sections, 'engine'])}")
    typed = {
        key: from_mapping(cls, block[key], f"{where} {key}") for key, cls in sections.items() if cls and key in block
    }
    methods = block.get("methods") or {}
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ConfigError(f"{where} methods: unknown method(s) {unknown}; registered: {list(method_names())}")
    engine = block.get("engine", "native")
    profile = Profile(name=name, train=block.get("train") or {}, methods=methods, engine=engine, **typed)
    for method in methods:  # every method's config is checked now, before any expensive work
        profile.train_config(method, 0)
    return profile
