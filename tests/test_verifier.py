"""The verifier: every gold answer self-verifies; hard formats; time bound; threads and processes."""

import json
import multiprocessing
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from g2rl_core.evaluation.verifier import extract_choice, last_boxed, verify

MATH_FILES = ["math500.jsonl", "aime24.jsonl", "aime25.jsonl", "amc23.jsonl", "math_train.jsonl"]
CHOICE_FILES = ["gpqa_diamond.jsonl", "mmlu_pro.jsonl"]


def _rows(path):
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


@pytest.mark.parametrize("name", MATH_FILES)
def test_every_math_gold_answer_verifies_against_itself(shared_data, name):
    failures = [
        (row["id"], row["answer"])
        for row in _rows(shared_data / name)
        if verify(f"Reasoning... so the answer is $\\boxed{{{row['answer']}}}$.", row["answer"]).reward != 1.0
    ]
    assert failures == []


@pytest.mark.parametrize("name", CHOICE_FILES)
def test_every_choice_gold_answer_verifies_against_itself(shared_data, name):
    rows = _rows(shared_data / name)
    assert all(verify(f"... so \\boxed{{{r['answer']}}}", r["answer"], kind="choice").reward == 1.0 for r in rows)
    assert all(verify(f"The answer is ({r['answer']}).", r["answer"], kind="choice").reward == 1.0 for r in rows)


@pytest.mark.parametrize(
    "response, gold, reward",
    [
        ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),  # fraction vs decimal
        ("\\boxed{0.5}", "\\frac12", 1.0),
        ("\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}", 1.0),  # \dfrac
        ("\\boxed{\\tfrac{3}{4}}", "0.75", 1.0),
        ("\\boxed{90}", "90^\\circ", 1.0),  # degrees
        ("\\boxed{90^\\circ}", "90", 1.0),
        ("\\boxed{[2, 5)}", "[2,5)", 1.0),  # intervals
        ("\\boxed{(2, 5]}", "[2,5)", -1.0),
        ("\\boxed{\\text{Evelyn}}", "\\text{Evelyn}", 1.0),  # text answers
        ("\\boxed{Evelyn}", "\\text{Evelyn}", 1.0),
        ("\\boxed{Alice}", "\\text{Evelyn}", -1.0),
        ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt3}{2}", 1.0),  # nested braces
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)", 1.0),
        ("\\boxed{6}", "7", -1.0),
        ("first \\boxed{7}, on reflection \\boxed{6}", "7", -1.0),  # the last box counts
        ("no answer here", "5", -1.0),  # no boxed answer, no number
        ("", "5", -1.0),  # empty output
    ],
)
def test_hard_formats(response, gold, reward):
    assert verify(response, gold).reward == reward


def test_extracted_string_and_very_long_output():
    long = "x" * 200_000 + " so \\boxed{7}"
    assert verify(long, "7").reward == 1.0
    assert verify("\\boxed{\\frac{\\sqrt{3}}{2}}", "1").extracted == "\\frac{\\sqrt{3}}{2}"
    assert verify("nothing", "1").extracted is None
    assert verify("", "1").extracted is None


def test_last_boxed_matches_nested_braces_and_skips_unbalanced():
    assert last_boxed("a \\boxed{\\frac{a}{b^{2}}} b") == "\\frac{a}{b^{2}}"
    assert last_boxed("\\boxed{1} then \\boxed{2") == "1"
    assert last_boxed("\\fbox{3}") == "3"
    assert last_boxed("none") is None


@pytest.mark.parametrize(
    "response, letter",
    [
        ("\\boxed{B}", "B"),
        ("\\boxed{(C)}", "C"),
        ("\\boxed{\\text{D}}", "D"),
        ("\\boxed{B) 10^-4 eV}", "B"),
        ("The answer is (A). Wait, the answer is C.", "C"),
        ("Answer: J", "J"),
        ("the answer is a function", None),  # lower-case words are not letters
        ("I cannot decide", None),
        ("", None),
    ],
)
def test_choice_extraction(response, letter):
    assert extract_choice(response) == letter
    assert verify(response, letter or "A", kind="choice").reward == (1.0 if letter else -1.0)


def _slow_expression(n=250):
    return "+".join(f"\\frac{{{i}}}{{{i + 1}}}x^{{{i}}}" for i in range(1, n))


def test_time_bound_in_main_thread():
    expr = _slow_expression()
    start = time.perf_counter()
    verdict = verify(f"\\boxed{{{expr}}}", expr, timeout_s=0.002)
    assert time.perf_counter() - start < 1.0
    assert verdict.reward == -1.0 and verdict.extracted == expr
    assert verify(f"\\boxed{{{expr}}}", expr, timeout_s=60).reward == 1.0


def test_safe_and_bounded_outside_the_main_thread():
    expr = _slow_expression(200)
    with ThreadPoolExecutor(2) as pool:
        fast = list(pool.map(lambda g: verify(f"\\boxed{{{g}}}", "4"), ["4", "2+2", "5"]))
        assert [v.reward for v in fast] == [1.0, 1.0, -1.0]
        timed_out = pool.submit(verify, f"\\boxed{{{expr}}}", expr, timeout_s=0.05).result()
        assert timed_out.reward == -1.0
        # the helper process is replaced after a time-out
        assert pool.submit(verify, "\\boxed{3}", "3").result().reward == 1.0


def _verify_in_worker(args):
    return verify(*args).reward


def test_safe_in_worker_processes():
    with multiprocessing.get_context("fork").Pool(2) as pool:
        assert pool.map(_verify_in_worker, [("\\boxed{1/2}", "0.5"), ("\\boxed{3}", "4")]) == [1.0, -1.0]


def test_bad_kind_is_rejected():
    with pytest.raises(ValueError, match="kind"):
        verify("x", "y", kind="code")
