"""lighteval custom tasks: cross-check one checkpoint's numbers with lighteval (as open-r1 does).

Five tasks, each on the hub dataset, split and row mapping of ``g2rl_core.evaluation.benchmarks.BENCHMARKS``
and with the prompt ``g2rl eval`` feeds the policy (``math_prompt`` / ``choice_prompt``: the question and
"Please reason step by step, and put your final answer within \\boxed{}."):

    g2rl_math500  HuggingFaceH4/MATH-500 (test)        lighteval's math pass@k  (math-verify)
    g2rl_aime24   HuggingFaceH4/aime_2024 (train)      lighteval's math pass@k
    g2rl_aime25   math-ai/aime25 (test)                lighteval's math pass@k
    g2rl_amc23    math-ai/amc23 (test)                 lighteval's math pass@k
    g2rl_gpqa     Idavidrein/gpqa gpqa_diamond (train) lighteval's GPQA letter pass@k

pass@1 is estimated from ``n`` samples per problem (16 for math, 32 for GPQA: the paper profiles' eval).
The chat turn (system prompt "You are a helpful assistant.", Qwen chat template) is lighteval's model
setting, not the task's: pass ``system_prompt`` in the model arguments (docs/lighteval.md has the command).

GPQA's options: the hub lists the correct answer first; ``BENCHMARKS["gpqa_diamond"]`` shuffles each row
with one ``random.Random(0)`` drawn in hub row order, and so does this file (one generator per process, a
row's order cached by its Record ID), so the letters equal ``g2rl eval``'s when lighteval maps the rows in
hub order, as it does.

Not a DVC dependency (outside ``g2rl_core/``): editing it never invalidates the pipeline. Imports
lighteval only to build ``TASKS_TABLE``; ``doc_fields`` (the prompt mapping) works without it.
"""

from __future__ import annotations

import random
from typing import Any

from g2rl_core.evaluation.benchmarks import BENCHMARKS, choice_prompt, math_prompt
from g2rl_core.evaluation.verifier import CHOICE_LETTERS

# lighteval task name -> (our benchmark name, samples per problem)
TASKS = {
    "g2rl_math500": ("math500", 16),
    "g2rl_aime24": ("aime24", 16),
    "g2rl_aime25": ("aime25", 16),
    "g2rl_amc23": ("amc23", 16),
    "g2rl_gpqa": ("gpqa_diamond", 32),
}
MAX_NEW_TOKENS = 8192  # paper-1_7b's eval.max_new_tokens (paper-4b: 12288)

_gpqa_rng = random.Random(0)
_gpqa_rows: dict[str, dict[str, Any]] = {}


def doc_fields(benchmark: str, line: dict[str, Any]) -> dict[str, Any]:
    """One hub row of ``benchmark`` as lighteval Doc fields: ``query`` (our prompt), ``choices``, ``gold_index``.

    Math: ``choices`` is the gold answer (lighteval's math metric parses it). GPQA: ``choices`` are the letters
    and ``gold_index`` the correct one's, after the same shuffle as ``g2rl eval``.
    """
    spec = BENCHMARKS[benchmark]
    if spec.kind == "math":
        local = spec.to_local(dict(line), None)
        return {"query": math_prompt(str(local["problem"])), "choices": [str(local["answer"])], "gold_index": 0}
    key = line["Record ID"]
    if key not in _gpqa_rows:  # each row shuffled once, in the order lighteval maps them
        _gpqa_rows[key] = spec.to_local(dict(line), _gpqa_rng)
    local = _gpqa_rows[key]
    letters = list(CHOICE_LETTERS[: len(local["choices"])])
    return {
        "query": choice_prompt(local["question"], local["choices"]),
        "choices": letters,
        "gold_index": letters.index(local["answer"]),
    }


def _task(name: str, benchmark: str, n: int, Doc, LightevalTaskConfig, Metrics):
    spec = BENCHMARKS[benchmark]

    def prompt(line: dict[str, Any], task_name: str | None = None):
        return Doc(task_name=task_name, **doc_fields(benchmark, line))

    metric = Metrics.pass_at_k_math if spec.kind == "math" else Metrics.gpqa_instruct_pass_at_k
    return LightevalTaskConfig(
        name=name,
        prompt_function=prompt,
        hf_repo=spec.hub_id,
        hf_subset=spec.hub_config or "default",
        hf_avail_splits=[spec.split],
        evaluation_splits=[spec.split],
        few_shots_split=None,
        few_shots_select=None,
        generation_size=MAX_NEW_TOKENS,
        metrics=[metric(sample_params={"k": 1, "n": n})],
        stop_sequence=[],  # the EOS token ends a response, as in g2rl eval
        version=0,
    )


try:
    from lighteval.metrics.metrics import Metrics
    from lighteval.tasks.lighteval_task import LightevalTaskConfig
    from lighteval.tasks.requests import Doc
except ImportError:  # doc_fields stays usable (tests/test_lighteval_tasks.py)
    TASKS_TABLE: list = []
else:
    TASKS_TABLE = [_task(name, b, n, Doc, LightevalTaskConfig, Metrics) for name, (b, n) in TASKS.items()]
