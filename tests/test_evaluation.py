"""g2rl eval: tidy samples and summary CSVs, resume without recomputing finished problems."""

import csv
import io
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from g2rl_core.errors import ConfigError, DataError
from g2rl_core.evaluation.benchmarks import INSTRUCTION, Problem, load_jsonl
from g2rl_core.evaluation.runner import SAMPLE_COLUMNS, read_samples, run_eval, summarize
from g2rl_core.models import load_policy
from g2rl_core.rollout import TransformersRollout
from g2rl_core.runlock import RunLockedError


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
    manifest = (tmp_path / "full" / "samples.manifest.json").read_text()  # written before the first batch
    (part / "samples.manifest.json").write_text(manifest)
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


# --- issue 16: resume keyed on the settings, strict samples file, lock, early validation ---------


class FakeBackend:
    """Deterministic 'sampling' without a model: texts depend on (prompt, sample, seed, temperature)."""

    def __init__(self, name="fake-model"):
        self.calls, self.name = 0, name

    def generate(self, prompts, *, n, temperature, top_p, max_new_tokens, seed):
        self.calls += 1
        texts = []
        for prompt in prompts:
            answer = int(prompt.split("+")[0].split()[-1]) + 1
            for j in range(n):
                rng = random.Random(f"{self.name}|{prompt}|{j}|{seed}|{temperature}")
                value = answer if rng.random() < 0.6 else answer + 1
                texts.append(f'Sum, "quoted",\nline two; so \\boxed{{{value}}}')
        mask = torch.ones(len(texts), max_new_tokens, dtype=torch.long)
        return SimpleNamespace(texts=texts, response_mask=mask)


def _problems(count=5):
    return [Problem(f"p{i}", f"What is {i}+1?\n{INSTRUCTION}", str(i + 1), "math") for i in range(count)]


def _fake_eval(out, backend=None, problems=None, **changes):
    settings = dict(
        labels={"model": "m", "method": "g2rl", "seed": 0, "benchmark": "sums"},
        n=4,
        ks=[1, 4],
        temperature=0.8,
        top_p=1.0,
        max_new_tokens=8,
        seed=0,
        problems_per_batch=2,
    )
    settings.update(changes)
    return run_eval(
        backend or FakeBackend(),
        _problems() if problems is None else problems,
        samples_csv=out / "samples_sums.csv",
        summary_csv=out / "summary_sums.csv",
        **settings,
    )


@pytest.mark.parametrize(
    "change, field",
    [
        ({"labels": {"model": "other", "method": "g2rl", "seed": 0, "benchmark": "sums"}}, "labels"),
        ({"labels": {"model": "m", "method": "grpo", "seed": 0, "benchmark": "sums"}}, "labels"),
        ({"seed": 1, "labels": {"model": "m", "method": "g2rl", "seed": 1, "benchmark": "sums"}}, "seed"),
        ({"n": 2, "ks": [1, 2]}, "n"),
        ({"temperature": 1.0}, "temperature"),
        ({"top_p": 0.9}, "top_p"),
        ({"max_new_tokens": 16}, "max_new_tokens"),
        ({"problems": _problems(3)}, "problems"),
    ],
)
def test_resume_refuses_samples_written_with_other_settings(tmp_path, change, field):
    """Issue 16 item 1: another model, method, seed, n... into the same --out is refused, the file untouched."""
    _fake_eval(tmp_path)
    before = (tmp_path / "samples_sums.csv").read_bytes()
    backend = FakeBackend()
    with pytest.raises(DataError, match=rf"sampled with other settings \(.*\b{field}: ") as err:
        _fake_eval(tmp_path, backend=backend, **change)
    assert "\n" not in str(err.value) and "another --out" in str(err.value)
    assert backend.calls == 0 and (tmp_path / "samples_sums.csv").read_bytes() == before


def test_same_settings_resume_samples_nothing_and_writes_one_header(tmp_path):
    first = _fake_eval(tmp_path)
    backend = FakeBackend()
    again = _fake_eval(tmp_path, backend=backend)
    assert backend.calls == 0
    text = (tmp_path / "samples_sums.csv").read_text()
    assert text.count("model,method,seed,benchmark") == 1
    pd.testing.assert_frame_equal(first, again)
    manifest = json.loads((tmp_path / "samples_sums.manifest.json").read_text())
    assert manifest["n"] == 4 and manifest["labels"]["model"] == "m" and manifest["problems"] == 5


def test_samples_without_a_manifest_are_refused(tmp_path):
    _fake_eval(tmp_path)
    (tmp_path / "samples_sums.manifest.json").unlink()
    with pytest.raises(DataError, match="has no manifest"):
        _fake_eval(tmp_path)


def _rows(path):
    return path.read_text(encoding="utf-8").split("\n")


@pytest.mark.parametrize(
    "damage, message",
    [
        # responses hold a newline, so record k starts on line 2k
        (lambda lines: lines[:3] + [lines[0]] + lines[3:], r"samples_sums.csv:6: a second header row"),
        (lambda lines: [lines[0], lines[1].replace(",0,-1.0,", ",True,-1.0,").replace(",1,1.0,", ",True,1.0,")]
         + lines[2:], r"samples_sums.csv:2: correct 'True' is not 0 or 1"),
        (lambda lines: lines[:2] + [lines[2].replace("sums,p0,", "sums,q9,")] + lines[3:],
         r"samples_sums.csv:4: problem_id 'q9' is not a problem of this eval"),
        (lambda lines: lines[:5] + lines[1:2] + lines[5:],
         r"samples_sums.csv:10: sample 0 of problem 'p0' appears twice"),
        (lambda lines: lines[:2] + [lines[2].replace(",g2rl,", ",grpo,")] + lines[3:],
         r"samples_sums.csv:4: method is 'grpo', but this eval is 'g2rl'"),
        (lambda lines: ["model,method\n"] + lines[1:], r"samples_sums.csv:1: header"),
    ],
)  # fmt: skip
def test_a_damaged_samples_file_names_file_and_line(tmp_path, damage, message):
    """Issue 16 item 1: `correct` is read with explicit dtypes; malformed rows fail with file and line."""
    _fake_eval(tmp_path)
    path = tmp_path / "samples_sums.csv"
    records = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))
    lines = [_csv_line(r) for r in records]
    path.write_text("".join(damage(lines)), encoding="utf-8")
    with pytest.raises(DataError, match=message):
        _fake_eval(tmp_path)
    labels = {"model": "m", "method": "g2rl", "seed": 0, "benchmark": "sums"}
    with pytest.raises(DataError, match=message):
        read_samples(path, n=4, labels=labels, problem_ids={p.id for p in _problems()})


def _csv_line(fields):
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(fields)
    return buffer.getvalue()


def test_a_torn_last_row_is_dropped_and_sampled_again(tmp_path):
    full = _fake_eval(tmp_path / "full")
    complete = (tmp_path / "full" / "samples_sums.csv").read_bytes()
    part = tmp_path / "part"
    part.mkdir()
    for name in ("samples_sums.manifest.json",):
        (part / name).write_bytes((tmp_path / "full" / name).read_bytes())
    for cut in (len(complete) - 7, len(complete) - 30):  # inside the last row, inside its quoted response
        (part / "samples_sums.csv").write_bytes(complete[:cut])
        backend = FakeBackend()
        resumed = _fake_eval(part, backend=backend)
        assert backend.calls == 1  # only the batch of the torn problem
        pd.testing.assert_frame_equal(resumed, full)
        assert (part / "samples_sums.csv").read_bytes() == complete


@pytest.mark.parametrize(
    "change, message",
    [
        ({"n": 0}, "n = 0"),
        ({"n": -2}, "n = -2"),
        ({"ks": [0]}, r"ks = \[0\]"),
        ({"ks": [1, 5]}, r"ks = \[1, 5\]"),
        ({"ks": []}, r"ks = \[\]"),
        ({"max_new_tokens": 0}, "max_new_tokens = 0"),
        ({"max_new_tokens": -5}, "max_new_tokens = -5"),
        ({"seed": -5}, "seed = -5"),
        ({"temperature": float("nan")}, "temperature = nan"),
        ({"top_p": 0.0}, "top_p = 0.0"),
        ({"problems_per_batch": 0}, "problems_per_batch = 0"),
        ({"problems": []}, "no problems"),
        ({"problems": _problems(2) + _problems(1)}, "problem id 'p0' appears twice"),
    ],
)
def test_bad_settings_fail_before_any_sampling(tmp_path, change, message):
    """Issue 16 items 10-11: each is a one-line ConfigError before sampling, and nothing is written."""
    backend = FakeBackend()
    with pytest.raises(ConfigError, match=message) as err:
        _fake_eval(tmp_path / "out", backend=backend, **change)
    assert "\n" not in str(err.value)
    assert backend.calls == 0 and not (tmp_path / "out").exists()


def test_an_eval_into_a_locked_out_is_refused_naming_the_holder(tmp_path):
    """Issue 16 item 2 (eval): a second writer on one --out fails at once and names the first."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=_env()
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        backend = FakeBackend()
        with pytest.raises(RunLockedError, match=rf"pid {holder.pid} on host {socket.gethostname()}"):
            _fake_eval(tmp_path, backend=backend)
        assert backend.calls == 0
    finally:
        holder.kill()
        holder.wait()
    _fake_eval(tmp_path)  # the lock died with its holder


HOLD_LOCK = """
import sys, time
from g2rl_core.runlock import run_lock
with run_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def _env():
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def test_out_that_is_a_file_is_a_config_error(tmp_path):
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(ConfigError, match="is a file"):
        _fake_eval(tmp_path / "out")
