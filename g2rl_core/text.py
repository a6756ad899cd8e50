"""Response-text helpers shared by the methods and the analyses.

Both follow EVOL-RL's reward manager (repository YujunZhou/EVOL-RL, file
verl/verl/workers/reward_manager/semantic_novelty.py at commit
ed596f4a83874911474a295757c3db153d7c548c, methods ``_extract_after_think`` and
``_check_boxed_content_has_numbers``). Both run in time linear in the text length: responses
are model output, so no backtracking regex runs over them.
"""

from __future__ import annotations

import re

THINK_END = "</think>"
BOXED_OPEN = "\\boxed{"
_DIGIT = re.compile(r"\d")  # any Unicode decimal digit, as the original's re.search(r'\d', ...)


def text_after_think(text: str) -> str:
    """The answer part EVOL-RL embeds: the text after the FIRST ``</think>``, stripped of
    surrounding whitespace; the whole text, unchanged (not stripped), when there is none."""
    _, sep, tail = text.partition(THINK_END)
    return tail.strip() if sep else text


def has_boxed_digit(text: str) -> bool:
    """EVOL-RL's validity test: some ``\\boxed{...}`` in ``text`` has a digit in its content.

    The original runs ``re.findall(r'\\\\boxed\\{([^}]*)\\}', text)`` and asks whether any match
    contains ``\\d``: a match's content stops at the first ``}`` (so ``\\boxed{\\frac{1}{2}}``
    has content ``\\frac{1`` and counts, ``\\boxed{\\pi}`` and ``\\boxed{x}`` do not), matches do
    not overlap, and ``\\boxed {`` with a space is not a match. This scan gives the same answer
    in one pass. Call it on ``text_after_think(response)``, as the original does.
    """
    pos = 0
    while (start := text.find(BOXED_OPEN, pos)) >= 0:
        start += len(BOXED_OPEN)
        end = text.find("}", start)
        if end < 0:  # no closing brace here means none after any later \boxed{ either
            return False
        if _DIGIT.search(text, start, end):
            return True
        pos = end + 1
    return False
