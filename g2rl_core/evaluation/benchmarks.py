"""Benchmark loaders: MATH-500, AMC23, AIME24, AIME25, GPQA-Diamond, MMLU-Pro and MATH train.

Every benchmark becomes a list of ``Problem`` records. By default a benchmark loads from the
Hugging Face hub (dataset ids below; the resolved commit is recorded in ``Benchmark.source``);
a local JSONL file overrides it. The local schema is the one of ../shared/data (see its
README): ``{"id", "problem", "answer", ...}`` for math and
``{"id", "question", "choices" | "options", "answer": letter, ...}`` for multiple choice.
Synthetic tasks (the tiny profile) write the same schema and load through ``load_jsonl``.
Data files are untrusted input: anything wrong in one (not UTF-8, not JSON, a missing or null
field, a duplicate id, no problems at all) is a one-line ``DataError`` naming the file and line;
a bad ``limit`` is a ``ConfigError``; a hub that cannot be reached is a ``DataError`` that says
how to point ``data_dir`` at local copies.

Prompts follow the paper (SimpleRL-Zoo style): the question, for multiple choice the
lettered options, then "Please reason step by step, and put your final answer within
\\boxed{}." A chat template, if the model has one, is applied later by the rollout.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from g2rl_core.errors import ConfigError, DataError, DataFileNotFoundError
from g2rl_core.evaluation.verifier import CHOICE_LETTERS, last_boxed

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class Problem:
    """One evaluation or training problem. ``kind`` is "math" or "choice"."""

    id: str
    prompt: str
    answer: str
    kind: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Benchmark:
    name: str
    problems: list[Problem]
    source: str  # "hub:<id>@<commit>" or "file:<path>"


def math_prompt(problem: str) -> str:
    return f"{problem.strip()}\n{INSTRUCTION}"


def choice_prompt(question: str, options: list[str]) -> str:
    if not 2 <= len(options) <= len(CHOICE_LETTERS):
        raise ValueError(f"a multiple-choice question needs 2-{len(CHOICE_LETTERS)} options, got {len(options)}")
    lettered = "\n".join(f"{letter}. {str(option).strip()}" for letter, option in zip(CHOICE_LETTERS, options))
    return f"{question.strip()}\n\n{lettered}\n{INSTRUCTION}"


def _text_field(row: dict[str, Any], key: str, where: str) -> str:
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        shown = "null" if value is None else type(value).__name__
        raise DataError(f"{where}: {key!r} is {shown}; it must be a non-empty string")
    text = str(value).strip()
    if not text:
        raise DataError(f"{where}: {key!r} is empty; it must be a non-empty string")
    return text


def problem_from_row(row: Any, kind: str, where: str) -> Problem:
    """A Problem from one row of the local schema; ``where`` names the row in errors (DataError).

    ``id`` and ``answer`` must be non-empty strings (numbers are accepted and written as strings);
    ``answer: null`` is an error, never the gold answer "None".
    """
    if kind not in ("math", "choice"):
        raise ConfigError(f"{where}: kind {kind!r} is not 'math' or 'choice'")
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    try:
        pid, answer = _text_field(row, "id", where), _text_field(row, "answer", where)
        if kind == "math":
            prompt = math_prompt(_text_field(row, "problem", where))
            used = {"id", "problem", "answer"}
        else:
            options = row["choices"] if "choices" in row else row["options"]
            if not isinstance(options, list) or not all(isinstance(o, str | int | float) for o in options):
                raise DataError(f"{where}: 'choices' / 'options' must be a list of strings")
            prompt = choice_prompt(_text_field(row, "question", where), list(options))
            used = {"id", "question", "choices", "options", "answer"}
            if answer not in CHOICE_LETTERS[: len(options)]:
                raise DataError(f"{where}: answer {answer!r} is not one of the {len(options)} option letters")
    except KeyError as missing:
        raise DataError(f"{where}: missing field {missing} for a {kind!r} problem") from None
    except DataError:
        raise
    except ValueError as err:
        raise DataError(f"{where}: {err}") from None
    return Problem(pid, prompt, answer, kind, {k: v for k, v in row.items() if k not in used})


def _check_limit(limit: int | None, where: str) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"{where}: limit = {limit!r}: give an integer >= 1, or no limit to load every problem")


def load_jsonl(path: str | Path, kind: str, *, name: str | None = None, limit: int | None = None) -> Benchmark:
    """Load a JSONL file of the local schema. Errors (DataError) name the file and line.

    The file must be UTF-8, hold at least one problem, and no problem id twice. Blank lines are skipped.
    """
    path = Path(path)
    _check_limit(limit, f"benchmark {name or path.stem!r}")
    if not path.is_file():
        raise DataFileNotFoundError(f"benchmark {name or path.stem!r}: no file at {path}")
    problems: list[Problem] = []
    first_line: dict[str, int] = {}
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{path}:{lineno}: not UTF-8 ({err.reason} at byte {err.start} of the line); save it as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as err:
                reason = err.msg if isinstance(err, json.JSONDecodeError) else "nested too deeply"
                raise DataError(f"{path}:{lineno}: not valid JSON ({reason})") from None
            problem = problem_from_row(row, kind, f"{path}:{lineno}")
            if problem.id in first_line:
                raise DataError(
                    f"{path}:{lineno}: problem id {problem.id!r} already used on line {first_line[problem.id]}; "
                    f"ids must be unique"
                )
            first_line[problem.id] = lineno
            problems.append(problem)
            if limit is not None and len(problems) >= limit:
                break
    if not problems:
        raise DataError(f"{path}: no problems (the file is empty); give a JSONL file with one problem per line")
    return Benchmark(name or path.stem, problems, f"file:{path}")


# --- the paper's benchmarks -------------------------------------------------------------------


def _gpqa_row(row: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """The official GPQA CSV lists the correct answer first; shuffle as ../shared/data did."""
    options = [row["Correct Answer"], row["Incorrect Answer 1"], row["Incorrect Answer 2"], row["Incorrect Answer 3"]]
    perm = [0, 1, 2, 3]
    rng.shuffle(perm)
    return {
        "id": row["Record ID"],
        "question": row["Question"].strip(),
        "choices": [options[k].strip() for k in perm],
        "answer": "ABCD"[perm.index(0)],
    }


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    kind: str
    local_file: str  # file name in ../shared/data
    hub_id: str
    split: str
    hub_config: str | None = None
    # Maps one hub row (and a seeded rng, for shuffles) to the local schema.
    to_local: Callable[[dict[str, Any], random.Random], dict[str, Any]] = lambda row, rng: row


BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in [
        BenchmarkSpec(
            "math500",
            "math",
            "math500.jsonl",
            "HuggingFaceH4/MATH-500",
            "test",
            to_local=lambda r, _: {"id": r["unique_id"], "problem": r["problem"], "answer": r["answer"]},
        ),
        BenchmarkSpec(
            "aime24",
            "math",
            "aime24.jsonl",
            "HuggingFaceH4/aime_2024",
            "train",
            to_local=lambda r, _: {"id": str(r["id"]), "problem": r["problem"], "answer": str(int(r["answer"]))},
        ),
        BenchmarkSpec(
            "aime25",
            "math",
            "aime25.jsonl",
            "math-ai/aime25",
            "test",
            to_local=lambda r, _: {"id": str(r["id"]), "problem": r["problem"], "answer": str(int(float(r["answer"])))},
        ),
        BenchmarkSpec(
            "amc23",
            "math",
            "amc23.jsonl",
            "math-ai/amc23",
            "test",
            to_local=lambda r, _: {
                "id": str(r["id"]),
                "problem": r["question"],
                "answer": str(int(float(r["answer"]))),
            },
        ),
        BenchmarkSpec(
            "math_train",
            "math",
            "math_train.jsonl",
            "DigitalLearningGmbH/MATH-lighteval",
            "train",
            # no id on the hub: the loader numbers the rows
            to_local=lambda r, _: {
                "problem": r["problem"],
                "answer": last_boxed(r["solution"]) or "",
                "level": r["level"],
                "type": r["type"],
            },
        ),
        BenchmarkSpec(
            "gpqa_diamond", "choice", "gpqa_diamond.jsonl", "Idavidrein/gpqa", "train", "gpqa_diamond", _gpqa_row
        ),
        BenchmarkSpec(
            "mmlu_pro",
            "choice",
            "mmlu_pro.jsonl",
            "TIGER-Lab/MMLU-Pro",
            "test",
            to_local=lambda r, _: {
                "id": str(r["question_id"]),
                "question": r["question"],
                "options": r["options"],
                "answer": r["answer"],
                "category": r["category"],
            },
        ),
    ]
}


def _how_to_provide(spec: BenchmarkSpec) -> str:
    return (
        f"Set data_dir to a folder holding {spec.local_file} (in params.yaml, or --set data_dir=PATH; "
        f"this repository's tests use ../shared/data), or call load_benchmark with local_path=<file>; "
        f"or make the hub reachable (hf auth login for gated sets; unset HF_HUB_OFFLINE)."
    )


def load_benchmark(
    name: str,
    *,
    local_path: str | Path | None = None,
    data_dir: str | Path | None = None,
    revision: str = "main",
    limit: int | None = None,
) -> Benchmark:
    """Load one of ``BENCHMARKS`` from a local JSONL (``local_path``, or ``data_dir/<file>``)
    or, by default, from the Hugging Face hub at ``revision``."""
    if name not in BENCHMARKS:
        raise DataError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    _check_limit(limit, f"benchmark {name!r}")
    spec = BENCHMARKS[name]
    if local_path is None and data_dir is not None:
        local_path = Path(data_dir) / spec.local_file
    if local_path is not None:
        if not Path(local_path).is_file():
            raise DataFileNotFoundError(f"benchmark {name!r}: no file at {local_path}. {_how_to_provide(spec)}")
        return load_jsonl(local_path, spec.kind, name=name, limit=limit)
    dataset = f"{spec.hub_id}{'/' + spec.hub_config if spec.hub_config else ''}"
    try:
        import datasets
        from huggingface_hub import HfApi

        commit = HfApi().dataset_info(spec.hub_id, revision=revision).sha
        rows = datasets.load_dataset(spec.hub_id, spec.hub_config, split=spec.split, revision=commit)
    except Exception as err:  # offline, gated, renamed: all end here with the way out
        reason = " ".join(str(err).split())[:300]
        raise DataError(
            f"benchmark {name!r}: could not load hub dataset {dataset} (split {spec.split}, revision {revision}): "
            f"{type(err).__name__}: {reason}. {_how_to_provide(spec)}"
        ) from err
    rng = random.Random(0)
    problems: list[Problem] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        where = f"hub dataset {dataset}@{commit} row {i}"
        try:
            local = {"id": f"{name}-{i}", **spec.to_local(dict(row), rng)}
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{where}: unexpected row ({type(err).__name__}: {err}); {_how_to_provide(spec)}") from None
        problem = problem_from_row(local, spec.kind, where)
        if problem.id in seen:
            raise DataError(f"{where}: problem id {problem.id!r} appears twice; ids must be unique")
        seen.add(problem.id)
        problems.append(problem)
        if limit is not None and len(problems) >= limit:
            break
    if not problems:
        raise DataError(f"hub dataset {dataset}@{commit} split {spec.split}: no problems. {_how_to_provide(spec)}")
    return Benchmark(name, problems, f"hub:{spec.hub_id}@{commit}")


def load_problems(
    source: str, kind: str, data_dir: str | Path | None = None, limit: int | None = None
) -> list[Problem]:
    """Problems from a benchmark name in ``BENCHMARKS`` (hub, or ``data_dir``) or a JSONL path."""
    if source in BENCHMARKS:
        return load_benchmark(source, data_dir=data_dir, limit=limit).problems
    if not source.endswith(".jsonl"):
        raise DataError(
            f"data source {source!r} is neither a known benchmark ({', '.join(BENCHMARKS)}) nor a .jsonl path"
        )
    return load_jsonl(source, kind, limit=limit).problems
