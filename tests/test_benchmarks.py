"""Benchmark loaders: local files, the record type, prompts, and errors that say what to do."""

import json

import pytest

from g2rl_core.errors import ConfigError, DataError, DataFileNotFoundError, G2RLError
from g2rl_core.evaluation.benchmarks import BENCHMARKS, INSTRUCTION, load_benchmark, load_jsonl, load_problems

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
    with pytest.raises(DataFileNotFoundError) as err:
        load_benchmark("aime24", data_dir=tmp_path)
    message = str(err.value)
    assert "'aime24'" in message and str(tmp_path / "aime24.jsonl") in message and "local_path" in message
    # the remedy names settings that exist: data_dir (params.yaml or --set), not a --data-dir flag
    assert "--set data_dir=" in message and "--data-dir" not in message
    assert "hf auth login" in message and "huggingface-cli" not in message
    assert "\n" not in message


def test_hub_unreachable_names_benchmark_dataset_and_remedy(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as err:  # a user error (G2RLError), not a RuntimeError traceback
        load_benchmark("math500")
    message = str(err.value)
    assert "'math500'" in message and "HuggingFaceH4/MATH-500" in message and "math500.jsonl" in message
    assert "\n" not in message and "--set data_dir=" in message


def test_unknown_benchmark_lists_the_known_ones():
    with pytest.raises(DataError, match="math500"):
        load_benchmark("gsm8k")
    with pytest.raises(DataError, match="neither a known benchmark"):
        load_problems("gsm8k.csv", "math")


def test_bad_rows_name_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"id": "1", "problem": "1+1?", "answer": "2"}) + "\n" + json.dumps({"id": "2", "answer": "3"}) + "\n"
    )
    with pytest.raises(DataError, match=r"bad.jsonl:2: missing field 'problem'"):
        load_jsonl(path, "math")
    path.write_text(json.dumps({"id": "1", "question": "q", "choices": ["x", "y"], "answer": "C"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: answer 'C'"):
        load_jsonl(path, "choice")
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: not valid JSON"):
        load_jsonl(path, "math")


def _write(path, lines):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "rows, kind, message",
    [
        ([{"id": "1", "problem": "1+1?", "answer": None}], "math", r"bad.jsonl:1: 'answer' is null"),
        ([{"id": None, "problem": "1+1?", "answer": "2"}], "math", r"bad.jsonl:1: 'id' is null"),
        ([{"id": "1", "problem": "1+1?", "answer": " "}], "math", r"bad.jsonl:1: 'answer' is empty"),
        ([{"id": "1", "problem": ["1+1?"], "answer": "2"}], "math", r"bad.jsonl:1: 'problem' is list"),
        ([["id", "problem", "answer"]], "math", r"bad.jsonl:1: a row must be a JSON object"),
        ([{"id": "1", "question": "q", "choices": "AB", "answer": "A"}], "choice", r"bad.jsonl:1: 'choices'"),
        ([{"id": "1", "question": "q", "choices": ["x"], "answer": "A"}], "choice", r"bad.jsonl:1: .*2-10 options"),
        (
            [{"id": "7", "problem": "1+1?", "answer": "2"}, {"id": "8", "problem": "2+2?", "answer": "4"}]
            + [{"id": "7", "problem": "3+3?", "answer": "6"}],
            "math",
            r"bad.jsonl:3: problem id '7' already used on line 1",
        ),
    ],
)
def test_bad_rows_are_one_line_data_errors(tmp_path, rows, kind, message):
    """Issue 16 items 10-11: null answers, wrong types and duplicate ids name the file and line."""
    with pytest.raises(DataError, match=message) as err:
        load_jsonl(_write(tmp_path / "bad.jsonl", rows), kind)
    assert "\n" not in str(err.value)


def test_non_utf8_empty_and_blank_files(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps({"id": "1", "problem": "ok", "answer": "1"}).encode() + b"\n")
    path.write_bytes(path.read_bytes() + '{"id": "2", "problem": "caf\u00e9", "answer": "2"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.jsonl:2: not UTF-8"):
        load_jsonl(path, "math")
    for name, text in [("empty.jsonl", ""), ("blank.jsonl", "\n  \n\n")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match=rf"{name}: no problems"):
            load_jsonl(tmp_path / name, "math")
        with pytest.raises(DataError, match=rf"{name}: no problems"):
            load_problems(str(tmp_path / name), "math")


@pytest.mark.parametrize("limit", [0, -1, 2.5, True])
def test_limit_must_be_a_positive_integer(tmp_path, limit):
    path = _write(tmp_path / "ok.jsonl", [{"id": str(i), "problem": f"{i}+1?", "answer": str(i + 1)} for i in range(3)])
    with pytest.raises(ConfigError, match="limit"):
        load_jsonl(path, "math", limit=limit)
    assert len(load_jsonl(path, "math", limit=2).problems) == 2
    assert len(load_jsonl(path, "math").problems) == 3


def test_every_loader_error_is_a_user_error(tmp_path):
    """The CLI prints G2RLError as one line; nothing a data file can hold escapes as another exception."""
    cases = ["{not json", "[1, 2]", "null", "42", '{"id": {}, "problem": "p", "answer": "1"}', "[" * 100_000]
    for i, text in enumerate(cases):
        path = tmp_path / f"case{i}.jsonl"
        path.write_text(text + "\n")
        with pytest.raises(G2RLError, match=rf"case{i}.jsonl:1: "):
            load_jsonl(path, "math")
