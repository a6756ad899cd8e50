"""scripts/lighteval_tasks.py: lighteval sees the prompts, answers and GPQA letters that `g2rl eval` uses."""

import importlib.util
import json
from pathlib import Path

import pytest

from g2rl_core.evaluation.benchmarks import BENCHMARKS, load_problems

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "lighteval_tasks.py"


def _module():
    """A fresh copy of the task file (its GPQA shuffle starts over)."""
    spec = importlib.util.spec_from_file_location("lighteval_tasks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(shared_data, name):
    return [json.loads(line) for line in (shared_data / f"{name}.jsonl").read_text().splitlines() if line.strip()]


# ../shared/data's rows back in each hub dataset's schema (benchmarks.BENCHMARKS' to_local reads these)
HUB_ROW = {
    "math500": lambda r: {"unique_id": r["id"], "problem": r["problem"], "answer": r["answer"]},
    "aime24": lambda r: {"id": r["id"], "problem": r["problem"], "answer": int(r["answer"])},
    "aime25": lambda r: {"id": r["id"], "problem": r["problem"], "answer": str(float(r["answer"]))},
    "amc23": lambda r: {"id": r["id"], "question": r["problem"], "answer": float(r["answer"])},
}


@pytest.mark.parametrize("name", sorted(HUB_ROW))
def test_math_docs_are_our_prompt_and_answer(shared_data, name):
    tasks = _module()
    problems = load_problems(str(shared_data / f"{name}.jsonl"), "math")
    rows = _rows(shared_data, name)
    assert len(rows) == len(problems)
    for row, problem in zip(rows, problems):
        doc = tasks.doc_fields(name, HUB_ROW[name](row))
        assert doc == {"query": problem.prompt, "choices": [problem.answer], "gold_index": 0}


def test_gpqa_docs_shuffle_the_options_as_our_loader_did(shared_data):
    tasks = _module()
    problems = load_problems(str(shared_data / "gpqa_diamond.jsonl"), "choice")
    for row, problem in zip(_rows(shared_data, "gpqa_diamond"), problems):
        options = [None] * 4  # the hub's order: the correct answer first
        for position, source in enumerate(row["permutation"]):
            options[source] = row["choices"][position]
        hub = {"Record ID": row["id"], "Question": row["question"], "Correct Answer": options[0]}
        hub.update({f"Incorrect Answer {k}": options[k] for k in (1, 2, 3)})
        doc = tasks.doc_fields("gpqa_diamond", hub)
        assert doc == {"query": problem.prompt, "choices": list("ABCD"), "gold_index": "ABCD".index(problem.answer)}
        assert tasks.doc_fields("gpqa_diamond", hub) == doc  # mapped again: the same letters


def test_tasks_name_our_hub_datasets():
    tasks = _module()
    assert {b for b, _ in tasks.TASKS.values()} == {"math500", "aime24", "aime25", "amc23", "gpqa_diamond"}
    pytest.importorskip("lighteval")
    configs = {c.name: c for c in tasks.TASKS_TABLE}
    assert set(configs) == set(tasks.TASKS)
    for name, (benchmark, _n) in tasks.TASKS.items():
        spec, config = BENCHMARKS[benchmark], configs[name]
        assert (config.hf_repo, list(config.evaluation_splits)) == (spec.hub_id, [spec.split])
        assert config.hf_subset == (spec.hub_config or "default")
        if spec.kind == "math":
            row = {"unique_id": "x", "id": "1", "problem": "1+1?", "question": "1+1?", "answer": "2"}
            doc = config.prompt_function(row, name)
            expected = (name, tasks.math_prompt("1+1?"), ["2"], 0)
            assert (doc.task_name, doc.query, doc.choices, doc.gold_index) == expected
