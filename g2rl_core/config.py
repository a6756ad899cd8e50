"""Typed, validated run configuration, and the profiles of params.yaml.

``params.yaml`` holds one block per profile (``tiny``, ``paper-1.7b``, ``paper-4b``); the
top-level ``profile`` key selects the one ``dvc repro`` runs. A profile has ``sft`` (tiny
only), ``train`` (every ``TrainConfig`` field, the Table 3 values verbatim for the paper
profiles), ``methods`` (per-method settings) and ``eval``. Every error names the field,
the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from g2rl_core.errors import ConfigError
from g2rl_core.maths.shaping import NU_NORMALIZATIONS, SHAPING_VARIANTS

METHOD_NAMES = ("grpo", "entropy", "evol", "g2rl")
ROLLOUT_BACKENDS = ("transformers", "vllm")


@dataclass(frozen=True)
class TrainConfig:
    # model and data
    model: str = "build/tiny/base"  # path or hub name, loaded with from_pretrained
    train_data: str = "build/tiny/data/train.jsonl"  # a benchmark name or a JSONL path
    train_kind: str = "math"
    val_data: str = "build/tiny/data/hard.jsonl"
    val_kind: str = "math"
    data_dir: str | None = None  # local copies of the named benchmarks (None: the hub)
    chat_template: bool = False
    # Table 3
    prompts_per_step: int = 16
    rollouts_per_prompt: int = 16
    ppo_mini_batch_size: int = 1  # prompts per optimiser step (verl: x rollouts_per_prompt responses)
    ppo_micro_batch_size: int = 2  # responses per forward/backward
    ppo_epochs: int = 1
    lr: float = 5e-7
    lr_warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    use_kl_loss: bool = True
    kl_coef: float = 0.001  # low-variance (k3) KL to the frozen reference
    clip_ratio: float = 0.2
    loss_agg_mode: str = "token-mean"
    temperature: float = 1.0
    val_temperature: float = 0.8
    top_p: float = 1.0
    max_response_length: int = 8192
    steps: int = 200
    seed: int = 0
    # exploration method
    method: str = "grpo"
    entropy_coeff: float = 0.0  # used by "entropy"
    lam: float = 1.0  # g2rl
    variant: str = "equation"  # g2rl: "equation" | "centered"
    normalize: str = "minmax"  # g2rl: "minmax" | "none"
    shaping_clip: float = 3.0  # g2rl: c of section 2.5
    encoder: str = "all-MiniLM-L6-v2"  # evol: sentence encoder (path or name)
    # engineering
    rollout: str = "transformers"
    rollout_batch_size: int = 256
    feature_chunk_size: int | None = 1024
    val_every: int = 10
    val_problems: int = 32
    val_samples: int = 8
    checkpoint_every: int = 10
    keep_checkpoints: int = 1  # newest checkpoints kept in <out>/checkpoints (>= 1; may change on resume)
    threads: int | None = None

    def __post_init__(self) -> None:
        _check_types(self)
        choices = {
            "method": METHOD_NAMES,
            "rollout": ROLLOUT_BACKENDS,
            "variant": SHAPING_VARIANTS,
            "normalize": NU_NORMALIZATIONS,
            "loss_agg_mode": ("token-mean",),
            "train_kind": ("math", "choice"),
            "val_kind": ("math", "choice"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} = {getattr(self, name)!r} is not allowed; choose one of {list(allowed)}")
        positive = [
            "prompts_per_step",
            "rollouts_per_prompt",
            "ppo_mini_batch_size",
            "ppo_micro_batch_size",
            "ppo_epochs",
            "max_response_length",
            "steps",
            "rollout_batch_size",
            "val_every",
            "val_problems",
            "val_samples",
            "checkpoint_every",
            "temperature",
            "val_temperature",
            "lr",
        ]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} = {getattr(self, name)!r} must be > 0")
        non_negative = ["lr_warmup_steps", "weight_decay", "grad_clip", "kl_coef", "clip_ratio", "entropy_coeff", "lam"]
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} = {getattr(self, name)!r} must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p = {self.top_p!r} must be in (0, 1]")
        if self.prompts_per_step % self.ppo_mini_batch_size:
            raise ConfigError(
                f"ppo_mini_batch_size = {self.ppo_mini_batch_size} must divide "
                f"prompts_per_step = {self.prompts_per_step}"
            )
        if self.rollouts_per_prompt < 2 and self.method in ("g2rl", "evol"):
            raise ConfigError(
                f"rollouts_per_prompt = {self.rollouts_per_prompt}: method {self.method!r} compares "
                "responses within a group; use >= 2"
            )


def _check_types(cfg: Any) -> None:
    hints = typing.get_type_hints(type(cfg))
    for f in fields(cfg):
        value, hint = getattr(cfg, f.name), hints[f.name]
        allowed = typing.get_args(hint) or (hint,)
        allowed = tuple(type(None) if a is None else a for a in allowed)
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(cfg, f.name, float(value))
            continue
        if isinstance(value, bool) and bool not in allowed:
            ok = False
        else:
            ok = isinstance(value, allowed)
        if not ok:
            names = " or ".join("null" if a is type(None) else a.__name__ for a in allowed)
            raise ConfigError(f"{f.name} = {value!r} has type {type(value).__name__}; expected {names}")


def from_mapping(cls: type, values: dict[str, Any], where: str = "config"):
    """Build a config dataclass from a mapping; unknown keys are errors that list the known ones."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known fields: {sorted(known)}")
    try:
        return cls(**values)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["lr=1e-6", "method=g2rl"]`` -> typed values (parsed as YAML scalars)."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} must look like field=value")
        key, raw = pair.split("=", 1)
        value = yaml.safe_load(raw)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        out[key.strip()] = value
    return out


@dataclass(frozen=True)
class Profile:
    name: str
    train: dict[str, Any]
    methods: dict[str, dict[str, Any]]
    sft: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    geometry: dict[str, Any] = field(default_factory=dict)

    def train_config(self, method: str, seed: int, **overrides: Any) -> TrainConfig:
        if method not in METHOD_NAMES:
            raise ConfigError(f"method = {method!r} is not allowed; choose one of {list(METHOD_NAMES)}")
        values = {**self.train, **self.methods.get(method, {}), "method": method, "seed": seed, **overrides}
        return from_mapping(TrainConfig, values, f"profile {self.name!r}")


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no parameter file at {path}; run from the repository root or pass --params PATH")
    with path.open() as fh:
        params = yaml.safe_load(fh)
    if not isinstance(params, dict) or "profiles" not in params:
        raise ConfigError(f"{path}: expected a mapping with a 'profiles' key")
    return params


def load_profile(name: str | None = None, params_path: str | Path = "params.yaml") -> Profile:
    """The named profile (default: params.yaml's ``profile``)."""
    params = load_params(params_path)
    name = name or params.get("profile")
    profiles = params["profiles"]
    if name not in profiles:
        raise ConfigError(f"{params_path}: profile = {name!r} is not defined; defined profiles: {sorted(profiles)}")
    block = dict(profiles[name])
    allowed = {f.name for f in dataclasses.fields(Profile)} - {"name"}
    unknown = sorted(set(block) - allowed)
    if unknown:
        raise ConfigError(
            f"{params_path}: profile {name!r} has unknown section(s) {unknown}; allowed: {sorted(allowed)}"
        )
    return Profile(name=name, **block)
