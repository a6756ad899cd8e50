"""Same machine, same software, same command: the same bits (issue 18).

A short pipeline (train, then eval of the trained policy) runs twice in fresh processes on 2 threads, with the
pinned CPU environment that ``scripts/repro.sh`` sets; every output file must be byte-identical,
except the two records of time: ``run_info.json`` (wall time) and the step timings in ``log.jsonl``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from g2rl_core.provenance import PINNED_CPU_ENV, RUN_INFO, can_pin

REPO = Path(__file__).resolve().parents[1]
TIMING_KEYS = {"step_time_s", "tokens_per_s"}


def _pipeline(params: Path, root: Path, seed: int = 0) -> None:
    """``g2rl train`` then ``g2rl eval`` of its policy, run inside ``root`` with relative paths (as DVC does)."""
    root.mkdir(parents=True)
    # no pins from outside: the commands pin the CPU paths themselves (provenance.pin_cpu_paths)
    env = {key: value for key, value in os.environ.items() if key not in PINNED_CPU_ENV} | {"PYTHONPATH": str(REPO)}
    base = [sys.executable, "-m", "g2rl_core.pipeline.cli", "--params", str(params), "--threads", "2"]
    train = ["train", "--method", "g2rl", "--seed", str(seed), "--out", "run"]
    train += ["--set", "steps=3", "val_every=2", "threads=2"]  # 2 threads, as the tiny profile
    evaluate = ["eval", "--model", "run/final", "--method", "g2rl", "--limit", "3", "--out", "eval"]
    for command in (train, evaluate):
        subprocess.run([*base, *command], cwd=root, check=True, capture_output=True, env=env, timeout=600)


def _contents(root: Path) -> dict[str, bytes]:
    """Every output file's bytes; ``log.jsonl`` without its step timings. Trackers' folders (views of
    ``log.jsonl`` with their own timestamps) and the run lock are left out."""
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.name in (RUN_INFO, "run.lock") or {"dvclive", "tensorboard", "wandb"} & set(path.parts):
            continue
        data = path.read_bytes()
        if path.name == "log.jsonl":
            rows = [json.loads(line) for line in data.decode().splitlines()]
            data = json.dumps([{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]).encode()
        files[str(path.relative_to(root))] = data
    return files


def test_a_short_pipeline_run_twice_gives_identical_files(tiny_base, tmp_path):
    params = tiny_base / "params.yaml"
    for name, seed in [("first", 0), ("second", 0), ("other_seed", 1)]:
        _pipeline(params, tmp_path / name, seed=seed)
    first, second = _contents(tmp_path / "first"), _contents(tmp_path / "second")
    assert first.keys() == second.keys()
    assert "run/final/model.safetensors" in first and any(name.startswith("eval/samples_") for name in first)
    differing = [name for name in first if first[name] != second[name]]
    assert not differing, f"files that differ between two identical runs: {differing}"
    info = json.loads((tmp_path / "first" / "run" / RUN_INFO).read_text())
    assert info["command"] == "train" and info["threads"] == 2
    assert info["pinned_env"] == (PINNED_CPU_ENV if can_pin() else dict.fromkeys(PINNED_CPU_ENV))
    # the comparison can fail: another seed is another run
    other = _contents(tmp_path / "other_seed")
    assert other["run/final/model.safetensors"] != first["run/final/model.safetensors"]
