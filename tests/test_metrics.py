"""Metrics on hand-computed cases and properties."""

import itertools
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from g2rl_core.evaluation.metrics import bootstrap_ci, maj_at_k, pass_at_1, pass_at_k_first, pass_at_k_unbiased


def test_hand_computed():
    assert pass_at_1([True, False, False, True]) == 0.5
    assert pass_at_k_first([False, False, True, False], 2) == 0.0
    assert pass_at_k_first([False, False, True, False], 3) == 1.0
    # n = 4, c = 1, k = 2: 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k_unbiased(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k_unbiased(16, 0, 16) == 0.0
    assert pass_at_k_unbiased(16, 1, 16) == 1.0
    assert pass_at_k_unbiased(16, 4, 1) == pytest.approx(0.25)


def _exact_probability(n, c, k):
    """Enumerate all k-subsets of n samples, c of them correct."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    hits = sum(any(samples[i] for i in s) for s in subsets)
    return Fraction(hits, len(subsets))


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 10), data=st.data())
def test_unbiased_estimator_equals_exact_combinatorial_probability(n, data):
    c = data.draw(st.integers(0, n))
    k = data.draw(st.integers(1, n))
    assert pass_at_k_unbiased(n, c, k) == pytest.approx(float(_exact_probability(n, c, k)), abs=1e-12)


@settings(max_examples=80, deadline=None)
@given(correct=st.lists(st.booleans(), min_size=1, max_size=16))
def test_pass_at_k_is_monotone_in_k(correct):
    n, c = len(correct), sum(correct)
    first = [pass_at_k_first(correct, k) for k in range(1, n + 1)]
    unbiased = [pass_at_k_unbiased(n, c, k) for k in range(1, n + 1)]
    assert all(a <= b for a, b in zip(first, first[1:]))
    assert all(a <= b + 1e-12 for a, b in zip(unbiased, unbiased[1:]))
    assert unbiased[0] == pytest.approx(pass_at_1(correct))


def test_maj_at_k_majority_and_none():
    answers = ["3", "4", "3", None, "4", "3"]
    correct = [True, False, True, False, False, True]
    assert maj_at_k(answers, correct, 6) == 1.0
    assert maj_at_k(["4", "4", "3"], [False, False, True], 3) == 0.0
    assert maj_at_k([None, None], [False, False], 2) == 0.0
    # only the first k samples vote
    assert maj_at_k(["4", "3", "3", "3"], [False, True, True, True], 1) == 0.0


def test_maj_at_k_ties_are_random_but_seeded():
    answers = ["1", "2", "1", "2"]
    correct = [True, False, True, False]
    outcomes = {maj_at_k(answers, correct, 4, seed=s) for s in range(50)}
    assert outcomes == {0.0, 1.0}  # both tied answers get picked for some seed
    assert all(maj_at_k(answers, correct, 4, seed=s) == maj_at_k(answers, correct, 4, seed=s) for s in range(20))
    picks = [maj_at_k(answers, correct, 4, seed=s) for s in range(2000)]
    assert 0.45 < sum(picks) / len(picks) < 0.55  # uniform


@settings(max_examples=60, deadline=None)
@given(
    answers=st.lists(st.sampled_from(["a", "b", "c", None]), min_size=1, max_size=10),
    seed=st.integers(0, 100),
    data=st.data(),
)
def test_maj_at_k_well_defined_under_ties(answers, seed, data):
    correct = [a == "a" for a in answers]
    k = data.draw(st.integers(1, len(answers)))
    value = maj_at_k(answers, correct, k, seed=seed)
    assert value in (0.0, 1.0)
    assert value == maj_at_k(answers, correct, k, seed=seed)
    votes = {a: answers[:k].count(a) for a in set(answers[:k]) - {None}}
    if votes and max(votes.values()) == votes.get("a", 0) and list(votes.values()).count(votes["a"]) == 1:
        assert value == 1.0  # a unique majority is never overruled


def test_maj_at_k_votes_by_string_and_takes_the_graded_verdict():
    """Issue 16 item 8: a sample graded on a set of boxes must not lend its verdict to its last box's group."""
    from g2rl_core.evaluation.verifier import verify

    gold = "6, 7"
    responses = ["\\boxed{6} and \\boxed{7}", "\\boxed{7}", "\\boxed{7}", "\\boxed{6, 7}"]
    verdicts = [verify(r, gold) for r in responses]
    answers, correct = [v.extracted for v in verdicts], [v.correct for v in verdicts]
    assert answers == ["7", "7", "7", "6, 7"]
    assert maj_at_k(answers, correct, 4) == 0.0  # the majority answer "7" is wrong
    assert maj_at_k(["\\frac12", "0.5", "1/2", "3", "3"], [True, True, True, False, False], 5) == 0.0  # by string


def test_bootstrap_ci():
    mean, lo, hi = bootstrap_ci([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0], seed=0)
    assert mean == 0.625 and 0.0 <= lo < mean < hi <= 1.0
    assert bootstrap_ci([0.3]) == (0.3, 0.3, 0.3)
    narrow = bootstrap_ci([0.0, 1.0] * 200)
    wide = bootstrap_ci([0.0, 1.0] * 5)
    assert narrow[2] - narrow[1] < wide[2] - wide[1]


def test_errors():
    with pytest.raises(ValueError, match="k"):
        pass_at_k_unbiased(4, 1, 5)
    with pytest.raises(ValueError, match="c"):
        pass_at_k_unbiased(4, 5, 1)
    with pytest.raises(ValueError, match="length"):
        maj_at_k(["a"], [True, False], 1)
