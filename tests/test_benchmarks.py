"""Benchmark loaders: local files, the record type, prompts, and errors that say what to do."""

import json

import pytest

from g2rl_core.evaluation.benchmarks import BENCHMARKS, INSTRUCTION, load_benchmark, load_jsonl

EXPECTED_ROWS = {
    "math500": 500,
    "aime24": 30,
    "aime25": 30,
    "amc23": 40,
    "math_train": 7500,
    "gpqa_diamond": 198,
    "mmlu_pro": 12032,
}


@pytest.mark.parametrize("name", sorted(EXPECTED_ROWS))
def test_every_benchmark_loads_from_the_local_copy(shared_data, name):
    bench = load_benchmark(name, data_dir=shared_data)
    assert len(bench.problems) == EXPECTED_ROWS[name]
    assert bench.source == f"file:{shared_data / BENCHMARKS[name].local_file}"
    assert len({p.id for p in bench.problems}) == len(bench.problems)
    for p in bench.problems:
        assert p.kind == BENCHMARKS[name].kind
        assert p.prompt.endswith(INSTRUCTION)
        assert p.answer


def test_math_and_choice_prompts(shared_data):
    p = load_benchmark("aime25", data_dir=shared_data, limit=1).problems[0]
    assert p.prompt == (
        "Find the sum of all integer bases $b>9$ for which $17_{b}$ is a divisor of $97_{b}$.\n" + INSTRUCTION
    )
    assert p.extra["year"] == 2025
    q = load_benchmark("gpqa_diamond", data_dir=shared_data, limit=1).problems[0]
    lines = q.prompt.split("\n")
    assert lines[-5:] == ["A. 10^-8 eV", "B. 10^-4 eV", "C. 10^-11 eV", "D. 10^-9 eV", INSTRUCTION]
    assert q.answer == "B" and q.kind == "choice"
    m = load_benchmark("mmlu_pro", data_dir=shared_data, limit=1).problems[0]
    assert m.prompt.count("\n") == 9 + 2 and "\nI. " in m.prompt and m.extra["category"] == "business"


def test_missing_file_names_benchmark_path_and_remedy(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_benchmark("aime24", data_dir=tmp_path)
    message = str(err.value)
    assert "'aime24'" in message and str(tmp_path / "aime24.jsonl") in message and "local_path" in message


def test_hub_unreachable_names_benchmark_dataset_and_remedy(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError) as err:
        load_benchmark("math500")
    message = str(err.value)
    assert "'math500'" in message and "HuggingFaceH4/MATH-500" in message and "math500.jsonl" in message


def test_unknown_benchmark_lists_the_known_ones():
    with pytest.raises(ValueError, match="math500"):
        load_benchmark("gsm8k")


def test_bad_rows_name_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"id": "1", "problem": "1+1?", "answer": "2"}) + "\n" + json.dumps({"id": "2", "answer": "3"}) + "\n"
    )
    with pytest.raises(ValueError, match=r"bad.jsonl:2: missing field 'problem'"):
        load_jsonl(path, "math")
    path.write_text(json.dumps({"id": "1", "question": "q", "choices": ["x", "y"], "answer": "C"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: answer 'C'"):
        load_jsonl(path, "choice")
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: not valid JSON"):
        load_jsonl(path, "math")
