"""A trainer's run directory: checkpoints that cannot run code, logs that survive a kill.

Layout of a run directory ``out``::

    out/run.lock                      held while a process trains here (g2rl_core.runlock)
    out/log.jsonl                     one JSON row per train / val event
    out/checkpoints/step-00000012/
        model.safetensors             weights (safetensors: a JSON header and raw bytes, no code)
        state.pt                      step, optimiser, scheduler, RNG: torch.save, read with weights_only=True
        config.json                   the TrainConfig, so the stale-config check reads kilobytes
        manifest.json                 format, step, and the sha256 and size of each file above

Guarantees:

- Atomic: a checkpoint is written into ``checkpoints/.tmp-*`` and renamed into place only when
  complete, so a kill at any moment leaves the previous checkpoints or the new one, never a
  half-written one. Old ones are renamed to ``.trash-*`` before they are deleted. Leftovers of
  a killed process are removed at the next save or resume (under the run lock).
- Integrity: every file is checked against its sha256 before it is used; a damaged checkpoint is
  refused with one line naming the file (not silently skipped: the user decides to delete it).
- No code execution: weights are safetensors, the config and manifest JSON, and ``state.pt`` is
  read with ``torch.load(weights_only=True)``, which refuses any pickled object other than
  tensors and plain containers.
- The last ``keep`` checkpoints are kept.
- ``log.jsonl``: a torn last line (a kill in the middle of a write) is dropped on resume; a bad
  line anywhere else is an error naming the file and line.

The functions take paths, models and plain dicts; the trainer decides when to call them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from g2rl_core.errors import ConfigError, DataError, G2RLError

FORMAT = "g2rl-checkpoint/1"
CHECKPOINTS = "checkpoints"  # folder inside a run directory
LEGACY_NAME = "checkpoint.pt"  # the old one-pickle format, refused
WEIGHTS, STATE, CONFIG, MANIFEST = "model.safetensors", "state.pt", "config.json", "manifest.json"
FILES = (WEIGHTS, STATE, CONFIG)
TMP_PREFIX, TRASH_PREFIX = ".tmp-", ".trash-"
_STEP_DIR = re.compile(r"step-(\d{8,})")

# Settings that do not change what is trained: a resume may change them.
RESULT_NEUTRAL = ("keep_checkpoints", "loggers")
# A run's identity beyond its config: the digest of a local base model (``base_model_digest``).
BASE_MODEL = "base_model_sha256"
BASE_MODEL_FILES = ("config.json", "*.safetensors", "*.bin")  # what the digest covers: architecture and weights
# Per-step statistics that must be finite (``update()`` reports them).
WATCHED_STATS = ("loss", "grad_norm")


class CheckpointError(G2RLError):
    """A checkpoint that is damaged, of an old format, or not loadable: the message names the file."""


class NonFiniteError(G2RLError, FloatingPointError):
    """Training produced a non-finite loss, gradient norm or weight: the message names the step and quantity."""


# --- files ----------------------------------------------------------------------------------------
def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a kill leaves the old content or the new, never a mix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise G2RLError(f"cannot write {path}: {err.strerror or err}; free disk space or check permissions") from None
    _fsync_dir(path.parent)


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """``(step, directory)`` of every checkpoint under ``root``, oldest first (temporaries excluded)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.fullmatch(p.name)) and p.is_dir()]
    return sorted(found)


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def _discard(path: Path) -> None:
    """Remove a directory: first renamed away (atomic), then deleted."""
    trash = path.with_name(f"{TRASH_PREFIX}{path.name}-{os.getpid()}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def clean_partial(root: str | Path) -> None:
    """Delete what a killed writer left (``.tmp-*``, ``.trash-*``). Call only while holding the run lock."""
    root = Path(root)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
                shutil.rmtree(p, ignore_errors=True)


def check_keep(keep: int) -> None:
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ConfigError(f"keep_checkpoints = {keep!r} must be an integer >= 1 (the number of checkpoints kept)")


def prune_checkpoints(root: str | Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints; returns the deleted directories."""
    check_keep(keep)
    old = [p for _, p in list_checkpoints(root)[:-keep]]
    for p in old:
        _discard(p)
    return old


def remove_checkpoints(root: str | Path) -> None:
    """Delete every checkpoint under ``root`` (and ``root``)."""
    root = Path(root)
    if root.is_dir():
        _discard(root)


# --- RNG ------------------------------------------------------------------------------------------
def capture_rng() -> dict[str, Any]:
    """Python, NumPy, torch (and initialised CUDA) generator states, as tensors and plain values."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- save -----------------------------------------------------------------------------------------
def save_checkpoint(
    root: str | Path, step: int, model: torch.nn.Module, state: dict[str, Any], config: dict[str, Any], keep: int
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically, then keep the ``keep`` newest.

    ``state`` (optimiser, scheduler, RNG, ...) must hold only tensors and plain containers, as
    ``torch.load(weights_only=True)`` will read it. Returns the checkpoint's directory.
    """
    check_keep(keep)
    root = Path(root)
    final = root / checkpoint_name(step)
    tmp = root / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        clean_partial(root)
        tmp.mkdir()
        save_model(model, str(tmp / WEIGHTS))
        torch.save({**state, "step": step}, tmp / STATE)
        (tmp / CONFIG).write_text(json.dumps(config, indent=1, sort_keys=True))
        files = {name: {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size} for name in FILES}
        (tmp / MANIFEST).write_text(json.dumps({"format": FORMAT, "step": step, "files": files}, indent=1))
        for name in (*FILES, MANIFEST):
            _fsync_file(tmp / name)
        _fsync_dir(tmp)
        if final.exists():  # the same step written again (e.g. the last step of a finished run)
            _discard(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"cannot write checkpoint {final}: {err.strerror or err}; free disk space or check permissions, "
            "then run the same command again to resume"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune_checkpoints(root, keep)
    return final


# --- load -----------------------------------------------------------------------------------------
def _remedy(path: Path) -> str:
    older = [p for _, p in list_checkpoints(path.parent) if p != path]
    if older:
        return f"delete {path} to resume from {older[-1].name}, or use a new --out"
    return f"delete {path} to start afresh, or use a new --out"


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of checkpoint directory ``path``, checked for format, step and file names."""
    path = Path(path)
    file = path / MANIFEST
    try:
        manifest = json.loads(file.read_text())
        ok = (
            manifest["format"] == FORMAT
            and isinstance(manifest["step"], int)
            and set(manifest["files"]) == set(FILES)
            and all(isinstance(v["sha256"], str) and isinstance(v["bytes"], int) for v in manifest["files"].values())
        )
    except FileNotFoundError:
        raise CheckpointError(f"{file} is missing: the checkpoint is incomplete; {_remedy(path)}") from None
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise CheckpointError(f"{file} is not a {FORMAT} manifest: the checkpoint is damaged; {_remedy(path)}")
    m = _STEP_DIR.fullmatch(path.name)
    if m and int(m.group(1)) != manifest["step"]:
        raise CheckpointError(
            f"{file} says step {manifest['step']} but the folder is {path.name}: the checkpoint is damaged; "
            f"{_remedy(path)}"
        )
    return manifest


def verify_checkpoint(path: str | Path, names: Iterable[str] = FILES) -> dict[str, Any]:
    """Check the size and sha256 of ``names`` in checkpoint ``path`` against its manifest; returns the manifest."""
    path = Path(path)
    manifest = read_manifest(path)
    for name in names:
        file, expected = path / name, manifest["files"][name]
        if not file.is_file():
            raise CheckpointError(f"checkpoint file {file} is missing; {_remedy(path)}")
        if file.stat().st_size != expected["bytes"] or sha256_file(file) != expected["sha256"]:
            raise CheckpointError(
                f"checkpoint file {file} fails its sha256 check against {MANIFEST}: it is damaged; {_remedy(path)}"
            )
    return manifest


def base_model_digest(model: str) -> str | None:
    """sha256 over a local model directory's ``BASE_MODEL_FILES`` (names and contents); None for a hub name.

    A base model rebuilt at the same path (``g2rl sft`` with other settings, then ``dvc repro``)
    leaves the config as it was, so a finished run would resume at its last step and keep the
    policy trained from the old base; the digest makes that run stale. Records beside the weights
    (``sft_summary.json``'s wall time) are left out, so a rebuild with the same weights is the same base.
    """
    path = Path(model)
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    for f in sorted({f for pattern in BASE_MODEL_FILES for f in path.glob(pattern) if f.is_file()}):
        digest.update(f"{f.name}\0{sha256_file(f)}\n".encode())
    return digest.hexdigest()


def run_identity(cfg) -> dict[str, Any]:
    """What a run directory records to recognise its run: the config's fields and the base model's digest."""
    return cfg.to_dict() | {BASE_MODEL: base_model_digest(cfg.model)}


def run_differences(saved: dict[str, Any], cfg) -> list[str]:
    """``config_differences``, plus ``BASE_MODEL`` when the base model's digest differs from the one
    ``saved`` recorded (a record without one, from before digests, counts as different)."""
    changed = config_differences(saved, cfg, ignore=(*RESULT_NEUTRAL, BASE_MODEL))
    recorded = saved.get(BASE_MODEL) if isinstance(saved, dict) else None
    return changed + [BASE_MODEL] if recorded != base_model_digest(cfg.model) else changed


def read_config(path: str | Path) -> dict[str, Any]:
    """The config a checkpoint was written with: reads (and checks) only the small sidecar JSON."""
    path = Path(path)
    verify_checkpoint(path, [CONFIG])
    return json.loads((path / CONFIG).read_text())


def config_differences(saved: dict[str, Any], current, ignore: Iterable[str] = RESULT_NEUTRAL) -> list[str]:
    """Names of the fields of ``current`` (a config dataclass) and ``saved`` whose values differ (compared as
    JSON, so tuples equal lists).

    A field that ``saved`` lacks was added after the checkpoint was written; it counts as the field's
    default, since a new setting's default is what the code did before the setting existed.
    """
    if not isinstance(saved, dict):  # a damaged sidecar matches nothing
        saved = {}
    saved = json.loads(json.dumps(type(current)().to_dict())) | saved
    current = json.loads(json.dumps(current.to_dict()))
    missing = object()
    keys = (set(saved) | set(current)) - set(ignore)
    return sorted(k for k in keys if saved.get(k, missing) != current.get(k, missing))


def load_checkpoint(path: str | Path, model: torch.nn.Module) -> dict[str, Any]:
    """Verify checkpoint ``path``, load its weights into ``model`` and return its state (step, optimiser, ...).

    Nothing here unpickles arbitrary objects: ``state.pt`` is read with ``weights_only=True``.
    """
    path = Path(path)
    manifest = verify_checkpoint(path)
    try:
        load_model(model, str(path / WEIGHTS), strict=True)
    except Exception as err:  # noqa: BLE001 - safetensors and torch raise several types; all mean "does not fit"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path / WEIGHTS} does not fit this model ({first}); use a new --out") from None
    try:
        state = torch.load(path / STATE, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an UnpicklingError for foreign objects, others for damaged files
        raise CheckpointError(
            f"{path / STATE} holds objects other than tensors and plain data, which g2rl never writes; "
            "refused without running them: delete the checkpoint or use a new --out"
        ) from None
    if not isinstance(state, dict) or state.get("step") != manifest["step"]:
        raise CheckpointError(f"{path / STATE} does not hold the state of step {manifest['step']}; {_remedy(path)}")
    return state


# --- the log --------------------------------------------------------------------------------------
def _log_lines(path: Path) -> list[tuple[dict[str, Any], bytes]]:
    """``(row, raw line)`` of each complete row; a torn last line is dropped, any other bad line is an error."""
    lines = path.read_bytes().split(b"\n")
    complete, tail = lines[:-1], lines[-1]  # tail: bytes after the last newline (a torn write), usually b""
    out = []
    for number, raw in enumerate(complete, 1):
        try:
            row = json.loads(raw)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError
        except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if number == len(complete) and not tail.strip():
                break  # the last line, newline included, but garbled (e.g. zeros after a crash): torn
            raise DataError(
                f"{path}:{number}: not a JSON object with an integer 'step'; the log is damaged: "
                "delete that line (or the run directory) and run again"
            ) from None
        out.append((row, raw))
    return out


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``log.jsonl``, without a torn last line."""
    return [row for row, _ in _log_lines(Path(path))]


def truncate_log(path: str | Path, step: int) -> int:
    """Keep the rows with ``step <= step`` (a resumed run writes the later ones again); atomic. Returns the count."""
    path = Path(path)
    kept = [raw for row, raw in _log_lines(path) if row["step"] <= step]
    atomic_write_bytes(path, b"".join(raw + b"\n" for raw in kept))
    return len(kept)


# --- non-finite training --------------------------------------------------------------------------
def non_finite_stats(row: dict[str, Any], keys: Iterable[str] = WATCHED_STATS) -> list[str]:
    """The ``keys`` present in ``row`` whose values are not finite numbers."""
    return [k for k in keys if k in row and not (isinstance(row[k], (int, float)) and math.isfinite(row[k]))]


def first_non_finite_parameter(named_parameters: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first parameter holding a NaN or an infinity (one device sync in all), or None."""
    names, finite = [], []
    with torch.no_grad():
        for name, p in named_parameters:
            names.append(name)
            finite.append(torch.isfinite(p).all())
    if not names:
        return None
    flags = torch.stack([f.to(finite[0].device) for f in finite]).cpu()
    if bool(flags.all()):
        return None
    return names[int((~flags).nonzero()[0])]


def raise_if_non_finite(row: dict[str, Any], model: torch.nn.Module, last_checkpoint: Path | None) -> None:
    """Raise ``NonFiniteError`` if ``row``'s loss or gradient norm, or any weight of ``model``, is not finite."""
    where = f"the last checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written"
    step = row.get("step")
    bad = non_finite_stats(row)
    if bad:
        values = ", ".join(f"{k} = {row[k]}" for k in bad)
        raise NonFiniteError(
            f"step {step}: {values} is not finite; the run stopped before checkpointing ({where}); "
            "lower lr or check grad_clip, kl_coef, lam and entropy_coeff"
        )
    name = first_non_finite_parameter(model.named_parameters())
    if name is not None:
        raise NonFiniteError(
            f"step {step}: parameter {name} is not finite after the update (loss and grad_norm were finite); "
            f"the run stopped before checkpointing ({where}); lower lr or check grad_clip"
        )


def legacy_checkpoint_error(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path} is a checkpoint in the old one-pickle format, which g2rl no longer loads (unpickling can run "
        "code); delete it to start this run afresh, or use a new --out"
    )
