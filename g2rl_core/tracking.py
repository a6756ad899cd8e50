"""Experiment trackers: every per-step log row, and a per-step table of sampled completions, to each logger.

``TrainConfig.loggers`` names the trackers (any of ``LOGGERS``; empty: none, only ``log.jsonl``).
``log.jsonl`` stays the record the pipeline reads; trackers are views of it:

- ``dvclive``: ``<out>/dvclive`` (``metrics.json`` the latest values, ``plots/metrics/<kind>/<key>.tsv``
  the curves, ``completions/step_NNNNNN.json`` the tables). DVC reads it (``dvc metrics show``,
  ``dvc plots show``). Rebuilt from ``log.jsonl`` on resume, so a killed and resumed run ends with
  the same files as an uninterrupted one.
- ``tensorboard``: ``<out>/tensorboard`` (needs the ``tensorboard`` package); events past the resumed
  step are purged.
- ``trackio``: local SQLite under ``$TRACKIO_DIR`` (default ``$HF_HOME/trackio``), project ``g2rl``;
  resumes the run of the same name.
- ``wandb``: ``<out>/wandb`` (offline unless you are logged in, ``WANDB_MODE``); resumes the run id.

Trackers never touch the random generators (``preserve_rng``), so they cannot change what is trained.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from g2rl_core.config import LOGGERS
from g2rl_core.errors import ConfigError
from g2rl_core.maths.shaping import ShapingConfig, exploration_scores, shape_rewards

_PACKAGE = {"dvclive": "dvclive", "trackio": "trackio", "wandb": "wandb", "tensorboard": "tensorboard"}
COMPLETION_COLUMNS = (
    "step",
    "prompt",
    "completion",
    "answer",
    "reward",
    "nu",
    "shaped_reward",
    "advantage",
)


def check_loggers(names: Sequence[str]) -> tuple[str, ...]:
    """Validate ``TrainConfig.loggers``: known names, no repeats (``ConfigError`` naming the bad one)."""
    for name in names:
        if name not in LOGGERS:
            raise ConfigError(f"loggers: {name!r} is not a tracker; choose any of {list(LOGGERS)} or [] for none")
    if len(set(names)) != len(names):
        raise ConfigError(f"loggers = {list(names)} names a tracker twice; list each once")
    return tuple(names)


@contextlib.contextmanager
def preserve_rng() -> Iterator[None]:
    """Restore the Python, NumPy and torch CPU generators on exit (a tracker may draw from them)."""
    state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])


def completions_table(
    step: int,
    prompts: Sequence[str],
    answers: Sequence[str],
    texts: Sequence[str],
    rewards: torch.Tensor,
    phi: torch.Tensor | None,
    advantages: torch.Tensor,
    shaping: ShapingConfig,
) -> list[dict[str, Any]]:
    """One row per sampled completion of a step (as TRL's ``log_completions``).

    ``rewards`` [G, m] are the verifier's r_i, ``phi`` [G, m, d] the sequence features (eq. 5-6),
    ``advantages`` [G, m] what the run's method used. ``nu`` is G2RL's exploration score (eq. 9) and
    ``shaped_reward`` the G2RL-shaped reward of eq. 10-13 under ``shaping``, computed for every method
    so that runs can be compared; only the ``g2rl`` method trains on them. ``phi=None`` (an engine that
    did not compute Phi for this method, e.g. TRL for grpo) leaves ``nu`` and ``shaped_reward`` None.
    """
    G, m = rewards.shape
    nu = shaped = None
    if phi is not None:
        nu = exploration_scores(phi, rewards).reshape(-1)
        shaped = shape_rewards(rewards, nu.view(G, m), **shaping.kwargs()).reshape(-1)
    return [
        {
            "step": step,
            "prompt": prompts[i // m],
            "completion": texts[i],
            "answer": answers[i // m],
            "reward": float(rewards.view(-1)[i]),
            "nu": None if nu is None else float(nu[i]),
            "shaped_reward": None if shaped is None else float(shaped[i]),
            "advantage": float(advantages.reshape(-1)[i]),
        }
        for i in range(G * m)
    ]


def _scalars(row: dict[str, Any]) -> dict[str, float]:
    """The numeric fields of a log row, keyed ``<kind>/<name>`` (``step`` and ``kind`` left out)."""
    kind = row.get("kind", "train")
    return {
        f"{kind}/{key}": float(value)
        for key, value in row.items()
        if key not in ("kind", "step") and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def _import(name: str):
    try:
        return __import__(_PACKAGE[name])
    except ImportError:
        raise ConfigError(
            f"loggers: {name!r} needs the {_PACKAGE[name]} package; pip install {_PACKAGE[name]} "
            f"(or pip install 'g2rl_core[pipeline]'), or remove {name!r} from train.loggers"
        ) from None


class _DVCLive:
    def __init__(self, out: Path, run_name: str, config: dict, history: list[dict], resume_step: int):
        from dvclive import Live

        self.dir = out / "dvclive"
        # dvcyaml=None: never rewrite the repository's dvc.yaml; save_dvc_exp=False: no git commits from a stage
        self.live = Live(str(self.dir), resume=False, report=None, save_dvc_exp=False, dvcyaml=None)
        self.live.log_params(_flat(config))
        completions = self.dir / "completions"
        for path in completions.glob("step_*.json") if completions.is_dir() else ():
            if int(path.stem.removeprefix("step_")) > resume_step:
                path.unlink()
        for row in history:
            self.log_row(row)

    def log_row(self, row: dict) -> None:
        self.live.step = int(row["step"])
        for key, value in _scalars(row).items():
            self.live.log_metric(key, value)
        self.live.make_summary()

    def log_completions(self, step: int, rows: list[dict]) -> None:
        path = self.dir / "completions" / f"step_{step:06d}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows))
        tmp.replace(path)

    def close(self) -> None:
        self.live.end()


class _Trackio:
    def __init__(self, out: Path, run_name: str, config: dict, history: list[dict], resume_step: int):
        import trackio

        self.trackio = trackio
        self.run = trackio.init(project="g2rl", name=run_name, config=config, resume="allow", embed=False)

    def log_row(self, row: dict) -> None:
        self.trackio.log(_scalars(row), step=int(row["step"]))

    def log_completions(self, step: int, rows: list[dict]) -> None:
        table = self.trackio.Table(
            columns=list(COMPLETION_COLUMNS), data=[[r[c] for c in COMPLETION_COLUMNS] for r in rows]
        )
        self.trackio.log({"completions": table}, step=step)

    def close(self) -> None:
        self.trackio.finish()


class _WandB:
    def __init__(self, out: Path, run_name: str, config: dict, history: list[dict], resume_step: int):
        import wandb

        self.wandb = wandb
        run_id = re.sub(r"[^A-Za-z0-9_-]", "-", run_name)
        self.run = wandb.init(project="g2rl", name=run_name, id=run_id, resume="allow", config=config, dir=str(out))

    def log_row(self, row: dict) -> None:
        self.run.log(_scalars(row), step=int(row["step"]))

    def log_completions(self, step: int, rows: list[dict]) -> None:
        table = self.wandb.Table(
            columns=list(COMPLETION_COLUMNS), data=[[r[c] for c in COMPLETION_COLUMNS] for r in rows]
        )
        self.run.log({"completions": table}, step=step)

    def close(self) -> None:
        self.run.finish()


class _TensorBoard:
    def __init__(self, out: Path, run_name: str, config: dict, history: list[dict], resume_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)

    def log_row(self, row: dict) -> None:
        for key, value in _scalars(row).items():
            self.writer.add_scalar(key, value, int(row["step"]))

    def log_completions(self, step: int, rows: list[dict]) -> None:
        header = "| " + " | ".join(COMPLETION_COLUMNS) + " |\n|" + "---|" * len(COMPLETION_COLUMNS) + "\n"
        body = "".join("| " + " | ".join(_cell(r[c]) for c in COMPLETION_COLUMNS) + " |\n" for r in rows)
        self.writer.add_text("completions", header + body, step)

    def close(self) -> None:
        self.writer.close()


def _cell(value: Any) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _flat(config: dict, prefix: str = "") -> dict[str, Any]:
    """Nested config as ``a.b`` keys with scalar values (lists as JSON)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, name + "."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value)
        else:
            flat[name] = value
    return flat


_TRACKERS = {"dvclive": _DVCLive, "trackio": _Trackio, "wandb": _WandB, "tensorboard": _TensorBoard}


class Trackers:
    """The run's trackers, called together; each call leaves the random generators as they were."""

    def __init__(self, trackers: Iterable[Any] = ()):
        self.trackers = list(trackers)

    def log_row(self, row: dict) -> None:
        with preserve_rng():
            for tracker in self.trackers:
                tracker.log_row(row)

    def log_completions(self, step: int, rows: list[dict]) -> None:
        with preserve_rng():
            for tracker in self.trackers:
                tracker.log_completions(step, rows)

    def close(self) -> None:
        with preserve_rng():
            for tracker in self.trackers:
                tracker.close()

    def __bool__(self) -> bool:
        return bool(self.trackers)


def open_trackers(
    names: Sequence[str], out: str | Path, *, run_name: str, config: dict, history: list[dict], resume_step: int = 0
) -> Trackers:
    """Open the trackers ``names`` for run directory ``out``.

    ``history`` are the log rows already in ``log.jsonl`` (after a resume truncated it to ``resume_step``):
    trackers that keep their files in ``out`` (dvclive) are rebuilt from them.
    """
    check_loggers(names)
    for name in names:
        _import(name)
    out = Path(out)
    with preserve_rng():
        return Trackers(_TRACKERS[name](out, run_name, config, history, resume_step) for name in names)


def read_log(path: str | Path) -> list[dict]:
    """The rows of a ``log.jsonl`` (empty when it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def remove_tracker_files(out: str | Path) -> None:
    """Delete the trackers' files in run directory ``out`` (with a stale checkpoint)."""
    for sub in ("dvclive", "tensorboard"):
        shutil.rmtree(Path(out) / sub, ignore_errors=True)
