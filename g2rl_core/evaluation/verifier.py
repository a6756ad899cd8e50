"""Rule-based answer verification: +1 / -1 rewards for math and multiple-choice answers.

Math answers use math-verify (parse, then verify with the gold answer first). Multiple
choice uses the last boxed letter, else the last stated one ("answer is (B)", "Answer: B").
Model output is untrusted text: it is only matched by regular expressions and parsed by
math-verify into SymPy objects, never evaluated.

Time bound. math-verify's own timeout uses ``signal.alarm``, which fails outside the main
thread. We switch it off and bound the whole check ourselves:
- in the main thread of any process (a worker process included) with a float-precision
  ``signal.setitimer`` alarm;
- in any other thread by running the check in a helper process and waiting at most
  ``timeout_s``; a check that runs over kills that process.
A check that times out is a wrong answer (-1), with whatever answer string was extracted.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import multiprocessing
import re
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, TypeVar

AnswerKind = Literal["math", "choice"]
ANSWER_KINDS: tuple[str, ...] = ("math", "choice")
DEFAULT_TIMEOUT_S = 5.0
CHOICE_LETTERS = "ABCDEFGHIJ"

T = TypeVar("T")


@dataclass(frozen=True)
class Verdict:
    """reward: +1.0 if the response's final answer matches the gold answer, else -1.0.
    extracted: the response's final answer string (None if there is none)."""

    reward: float
    extracted: str | None

    @property
    def correct(self) -> bool:
        return self.reward > 0


# --- extraction ---------------------------------------------------------------------------

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces matched."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts):
        depth = 1
        for pos in range(start, len(text)):
            char = text[pos]
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    return text[start:pos].strip()
        # unbalanced: try an earlier box
    return None


_LETTER_IN_BOX = re.compile(r"^\s*(?:\\text(?:bf)?\{\s*)?\(?\s*([A-J])\s*\)?(?:\s*\})?(?:[\s.):]|$)")
_STATED_LETTER = re.compile(r"(?i:answer)\s*(?:is|:)?\s*[:\-]?\s*(?:\*\*)?\s*\(?\s*([A-J])\s*\)?(?![A-Za-z])")


def extract_choice(text: str) -> str | None:
    """The final multiple-choice letter (A-J): the last boxed letter, else the last stated one."""
    boxed = last_boxed(text)
    if boxed is not None:
        match = _LETTER_IN_BOX.match(boxed)
        if match:
            return match.group(1)
    stated = _STATED_LETTER.findall(text)
    return stated[-1] if stated else None


# --- math-verify ---------------------------------------------------------------------------


class _OwnTimeoutNotice(logging.Filter):
    """Drop math-verify's 'Timeout is disabled' warning: this module bounds the time itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_OwnTimeoutNotice())


@lru_cache(maxsize=1)
def _extraction_configs():
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())


@lru_cache(maxsize=65536)
def _parse_gold(gold: str):
    from math_verify import parse

    return parse(f"$\\boxed{{{gold}}}$", extraction_config=_extraction_configs(), parsing_timeout=None)


def _math_verdict(response: str, gold: str) -> Verdict:
    from math_verify import parse
    from math_verify import verify as mv_verify

    gold_parsed = _parse_gold(gold)
    predicted = parse(response, extraction_config=_extraction_configs(), parsing_timeout=None)
    extracted = last_boxed(response)
    if extracted is None and len(predicted) > 1:
        extracted = str(predicted[1])
    if not predicted or not gold_parsed:
        return Verdict(-1.0, extracted)
    ok = mv_verify(gold_parsed, predicted, timeout_seconds=None)
    return Verdict(1.0 if ok else -1.0, extracted)


def _choice_verdict(response: str, gold: str) -> Verdict:
    letter = extract_choice(response)
    return Verdict(1.0 if letter is not None and letter == gold.strip().upper() else -1.0, letter)


def _verdict(response: str, gold: str, kind: str) -> Verdict:
    return _math_verdict(response, gold) if kind == "math" else _choice_verdict(response, gold)


# --- time bound ------------------------------------------------------------------------------


class VerificationTimeout(BaseException):
    """Raised by the alarm; a BaseException so that math-verify's ``except Exception`` lets it through."""


def _with_alarm(fn: Callable[[], T], timeout_s: float) -> T:
    def on_alarm(signum, frame):
        raise VerificationTimeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


_pool: concurrent.futures.ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def _helper_pool() -> concurrent.futures.ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn")
            )
            # Start-up (spawning, importing SymPy) must not count against a check's time bound.
            _pool.submit(_verdict, "\\boxed{1}", "1", "math").result()
        return _pool


@atexit.register
def _shutdown_pool() -> None:
    """Stop the helper process before interpreter teardown (avoids noise from executor finalizers)."""
    if _pool is not None:
        _pool.shutdown(wait=True, cancel_futures=True)


def _discard_pool(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    global _pool
    with _pool_lock:
        if _pool is pool:
            _pool = None
    for process in list(getattr(pool, "_processes", {}).values()):
        process.kill()
    pool.shutdown(wait=False, cancel_futures=True)


def _in_helper_process(response: str, gold: str, kind: str, timeout_s: float) -> Verdict:
    pool = _helper_pool()
    future = pool.submit(_verdict, response, gold, kind)
    try:
        return future.result(timeout=timeout_s)
    except concurrent.futures.TimeoutError:
        _discard_pool(pool)
        raise VerificationTimeout from None
    except concurrent.futures.process.BrokenProcessPool:
        _discard_pool(pool)
        raise


def verify(response: str, gold: str, kind: str = "math", *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Verdict:
    """Check a model response against the gold answer.

    Args:
        response: the model's full output (untrusted text).
        gold: the reference answer: a LaTeX/plain math expression, or a letter A-J.
        kind: ``"math"`` (math-verify, gold first) or ``"choice"`` (final letter).
        timeout_s: wall-clock bound for the whole check; over it counts as wrong.

    Returns:
        Verdict(reward=+1.0 or -1.0, extracted=final answer string or None). A response
        with no parsable answer gets -1.0.
    """
    if kind not in ANSWER_KINDS:
        raise ValueError(f"kind must be one of {ANSWER_KINDS}, got {kind!r}")
    if not isinstance(response, str) or not isinstance(gold, str):
        raise TypeError("response and gold must be str")
    if kind == "choice":  # regular expressions on the text only: no time bound needed
        return _choice_verdict(response, gold)
    try:
        if threading.current_thread() is threading.main_thread():
            return _with_alarm(lambda: _math_verdict(response, gold), timeout_s)
        return _in_helper_process(response, gold, kind, timeout_s)
    except VerificationTimeout:
        return Verdict(-1.0, last_boxed(response))
