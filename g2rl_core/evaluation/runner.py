"""Sampling and scoring: the validation inside training and the ``g2rl eval`` runner.

``sample_and_score`` draws n responses per problem with a rollout back-end and verifies each.
``run_eval`` writes, per (model, method, seed, benchmark), a tidy samples CSV (one row per
problem and sample) and a summary CSV (one row per metric, with bootstrap CI bounds). It is
resumable: problems already complete in the samples CSV are not sampled again, and a manifest
beside the CSV (``samples_X.manifest.json``) makes sure that a resume uses the settings the CSV
was written with. ``read_samples`` reads a samples CSV with every field checked.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import numbers
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from g2rl_core.errors import ConfigError, DataError, G2RLError
from g2rl_core.evaluation.benchmarks import Problem
from g2rl_core.evaluation.metrics import bootstrap_ci, maj_at_k, pass_at_1, pass_at_k_first, pass_at_k_unbiased
from g2rl_core.evaluation.verifier import verify
from g2rl_core.runlock import run_lock

LABEL_COLUMNS = ["model", "method", "seed", "benchmark"]
MANIFEST_FORMAT = "g2rl-eval-samples/1"
_CSV_FIELD_LIMIT = 2**31 - 1  # responses can exceed the csv module's default of 131,072 characters

SAMPLE_COLUMNS = [
    "model",
    "method",
    "seed",
    "benchmark",
    "problem_id",
    "sample",
    "correct",
    "reward",
    "extracted",
    "response_tokens",
    "response",
]


@dataclass(frozen=True)
class ScoredSample:
    problem_index: int
    sample: int
    text: str
    extracted: str | None
    correct: bool
    response_tokens: int


def sample_and_score(
    backend, problems: Sequence[Problem], *, n: int, temperature: float, top_p: float, max_new_tokens: int, seed: int
) -> list[ScoredSample]:
    """n samples per problem (group layout), each verified against the problem's gold answer."""
    batch = backend.generate(
        [p.prompt for p in problems],
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
    )
    lengths = batch.response_mask.sum(1).tolist()
    out = []
    for i, text in enumerate(batch.texts):
        problem = problems[i // n]
        verdict = verify(text, problem.answer, problem.kind)
        out.append(ScoredSample(i // n, i % n, text, verdict.extracted, verdict.correct, int(lengths[i])))
    return out


def mean_accuracy(samples: Sequence[ScoredSample]) -> float:
    """mean@n: accuracy averaged over problems and samples (all problems have n samples)."""
    return sum(s.correct for s in samples) / max(1, len(samples))


def per_problem_metrics(samples: pd.DataFrame, ks: Sequence[int], *, seed: int = 0) -> pd.DataFrame:
    """Rows (problem_id, metric, value) from one run's samples of one benchmark.

    pass@1 (mean over the n samples); for every k <= n: pass@k (paper: first k samples; k > 1),
    pass@k unbiased (Chen et al.) and maj@k (ties broken with seed + the problem's position).
    """
    rows = []
    for position, (pid, group) in enumerate(samples.sort_values("sample").groupby("problem_id", sort=True)):
        correct = group["correct"].astype(bool).tolist()
        answers = [a if isinstance(a, str) else None for a in group["extracted"].tolist()]
        n = len(correct)
        rows.append((pid, "pass@1", pass_at_1(correct)))  # the paper's pass@1: mean over all n samples
        for k in ks:
            if k > n:
                continue
            if k > 1:  # for k = 1 the first-sample form would shadow the mean-over-samples pass@1
                rows.append((pid, f"pass@{k}", pass_at_k_first(correct, k)))
            rows.append((pid, f"pass@{k}_unbiased", pass_at_k_unbiased(n, sum(correct), k)))
            rows.append((pid, f"maj@{k}", maj_at_k(answers, correct, k, seed=seed + position)))
    return pd.DataFrame(rows, columns=["problem_id", "metric", "value"])


def summarize(samples: pd.DataFrame, ks: Sequence[int], *, n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Metric rows (metric, value, ci_low, ci_high, problems, samples_per_problem); CIs bootstrap over problems."""
    per_problem = per_problem_metrics(samples, ks, seed=seed)
    n_samples = int(samples.groupby("problem_id")["sample"].count().min())
    rows = []
    for metric, group in per_problem.groupby("metric", sort=False):
        mean, low, high = bootstrap_ci(group["value"].tolist(), n_resamples=n_resamples, seed=seed)
        rows.append(
            {
                "metric": metric,
                "value": mean,
                "ci_low": low,
                "ci_high": high,
                "problems": len(group),
                "samples_per_problem": n_samples,
            }
        )
    return pd.DataFrame(rows)


# --- g2rl eval: settings, manifest, samples file ---------------------------------------------------


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def validate_eval_settings(
    problems: Sequence[Problem],
    *,
    labels: dict[str, object],
    n: int,
    ks: Sequence[int],
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    problems_per_batch: int,
) -> None:
    """ConfigError (one line, naming the setting) for any setting ``run_eval`` cannot honour, before any sampling."""
    where = f"eval of {labels.get('benchmark', 'this benchmark')!s}"
    if not _is_int(n) or n < 1:
        raise ConfigError(f"{where}: n = {n!r}: the number of samples per problem must be an integer >= 1")
    if isinstance(ks, str | bytes) or not isinstance(ks, Sequence) or not ks:
        raise ConfigError(f"{where}: ks = {ks!r}: give a non-empty list of k values, each in [1, n = {n}]")
    bad = [k for k in ks if not _is_int(k) or not 1 <= k <= n]
    if bad:
        raise ConfigError(f"{where}: ks = {list(ks)!r}: {bad!r} not in [1, n = {n}]; every k needs k samples")
    if not _is_real(temperature) or temperature < 0:
        raise ConfigError(f"{where}: temperature = {temperature!r}: must be a finite number >= 0")
    if not _is_real(top_p) or not 0 < top_p <= 1:
        raise ConfigError(f"{where}: top_p = {top_p!r}: must be in (0, 1]")
    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise ConfigError(f"{where}: max_new_tokens = {max_new_tokens!r}: must be an integer >= 1")
    if not _is_int(seed) or seed < 0:
        raise ConfigError(f"{where}: seed = {seed!r}: must be an integer >= 0")
    if not _is_int(problems_per_batch) or problems_per_batch < 1:
        raise ConfigError(f"{where}: problems_per_batch = {problems_per_batch!r}: must be an integer >= 1")
    unknown = sorted(set(labels) - set(LABEL_COLUMNS))
    if unknown:
        raise ConfigError(f"{where}: labels {unknown} are not sample columns; use {LABEL_COLUMNS}")
    if not problems:
        raise ConfigError(f"{where}: no problems to evaluate (empty benchmark, or limit too small)")
    seen: set[str] = set()
    for problem in problems:
        if problem.id in seen:
            raise ConfigError(f"{where}: problem id {problem.id!r} appears twice; problem ids must be unique")
        seen.add(problem.id)


def manifest_path(samples_csv: Path) -> Path:
    """The manifest that goes with a samples CSV: ``samples_X.csv`` -> ``samples_X.manifest.json``."""
    return samples_csv.with_name(samples_csv.stem + ".manifest.json")


def _backend_identity(backend) -> dict[str, object]:
    model = getattr(backend, "model", None)
    name = getattr(model, "name_or_path", None)  # as given: an absolute path would tie the file to one machine
    return {
        "backend": type(backend).__name__,
        "model_path": name if isinstance(name, str) and name else None,
        "chat_template": getattr(backend, "chat_template", None),
    }


def eval_manifest(
    backend,
    problems: Sequence[Problem],
    *,
    labels: dict[str, object],
    n: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    problems_per_batch: int,
    identity: dict[str, object] | None = None,
) -> dict[str, object]:
    """Everything that decides which samples a run writes: a resume must match it exactly.

    The problems enter as a SHA-256 of their ids, kinds, prompts and gold answers (so the benchmark
    source, its revision and ``limit`` are covered); ``identity`` adds what the caller knows beyond
    the back-end (e.g. a model's weights digest). ``ks`` is not in it: metrics are recomputed.
    """
    digest = hashlib.sha256()
    for p in problems:
        digest.update(json.dumps([p.id, p.kind, p.prompt, p.answer]).encode() + b"\n")
    return {
        "format": MANIFEST_FORMAT,
        "labels": {key: labels[key] for key in sorted(labels)},
        **_backend_identity(backend),
        **(identity or {}),
        "n": n,
        "temperature": temperature,
        "top_p": top_p,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
        "problems_per_batch": problems_per_batch,
        "problems": len(problems),
        "problems_sha256": digest.hexdigest(),
    }


def _canonical(obj) -> object:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _check_manifest(samples_csv: Path, manifest: dict[str, object]) -> None:
    """Refuse (G2RLError) to resume into samples written with other settings, or with unknown ones."""
    path = manifest_path(samples_csv)
    if not path.exists():
        raise DataError(
            f"{samples_csv} has no manifest {path.name}, so the settings it was sampled with are unknown; "
            f"evaluate into another --out, or delete {samples_csv} to sample it again"
        )
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: unreadable manifest ({err}); delete it and {samples_csv} to start over") from None
    current = _canonical(manifest)
    if not isinstance(stored, dict):
        stored = {}
    differ = [key for key in sorted(set(stored) | set(current)) if stored.get(key) != current.get(key)]
    if differ:
        details = "; ".join(f"{key}: {stored.get(key)!r} there, {current.get(key)!r} now" for key in differ)
        raise DataError(
            f"{samples_csv} was sampled with other settings ({details}); evaluate into another --out, "
            f"or delete {samples_csv} and {path.name} to start over"
        )


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_manifest(samples_csv: Path, manifest: dict[str, object]) -> None:
    _write_atomic(manifest_path(samples_csv), lambda fh: fh.write(json.dumps(_canonical(manifest), indent=1) + "\n"))


def _read_records(path: Path) -> tuple[list[tuple[int, list[str]]], bool]:
    """(start line, fields) of every complete record after the header, and whether a torn last record
    (a write cut short by a crash) was dropped. DataError names the file and line of anything else."""
    data = path.read_bytes()
    torn = bool(data) and not data.endswith(b"\n")
    if torn:  # the bytes after the last newline are a record cut short
        data = data[: data.rfind(b"\n") + 1]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 ({err.reason}); the file is damaged, delete it") from None
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    buffer = io.StringIO(text, newline="")
    reader = csv.reader(buffer, strict=True)
    records: list[tuple[int, list[str]]] = []
    header = next(reader, None)
    if header is None:
        return records, torn
    if header != SAMPLE_COLUMNS:
        raise DataError(
            f"{path}:1: header {header!r} is not the samples header {SAMPLE_COLUMNS}; "
            f"this is not a g2rl samples file, evaluate into another --out"
        )
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            if buffer.read() == "":  # a quoted field still open at the end of the file: a torn last record
                return records, True
            raise DataError(f"{path}:{start}: malformed CSV ({err}); the file is damaged, delete it") from None
        records.append((start, fields))
    return records, torn


def read_samples(
    path: str | Path,
    *,
    n: int | None = None,
    labels: dict[str, object] | None = None,
    problem_ids: set[str] | None = None,
    with_responses: bool = False,
) -> pd.DataFrame:
    """A samples CSV, every field checked, with explicit dtypes (``correct`` is bool, ``sample`` int).

    With ``n``, ``labels`` and ``problem_ids`` the rows must also belong to that run. A torn last
    record is dropped; any other malformed row raises DataError naming the file and line.
    """
    path = Path(path)
    records, _ = _read_records(path)
    return _samples_frame(path, records, n=n, labels=labels, problem_ids=problem_ids, with_responses=with_responses)


def _samples_frame(path, records, *, n, labels, problem_ids, with_responses) -> pd.DataFrame:
    index = {name: i for i, name in enumerate(SAMPLE_COLUMNS)}
    expected_labels = {key: str(value) for key, value in (labels or {}).items()}
    columns: dict[str, list] = {name: [] for name in SAMPLE_COLUMNS if with_responses or name != "response"}
    seen: set[tuple[str, int]] = set()
    for line, fields in records:
        if len(fields) != len(SAMPLE_COLUMNS):
            raise DataError(f"{path}:{line}: {len(fields)} fields, expected {len(SAMPLE_COLUMNS)}; delete the file")
        if fields == SAMPLE_COLUMNS:
            raise DataError(f"{path}:{line}: a second header row (two runs wrote into this file); delete the file")
        row = dict(zip(SAMPLE_COLUMNS, fields))
        for key, value in expected_labels.items():
            if row[key] != value:
                raise DataError(f"{path}:{line}: {key} is {row[key]!r}, but this eval is {value!r}; use another --out")
        pid = row["problem_id"]
        if not pid or (problem_ids is not None and pid not in problem_ids):
            raise DataError(f"{path}:{line}: problem_id {pid!r} is not a problem of this eval; use another --out")
        if not re.fullmatch(r"[0-9]{1,9}", row["sample"]) or (n is not None and int(row["sample"]) >= n):
            raise DataError(f"{path}:{line}: sample {row['sample']!r} is not an integer in [0, {n or 'n'})")
        if row["correct"] not in ("0", "1"):
            raise DataError(f"{path}:{line}: correct {row['correct']!r} is not 0 or 1; the file is damaged")
        if row["reward"] != ("1.0" if row["correct"] == "1" else "-1.0"):
            raise DataError(f"{path}:{line}: reward {row['reward']!r} does not match correct {row['correct']}")
        if not re.fullmatch(r"[0-9]{1,12}", row["response_tokens"]):
            raise DataError(f"{path}:{line}: response_tokens {row['response_tokens']!r} is not an integer >= 0")
        key = (pid, int(row["sample"]))
        if key in seen:
            raise DataError(f"{path}:{line}: sample {key[1]} of problem {pid!r} appears twice; the file is damaged")
        seen.add(key)
        for name in columns:
            columns[name].append(fields[index[name]])
    frame = pd.DataFrame(columns)
    frame["sample"] = frame["sample"].astype("int64")
    frame["correct"] = frame["correct"] == "1"
    frame["reward"] = frame["reward"].astype("float64")
    frame["response_tokens"] = frame["response_tokens"].astype("int64")
    frame["extracted"] = frame["extracted"].map(lambda a: a if a != "" else None).astype(object)
    return frame


def run_eval(
    backend,
    problems: Sequence[Problem],
    *,
    samples_csv: Path,
    summary_csv: Path,
    labels: dict[str, object],
    n: int,
    ks: Sequence[int],
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    problems_per_batch: int = 8,
    identity: dict[str, object] | None = None,
) -> pd.DataFrame:
    """Evaluate one model on one benchmark; resumable through ``samples_csv``.

    ``labels`` fills the model / method / seed / benchmark columns. Settings are checked before
    anything else (ConfigError). The folder of ``samples_csv`` is locked for the whole call
    (``g2rl_core.runlock``). Beside the CSV, ``eval_manifest`` is stored; a resume with other
    settings (model, method, seed, n, temperature, top_p, max_new_tokens, problems, back-end,
    ``identity``) is refused with a one-line DataError instead of mixing samples. Problems are
    sampled in batches of ``problems_per_batch``; each finished batch is appended and flushed at
    once, so an interrupted run loses at most one batch, and a torn last row is dropped on resume.
    The seed of a batch depends only on its first problem's position, so a resumed run samples
    what an uninterrupted one would.
    """
    samples_csv, summary_csv = Path(samples_csv), Path(summary_csv)
    settings = dict(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
    validate_eval_settings(problems, labels=labels, ks=ks, problems_per_batch=problems_per_batch, **settings)
    manifest = eval_manifest(
        backend, problems, labels=labels, problems_per_batch=problems_per_batch, identity=identity, **settings
    )
    ids = {p.id for p in problems}
    with run_lock(samples_csv.parent):
        done: set[str] = set()
        if samples_csv.exists() and samples_csv.stat().st_size > 0:
            _check_manifest(samples_csv, manifest)
            records, torn = _read_records(samples_csv)
            previous = _samples_frame(samples_csv, records, n=n, labels=labels, problem_ids=ids, with_responses=False)
            counts = previous.groupby("problem_id")["sample"].nunique()
            done = set(counts[counts == n].index)
            keep = [fields for _, fields in records if fields[SAMPLE_COLUMNS.index("problem_id")] in done]
            if torn or len(keep) < len(records):  # drop a half-written batch; it is sampled again

                def rewrite(fh):
                    writer = csv.writer(fh, lineterminator="\n")
                    writer.writerow(SAMPLE_COLUMNS)
                    writer.writerows(keep)

                _write_atomic(samples_csv, rewrite)
        else:
            _write_atomic(samples_csv, lambda fh: csv.writer(fh, lineterminator="\n").writerow(SAMPLE_COLUMNS))
        _write_manifest(samples_csv, manifest)
        todo = [i for i, p in enumerate(problems) if p.id not in done]
        try:
            _sample_into(backend, problems, todo, samples_csv, labels, problems_per_batch, **settings)
        except OSError as err:
            raise G2RLError(
                f"cannot write {samples_csv} ({err.strerror}); free space or fix permissions and rerun the same "
                f"command: finished problems are kept"
            ) from None
        samples = read_samples(samples_csv, n=n, labels=labels, problem_ids=ids)
        summary = summarize(samples, ks, seed=seed)
        for key, value in reversed(labels.items()):
            summary.insert(0, key, value)
        _write_atomic(summary_csv, lambda fh: summary.to_csv(fh, index=False, lineterminator="\n"))
    return summary


def _sample_into(backend, problems, todo, samples_csv, labels, problems_per_batch, *, n, seed, **sampling) -> None:
    with samples_csv.open("a", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=SAMPLE_COLUMNS, lineterminator="\n")
        bar = tqdm(
            total=len(problems),
            initial=len(problems) - len(todo),
            desc=f"eval {labels.get('benchmark', '')}",
            unit="problem",
        )
        for start in range(0, len(todo), problems_per_batch):
            chunk = todo[start : start + problems_per_batch]
            scored = sample_and_score(
                backend, [problems[i] for i in chunk], n=n, seed=seed * 1_000_003 + chunk[0], **sampling
            )
            for s in scored:
                writer.writerow(
                    {
                        **labels,
                        "problem_id": problems[chunk[s.problem_index]].id,
                        "sample": s.sample,
                        "correct": int(s.correct),
                        "reward": 1.0 if s.correct else -1.0,
                        "extracted": s.extracted,
                        "response_tokens": s.response_tokens,
                        "response": s.text,
                    }
                )
            fh.flush()
            bar.update(len(chunk))
        bar.close()
