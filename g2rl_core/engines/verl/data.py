"""verl's parquet files for a profile's training and validation sets (``g2rl prepare-data --format verl``).

One row per problem, in the columns verl's ``RLHFDataset`` and reward loop read (verl==0.9.1):

- ``data_source``: the set's name (a benchmark name, or the JSONL file's stem); verl groups its
  validation metrics by it;
- ``prompt``: ``rollout.batch.prompt_messages(problem.prompt)``, the chat messages every engine
  renders with the tokenizer's chat template (so verl sees the native engine's prompt tokens);
- ``ability``: the answer kind ("math" or "choice");
- ``reward_model``: ``{"style": "rule", "ground_truth": problem.answer}``;
- ``extra_info``: ``{"split", "index", "id", "kind"}``; ``kind`` tells ``reward.compute_score``
  how to verify.

Problems come from ``evaluation.benchmarks.load_problems``, the loader of the other engines;
the validation set is the first ``val_problems`` of ``val_data``, as in the native trainer.
"""

from __future__ import annotations

import os
from pathlib import Path

from g2rl_core.config import TrainConfig
from g2rl_core.errors import ConfigError
from g2rl_core.evaluation.benchmarks import Problem, load_problems
from g2rl_core.rollout.batch import prompt_messages

TRAIN_FILE = "train.parquet"
VAL_FILE = "val.parquet"
COLUMNS = ("data_source", "prompt", "ability", "reward_model", "extra_info")


def source_name(source: str) -> str:
    """``data_source`` of a set: the benchmark name, or a JSONL path's stem."""
    return Path(source).stem if source.endswith(".jsonl") else source


def verl_rows(problems: list[Problem], data_source: str, split: str) -> list[dict]:
    """verl's rows for ``problems`` (pure: no I/O)."""
    return [
        {
            "data_source": data_source,
            "prompt": prompt_messages(p.prompt),
            "ability": p.kind,
            "reward_model": {"style": "rule", "ground_truth": p.answer},
            "extra_info": {"split": split, "index": i, "id": p.id, "kind": p.kind},
        }
        for i, p in enumerate(problems)
    ]


def write_parquet(rows: list[dict], path: Path) -> Path:
    """``rows`` as a parquet file at ``path``, written to a temporary name then renamed."""
    import pandas as pd

    if not rows:
        raise ConfigError(f"{path}: no problems to write; check train_data / val_data and data_dir")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pd.DataFrame(rows, columns=list(COLUMNS)).to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


def prepare_verl_data(cfg: TrainConfig, out: str | Path) -> tuple[Path, Path]:
    """Write ``out/train.parquet`` (all of ``train_data``) and ``out/val.parquet`` (the first
    ``val_problems`` of ``val_data``); returns their paths."""
    out = Path(out)
    train = load_problems(cfg.train_data, cfg.train_kind, cfg.data_dir)
    val = load_problems(cfg.val_data, cfg.val_kind, cfg.data_dir, limit=cfg.val_problems)
    return (
        write_parquet(verl_rows(train, source_name(cfg.train_data), "train"), out / TRAIN_FILE),
        write_parquet(verl_rows(val, source_name(cfg.val_data), "val"), out / VAL_FILE),
    )
