"""The embedded task (g2rl_core/pipeline/tiny.py): solution formats, the valid split, the tiny-direct profile."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from g2rl_core import paths
from g2rl_core.config import ConfigError, SFTConfig, load_profile
from g2rl_core.evaluation.verifier import last_boxed
from g2rl_core.pipeline import tiny

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("error_rate", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("seed", range(5))
def test_an_answer_demonstration_is_the_boxed_total_the_steps_would_reach(seed, error_rate):
    terms = random.Random(100 + seed).choices(range(1, 10), k=5)
    steps = tiny.solution(terms, random.Random(seed), error_rate, "steps")
    answer = tiny.solution(terms, random.Random(seed), error_rate, "answer")
    assert re.fullmatch(r"\\boxed\{\d+\}", answer)
    assert answer == "\\boxed{" + last_boxed(steps) + "}"
    if error_rate == 0.0:
        assert last_boxed(answer) == str(sum(terms))
    if error_rate == 1.0:  # every one of the 4 partial sums is off by one: the total is off by an even amount <= 4
        offset = int(last_boxed(answer)) - sum(terms)
        assert offset % 2 == 0 and abs(offset) <= 4


def test_an_unknown_solution_format_is_refused():
    with pytest.raises(ValueError, match="solution_format = 'cot'"):
        tiny.solution([1, 2, 3], random.Random(0), 0.0, "cot")


@pytest.mark.parametrize("seed", range(20))
def test_a_choice_demonstration_in_answer_format_is_the_steps_formats_letter_alone(seed):
    """The same letter as the steps format for the same draws, also when a wrong total is not among the options."""
    row = tiny.make_row(tiny.SplitSpec("c", (4, 4), 9, 1, kind="choice"), 0, random.Random(seed))
    if seed == 0:
        prompt, response = tiny.demonstration(row, random.Random(0), 0.0, "answer")
        assert response == "\\boxed{" + row["answer"] + "}" and "Which equals" in prompt
    _, steps = tiny.demonstration(row, random.Random(seed), 0.5, "steps")
    _, answer = tiny.demonstration(row, random.Random(seed), 0.5, "answer")
    assert re.fullmatch(r"\\boxed\{[A-D]\}", answer)
    assert answer == "\\boxed{" + last_boxed(steps) + "}"


def _keys(path: Path) -> set[tuple[int, ...]]:
    return {tuple(sorted(json.loads(line)["terms"])) for line in path.open()}


# md5 of each split at task seed 0 as written before the valid split existed (commit 4a62c95, whose
# build/tiny made results/tiny/)
SPLIT_MD5_BEFORE_VALID = {
    "choice": "7e718f9f754d539e9d998b11598085a1",
    "choice10": "5537a42a186cee8a75cce068a8333477",
    "easy": "444c67d7c9db3415e317f10542953229",
    "hard": "693f837a036b6d166b8dff086df1a8e5",
    "hardest": "77fe25f59b492765c4501943b15895a6",
    "medium": "1ec2b01c25ad3478de9f706a0b60eb30",
    "train": "8a019bbc45ad45939eabe5a6544936bc",
}


def test_the_valid_split_is_disjoint_and_left_every_other_split_unchanged(tmp_path):
    import hashlib

    written = tiny.write_task(tmp_path, seed=0)
    assert set(written) == {*SPLIT_MD5_BEFORE_VALID, "valid"}
    for name, md5 in SPLIT_MD5_BEFORE_VALID.items():
        assert hashlib.md5(written[name].read_bytes()).hexdigest() == md5, name
    valid = _keys(written["valid"])
    assert len(valid) == 64
    for name, path in written.items():
        if name != "valid" and json.loads(path.open().readline()).get("problem"):  # math splits share the key space
            assert not valid & _keys(path), name


def test_solution_format_is_checked():
    expected = r"solution_format = 'cot' is not allowed; choose one of \['steps', 'answer'\]"
    with pytest.raises(ConfigError, match=expected):
        SFTConfig(solution_format="cot")


def test_an_answer_format_warm_start_answers_directly():
    tokenizer = tiny.build_tokenizer()
    model = tiny.build_model(
        tokenizer,
        tiny.TinyModelConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1
        ),
    )
    split = tiny.SplitSpec("train", (3, 5), 9, 200)
    rng = random.Random(0)
    rows = [tiny.make_row(split, i, rng) for i in range(200)]
    tiny.sft(model, tokenizer, rows, [], SFTConfig(steps=60, batch_size=16, warmup_steps=5, solution_format="answer"))
    prompts = [tiny.math_prompt(r["problem"]) for r in rows[:8]]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert all(re.fullmatch(r"\\boxed\{\d+\}", t) for t in texts), texts


def test_the_tiny_direct_profile_reads_only_its_own_build():
    profile = load_profile("tiny-direct", REPO / "params.yaml")
    assert profile.sft.solution_format == "answer"
    assert load_profile("tiny", REPO / "params.yaml").sft.solution_format == "steps"
    cfg = profile.train_config("g2rl", 0)
    sources = [cfg.model, cfg.train_data, cfg.val_data, profile.geometry.source]
    sources += [b["source"] for b in profile.eval.benchmarks.values()]
    root = str(paths.embedded_build("tiny-direct")) + "/"
    assert all(str(s).startswith(root) for s in sources), sources
    assert Path(cfg.val_data).stem == "valid"  # the design split, not a reported benchmark
