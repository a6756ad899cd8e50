"""The paper-smoke profile on CPU: every piece of the paper profiles but their size.

A random tiny Qwen3 with a Qwen3-style chat tokenizer (``g2rl smoke-base``), the paper's prompt
through the chat template, MATH train / AIME25 / MATH-500 / GPQA-Diamond from ../shared/data, the
verifier on their real gold answers, and 2 training steps through the native and the TRL engine.
"""

import json
from pathlib import Path

import pytest

from g2rl_core.config import load_profile
from g2rl_core.evaluation.benchmarks import BENCHMARKS, load_jsonl, load_problems
from g2rl_core.evaluation.verifier import verify
from g2rl_core.pipeline.cli import main

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.fixture(scope="module")
def smoke_base(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "base"
    assert main(["smoke-base", "--params", str(PARAMS), "--profile", "paper-smoke", "--out", str(out)]) == 0
    return out


def test_profile_is_paper_1_7b_but_small():
    smoke, paper = load_profile("paper-smoke", PARAMS), load_profile("paper-1_7b", PARAMS)
    small = {"model", "data_dir", "prompts_per_step", "rollouts_per_prompt", "ppo_micro_batch_size", "lr"}
    small |= {"max_response_length", "steps", "val_every", "val_problems", "val_samples", "checkpoint_every"}
    small |= {"rollout", "feature_chunk_size", "threads"}
    for key, value in paper.train.items():
        if key not in small:
            assert smoke.train[key] == value, key
    assert (smoke.train["train_data"], smoke.train["val_data"]) == ("math_train", "aime25")
    assert smoke.train["rollout"]["chat_template"] and smoke.train["data_dir"] == "../shared/data"


def test_chat_template_and_real_gold_answers(smoke_base, shared_data):
    from g2rl_core.models import load_policy
    from g2rl_core.rollout import format_prompt

    _, tokenizer = load_policy(str(smoke_base))
    problem = load_problems("math_train", "math", shared_data, limit=1)[0]
    text = format_prompt(tokenizer, problem.prompt, True)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert problem.prompt in text and tokenizer.decode(tokenizer(text)["input_ids"]) == text  # bytes round-trip
    # MATH train's hub mapper: the answer is the last \boxed{} of the solution, as in the local copy.
    rows = [json.loads(line) for line in (shared_data / "math_train.jsonl").open() if line.strip()][:200]
    mapped = [BENCHMARKS["math_train"].to_local(row, None)["answer"] for row in rows]
    assert mapped == [row["answer"].strip() for row in rows]  # the local copy keeps the source's spaces
    for name in ("math_train", "math500", "aime25", "gpqa_diamond"):
        kind = BENCHMARKS[name].kind
        for p in load_jsonl(shared_data / BENCHMARKS[name].local_file, kind, name=name, limit=20).problems:
            assert verify(f"So the answer is \\boxed{{{p.answer}}}.", p.answer, kind).reward == 1.0, (name, p.answer)
            assert verify("So the answer is \\boxed{}.", p.answer, kind).reward == -1.0


@pytest.mark.parametrize("engine", ["native", "trl"])
def test_two_training_steps(smoke_base, shared_data, tmp_path, engine):
    if engine == "trl":
        pytest.importorskip("trl")
    out = tmp_path / engine
    settings = [f"model={smoke_base}", f"data_dir={shared_data}"]
    argv = ["train", "--params", str(PARAMS), "--profile", "paper-smoke", "--method", "g2rl"]
    assert main([*argv, "--engine", engine, "--out", str(out), "--set", *settings]) == 0
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in rows] == [("val", 0), ("train", 1), ("train", 2), ("val", 2)]
    for row in rows[1:3]:
        assert 0 < row["response_length_mean"] <= 16 and 0 <= row["nu_mean"] <= 1 and row["step_time_s"] > 0
    assert (out / "final" / "model.safetensors").exists() and (out / "final" / "tokenizer_config.json").exists()
