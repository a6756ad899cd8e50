"""g2rl eval: tidy samples and summary CSVs, resume without recomputing finished problems."""

import pandas as pd

from g2rl_core.evaluation.benchmarks import load_jsonl
from g2rl_core.evaluation.runner import SAMPLE_COLUMNS, run_eval, summarize
from g2rl_core.models import load_policy
from g2rl_core.rollout import TransformersRollout


class CountingBackend:
    def __init__(self, inner):
        self.inner, self.prompts = inner, []

    def generate(self, prompts, **kwargs):
        self.prompts += prompts
        return self.inner.generate(prompts, **kwargs)


def _run(backend, problems, out):
    return run_eval(
        backend,
        problems,
        samples_csv=out / "samples.csv",
        summary_csv=out / "summary.csv",
        labels={"model": "m", "method": "g2rl", "seed": 0, "benchmark": "easy"},
        n=4,
        ks=[1, 4],
        temperature=0.8,
        top_p=1.0,
        max_new_tokens=40,
        seed=0,
        problems_per_batch=2,
    )


def test_eval_writes_tidy_csvs_and_resumes(tiny_base, tmp_path):
    model, tokenizer = load_policy(str(tiny_base / "base"))
    problems = load_jsonl(tiny_base / "data" / "easy.jsonl", "math", limit=6).problems
    full = _run(CountingBackend(TransformersRollout(model, tokenizer)), problems, tmp_path / "full")
    samples = pd.read_csv(tmp_path / "full" / "samples.csv", dtype={"problem_id": str})
    assert list(samples.columns) == SAMPLE_COLUMNS and len(samples) == 6 * 4
    assert sorted(full.metric) == sorted(["pass@1", "pass@1_unbiased", "maj@1", "pass@4", "pass@4_unbiased", "maj@4"])
    assert {"model", "method", "seed", "benchmark", "value", "ci_low", "ci_high"} <= set(full.columns)
    assert all(full.ci_low <= full.value) and all(full.value <= full.ci_high)

    # Interrupted after the first two batches (4 problems), the last batch half-written.
    part = tmp_path / "part"
    part.mkdir()
    done_ids = [p.id for p in problems[:4]]
    keep = samples[samples.problem_id.isin(done_ids) | (samples.problem_id == problems[4].id) & (samples["sample"] < 2)]
    keep.to_csv(part / "samples.csv", index=False)
    backend = CountingBackend(TransformersRollout(model, tokenizer))
    resumed = _run(backend, problems, part)
    assert backend.prompts == [problems[4].prompt, problems[5].prompt]  # finished problems are not sampled again
    again = pd.read_csv(part / "samples.csv", dtype={"problem_id": str})
    assert not again.duplicated(["problem_id", "sample"]).any()  # the half-written batch was replaced
    final = again.sort_values(["problem_id", "sample"])
    expected = samples.sort_values(["problem_id", "sample"])
    assert final["response"].tolist() == expected["response"].tolist()  # same samples as the uninterrupted run
    pd.testing.assert_frame_equal(resumed.reset_index(drop=True), full.reset_index(drop=True))


def test_summary_on_hand_made_samples():
    rows = []
    for pid, outcomes, answers in [
        ("a", [1, 0, 0, 1], ["2", "3", "3", "2"]),
        ("b", [0, 0, 0, 0], ["1", "1", None, "4"]),
    ]:
        for i, (ok, ans) in enumerate(zip(outcomes, answers)):
            rows.append({"problem_id": pid, "sample": i, "correct": ok, "extracted": ans})
    summary = summarize(pd.DataFrame(rows), [1, 4], n_resamples=200).set_index("metric")
    assert summary.loc["pass@1", "value"] == 0.25
    assert summary.loc["pass@4", "value"] == 0.5
    assert summary.loc["pass@1", "problems"] == 2 and summary.loc["pass@1", "samples_per_problem"] == 4
