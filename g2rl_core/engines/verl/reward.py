"""verl's reward function for every engine's verifier: +1 correct, -1 otherwise (verl==0.9.1).

Wired by ``overrides.py`` as ``reward.custom_reward_function.path=<this file>`` with
``name=compute_score``; verl's reward manager calls it once per response with the decoded
response and the row's ``reward_model.ground_truth`` and ``extra_info`` (``data.py``). The
native and TRL engines score with the same ``verify``, so G2RL's shaping (eq. 10-13) sees the
same +-1 rewards on every engine; ``adapter.shape_outcome_scores`` refuses any other scale.
"""

from __future__ import annotations

from g2rl_core.evaluation.verifier import verify

ANSWER_KINDS = ("math", "choice")


def compute_score(data_source, solution_str: str, ground_truth: str, extra_info: dict | None = None, **kwargs) -> float:
    """``verify(solution_str, ground_truth, kind).reward``: +1.0 or -1.0 (-1 with no parsable answer).

    ``kind`` is ``extra_info["kind"]`` (written by ``data.py``), "math" when absent.
    """
    kind = (extra_info or {}).get("kind") or "math"
    if kind not in ANSWER_KINDS:
        raise ValueError(
            f"extra_info.kind = {kind!r} (data_source {data_source!r}) is not one of {list(ANSWER_KINDS)}; "
            "regenerate the parquet files with g2rl prepare-data --format verl"
        )
    return float(verify(str(solution_str), str(ground_truth), kind).reward)
