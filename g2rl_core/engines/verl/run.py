"""``train_with_verl(cfg, out)``: one training run on verl, written in the run layout of the other engines.

    prepare data -> verl's main_ppo with the profile's overrides -> verl's model merger -> out/final
                                                     \\-> verl's metrics (file logger) -> out/log.jsonl

The run directory holds what ``g2rl eval``, geometry and the notebooks read from a native run:
``final/`` (Hugging Face format) and ``log.jsonl`` with the native trainer's column names
(``METRIC_MAP``), plus verl's own files (``verl/``: parquet data, checkpoints, raw metrics).
Cluster settings (``trainer.n_gpus_per_node``, ``trainer.nnodes``, extra Hydra overrides) come
from the optional top-level ``verl:`` block of params.yaml (``VerlSettings``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from g2rl_core.config import TrainConfig, _check_fields, _check_positive, from_mapping, load_params
from g2rl_core.engines.verl.data import prepare_verl_data
from g2rl_core.engines.verl.overrides import PLUGIN, PLUGIN_ENV, TRAINER_MODES, verl_overrides
from g2rl_core.errors import ConfigError, G2RLError
from g2rl_core.maths.methods import METHODS

VERL_DIR = "verl"  # verl's own files inside the run directory
METRICS_FILE = "metrics.jsonl"  # verl's FileLogger output, under VERL_DIR

#: native log column <- verl metric key (verl==0.9.1, V1 trainer with the engine workers).
METRIC_MAP = {
    "reward_mean": "critic/score/mean",  # the verifier's score (G2RLTrainer restores it after shaping)
    "response_length_mean": "response_length/mean",
    "entropy_mean": "actor/entropy",  # old-policy pass, token mean
    "kl": "actor/kl_loss",  # low_var_kl (k3), token mean, as the native "kl"
    "clip_frac": "actor/pg_clipfrac",
    "grad_norm": "actor/grad_norm",
    "loss": "actor/loss",
    "lr": "actor/lr",
    "step_time_s": "timing_s/step",
    "nu_mean": "g2rl/nu_mean",
    "nu_std": "g2rl/nu_std",
    "nu_min": "g2rl/nu_min",
    "nu_max": "g2rl/nu_max",
    "phi_cos_mean": "g2rl/phi_cos_mean",
    "phi_neg_share": "g2rl/phi_neg_share",
}


@dataclass(frozen=True)
class VerlSettings:
    """The ``verl:`` block of params.yaml: where a verl run goes (not a setting of the method)."""

    n_gpus_per_node: int = 8  # verl trainer.n_gpus_per_node
    nnodes: int = 1  # verl trainer.nnodes
    overrides: list[str] = field(default_factory=list)  # extra Hydra overrides, appended last (e.g. rollout TP)

    def __post_init__(self) -> None:
        _check_fields(self)
        _check_positive(self, "n_gpus_per_node", "nnodes")


def load_verl_settings(params_path: str | Path = "params.yaml") -> VerlSettings:
    """``VerlSettings`` from params.yaml's optional top-level ``verl:`` block (defaults when absent)."""
    block = load_params(params_path).get("verl") or {}
    return from_mapping(VerlSettings, block, f"{params_path}: verl")


def run_overrides(cfg: TrainConfig, out: Path, settings: VerlSettings, train: Path, val: Path) -> list[str]:
    """Every Hydra override of the run: the profile's (``verl_overrides``), the cluster's, and where files go."""
    return [
        *verl_overrides(cfg, train_files=str(train), val_files=str(val)),
        f"trainer.n_gpus_per_node={settings.n_gpus_per_node}",
        f"trainer.nnodes={settings.nnodes}",
        f"trainer.default_local_dir={out / VERL_DIR / 'checkpoints'}",
        "trainer.logger=[console,file]",
        "trainer.project_name=g2rl",
        f"trainer.experiment_name={cfg.method}-seed{cfg.seed}",
        *settings.overrides,
    ]


def _finite(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if value == value and abs(value) != float("inf") else None


def map_verl_metrics(step: int, data: dict, val_samples: int) -> list[dict]:
    """Rows of ``log.jsonl`` (native column names) from one line of verl's metrics log.

    A step's metrics give a ``train`` row when they hold ``critic/score/mean``; accuracy is
    (reward + 1) / 2, exact for +-1 rewards (``reward.compute_score``). Validation metrics
    (``val-core/<source>/reward/mean@<n>``, a mean +-1 reward) give a ``val`` row with
    ``val_mean_at_<val_samples>`` as an accuracy. Metrics verl does not log are left out, not zero.
    """
    rows = []
    if "critic/score/mean" in data:
        row = {"kind": "train", "step": step}
        for ours, theirs in METRIC_MAP.items():
            value = _finite(data.get(theirs))
            if value is not None:
                row[ours] = value
        if "reward_mean" in row:
            row["accuracy"] = (row["reward_mean"] + 1.0) / 2.0
        rows.append(row)
    val = [k for k in data if k.startswith("val-core/") and k.endswith(f"/reward/mean@{val_samples}")]
    if val:
        value = _finite(data[val[0]])
        if value is not None:
            rows.append({"kind": "val", "step": step, f"val_mean_at_{val_samples}": (value + 1.0) / 2.0})
    return rows


def convert_metrics_log(verl_log: Path, log: Path, val_samples: int) -> int:
    """``log.jsonl`` from verl's FileLogger lines (``{"step": s, "data": {...}}``); returns rows written.

    A torn last line (a killed run) is skipped; any other bad line is a ``G2RLError`` naming it.
    """
    lines = verl_log.read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
            rows += map_verl_metrics(int(entry["step"]), dict(entry["data"]), val_samples)
        except (ValueError, KeyError, TypeError) as err:
            if number == len(lines):
                break
            raise G2RLError(f"{verl_log}:{number}: not a verl metrics line ({err})") from None
    tmp = log.with_name(f".{log.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, log)
    return len(rows)


def latest_actor_checkpoint(checkpoints: Path) -> Path:
    """verl's newest actor checkpoint: ``<dir>/global_step_<N>/actor``, N from ``latest_checkpointed_iteration.txt``."""
    marker = checkpoints / "latest_checkpointed_iteration.txt"
    if not marker.is_file():
        raise G2RLError(f"{marker} is missing: verl wrote no checkpoint (did the run finish?)")
    step = marker.read_text().strip()
    if not step.isdigit():
        raise G2RLError(f"{marker}: expected a step number, got {step[:40]!r}")
    actor = checkpoints / f"global_step_{step}" / "actor"
    if not actor.is_dir():
        raise G2RLError(f"{actor} is missing (named by {marker})")
    return actor


def merge_command(actor: Path, target: Path) -> list[str]:
    """verl's model merger: FSDP actor shards -> a Hugging Face model directory."""
    return [sys.executable, "-m", "verl.model_merger", "merge", "--backend", "fsdp",
            "--local_dir", str(actor), "--target_dir", str(target)]  # fmt: skip


def train_with_verl(cfg: TrainConfig, out: str | Path, *, settings: VerlSettings | None = None, runner=subprocess.run):
    """Train ``cfg`` on verl into ``out`` (``final/``, ``log.jsonl``); returns ``out/final``.

    ``runner`` runs each command (``subprocess.run``'s signature); verl resumes from its own
    checkpoints in ``out/verl/checkpoints`` (``trainer.resume_mode=auto``).
    """
    if METHODS[cfg.method].verl is None:
        verl_overrides(cfg, train_files="", val_files="")  # raises the registry's refusal
    out = Path(out)
    settings = settings or load_verl_settings()
    train, val = prepare_verl_data(cfg, out / VERL_DIR / "data")
    env = {**os.environ, "VERL_FILE_LOGGER_PATH": str(out / VERL_DIR / METRICS_FILE)}
    if METHODS[cfg.method].verl in TRAINER_MODES:
        env[PLUGIN_ENV] = PLUGIN
    command = [sys.executable, "-m", "verl.trainer.main_ppo", *run_overrides(cfg, out, settings, train, val)]
    (out / VERL_DIR / "command.json").write_text(json.dumps(command, indent=1))
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    if runner(command, env=env, check=False).returncode != 0:
        raise G2RLError(f"verl's trainer failed; its command is in {out / VERL_DIR / 'command.json'}")
    actor = latest_actor_checkpoint(out / VERL_DIR / "checkpoints")
    if runner(merge_command(actor, out / "final"), env=env, check=False).returncode != 0:
        raise G2RLError(f"verl's model merger failed on {actor}")
    convert_metrics_log(out / VERL_DIR / METRICS_FILE, out / "log.jsonl", cfg.val_samples)
    return out / "final"


if __name__ == "__main__":  # python -m g2rl_core.engines.verl.run PROFILE METHOD SEED OUT
    from g2rl_core.config import load_profile

    profile, method, seed, target = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    try:
        print(train_with_verl(load_profile(profile).train_config(method, seed), target))
    except (G2RLError, ConfigError) as err:
        sys.exit(f"verl run: error: {err}")
