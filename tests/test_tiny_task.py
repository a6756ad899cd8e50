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
        assert (int(last_boxed(answer)) - sum(terms)) % 2 == 0


def test_a_choice_demonstration_in_answer_format_is_the_boxed_letter_alone():
    row = tiny.make_row(tiny.SplitSpec("c", (4, 4), 9, 1, kind="choice"), 0, random.Random(3))
    prompt, response = tiny.demonstration(row, random.Random(0), 0.0, "answer")
    assert response == "\\boxed{" + row["answer"] + "}"
    assert "Which equals" in prompt


def _keys(path: Path) -> set[tuple[int, ...]]:
    return {tuple(sorted(json.loads(line)["terms"])) for line in path.open()}


def test_the_valid_split_is_disjoint_and_left_every_other_split_unchanged(tmp_path, monkeypatch):
    with_valid = tiny.write_task(tmp_path / "new", seed=0)
    valid = _keys(with_valid["valid"])
    assert len(valid) == 64
    for name, path in with_valid.items():
        if name != "valid" and json.loads(path.open().readline()).get("problem"):  # math splits share the key space
            assert not valid & _keys(path), name
    monkeypatch.setattr(tiny, "SPLITS", [s for s in tiny.SPLITS if s.name != "valid"])
    without = tiny.write_task(tmp_path / "old", seed=0)
    assert set(with_valid) - set(without) == {"valid"}
    for name, path in without.items():
        assert with_valid[name].read_bytes() == path.read_bytes(), name


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
