"""The prompts: SimpleRL-Zoo's template through a Qwen3-style chat template built offline, and their order."""

import os
import random
import subprocess
import sys

import pytest
import torch
from conftest import tiny_qwen3

from g2rl_core.errors import ConfigError, G2RLError
from g2rl_core.evaluation.benchmarks import choice_prompt, math_prompt
from g2rl_core.prompt_order import epoch_order, step_prompts
from g2rl_core.rollout import TransformersRollout
from g2rl_core.rollout.batch import encode_prompts, format_prompt, prompt_messages

# A reduced Qwen3 chat template (system turn, user/assistant turns, generation prompt, and the
# enable_thinking switch that adds an empty think block only when it is explicitly false).
QWEN3_STYLE_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role != 'system' or not loop.first %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# SimpleRL-Zoo's "qwen-boxed" template (hkust-nlp/simpleRL-reason @ cf1c7858,
# examples/simplelr_math_eval/utils.py), with {input} the question.
QWEN_BOXED = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n{input}\nPlease reason step by step, and put your final answer within \\boxed{{}}.<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def qwen3_style_tokenizer(chat_template: str | None = QWEN3_STYLE_TEMPLATE):
    """Character-level tokenizer with Qwen's special tokens as single ids."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    characters = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {token: i for i, token in enumerate([*SPECIALS, "<unk>", *characters])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def test_messages_are_system_then_user():
    prompt = math_prompt("What is 1+1?")
    assert prompt_messages(prompt) == [
        {"role": "system", "content": "You are a helpful assistant."},
        {
            "role": "user",
            "content": "What is 1+1?\nPlease reason step by step, and put your final answer within \\boxed{}.",
        },
    ]


def test_rendered_text_is_simplerl_zoo_qwen_boxed_exactly():
    tokenizer = qwen3_style_tokenizer()
    question = "Find $x$ if $2x = 6$."
    text = format_prompt(tokenizer, math_prompt(question), chat_template=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nFind $x$ if $2x = 6$.\n"
        "Please reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert text == QWEN_BOXED.format(input=question)


def test_multiple_choice_prompt_renders_with_its_options():
    tokenizer = qwen3_style_tokenizer()
    text = format_prompt(tokenizer, choice_prompt("Which is even?", ["3", "4"]), chat_template=True)
    assert text == QWEN_BOXED.format(input="Which is even?\n\nA. 3\nB. 4")


def test_without_chat_template_the_prompt_is_bare():
    prompt = math_prompt("What is 1+1?")
    assert format_prompt(qwen3_style_tokenizer(), prompt, chat_template=False) == prompt


def test_chat_template_requested_but_missing_is_a_user_error():
    with pytest.raises(G2RLError, match="chat_template: false"):
        format_prompt(qwen3_style_tokenizer(chat_template=None), "x", chat_template=True)


def test_encode_prompts_tokenizes_the_rendered_text_left_padded():
    tokenizer = qwen3_style_tokenizer()
    prompts = [math_prompt("1+1?"), math_prompt("What is 12 * 12?")]
    ids, mask = encode_prompts(tokenizer, prompts, chat_template=True)
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    for row, row_mask, prompt in zip(ids, mask, prompts):
        tokens = row[row_mask.bool()].tolist()
        assert tokenizer.decode(tokens) == format_prompt(tokenizer, prompt, True)
        assert tokens[0] == im_start and tokens.count(im_start) == 3  # system, user, assistant
    assert mask[0, 0] == 0 and mask[1, 0] == 1  # the shorter prompt is left-padded


def test_transformers_rollout_feeds_the_rendered_prompt():
    tokenizer = qwen3_style_tokenizer()
    model = tiny_qwen3(tie_word_embeddings=False, vocab_size=len(tokenizer))
    rollout = TransformersRollout(model, tokenizer, chat_template=True)
    prompt = math_prompt("1+1?")
    batch = rollout.generate([prompt], n=2, temperature=1.0, top_p=1.0, max_new_tokens=2, seed=0)
    for row, row_mask in zip(batch.prompt_ids, batch.prompt_mask):
        assert tokenizer.decode(row[row_mask.bool()].tolist()) == QWEN_BOXED.format(input="1+1?")
    assert torch.equal(batch.prompt_ids[0], batch.prompt_ids[1])


# --- prompt order: seeded, shuffled epochs (verl's walk), a pure function of (seed, step) ------------


def _uninterrupted_walk(n_prompts, per_step, seed, steps):
    """What one uninterrupted run draws: a dataloader over shuffled epochs, last partial batch dropped."""
    drawn, epoch = [], 0
    while len(drawn) < steps:
        order = epoch_order(n_prompts, seed, epoch)
        for lo in range(0, n_prompts - per_step + 1, per_step):
            drawn.append(order[lo : lo + per_step])
        epoch += 1
    return drawn[:steps]


def test_every_prompt_once_per_epoch():
    n, per_step = 12, 4  # 3 steps per epoch
    for epoch in range(3):
        steps = range(3 * epoch, 3 * epoch + 3)
        seen = [i for s in steps for i in step_prompts(n, per_step, seed=0, step=s)]
        assert sorted(seen) == list(range(n))
    assert step_prompts(n, per_step, 0, 0) + step_prompts(n, per_step, 0, 1) != step_prompts(
        n, per_step, 0, 3
    ) + step_prompts(n, per_step, 0, 4)  # each epoch is shuffled afresh


def test_last_partial_batch_is_dropped_like_verl():
    n, per_step = 10, 4  # 2 steps per epoch; 2 prompts left over each epoch
    epoch0 = step_prompts(n, per_step, 5, 0) + step_prompts(n, per_step, 5, 1)
    assert len(set(epoch0)) == 8 and epoch0 == epoch_order(n, 5, 0)[:8]
    assert step_prompts(n, per_step, 5, 2) == epoch_order(n, 5, 1)[:4]  # step 2 opens epoch 1


def test_paper_scale_run_repeats_no_prompt():
    # MATH train (7,500 problems), 16 prompts a step, 200 steps: 3,200 draws inside one epoch.
    drawn = [i for s in range(200) for i in step_prompts(7500, 16, seed=0, step=s)]
    assert len(drawn) == 3200 and len(set(drawn)) == 3200


def test_resume_at_any_step_draws_what_an_uninterrupted_run_would():
    n, per_step, seed, steps = 23, 5, 7, 40  # 4 steps per epoch, 10 epochs
    reference = _uninterrupted_walk(n, per_step, seed, steps)
    for resume_at in (0, 1, 3, 4, 17, 39):
        random.seed(resume_at)  # other code touching the global RNGs must not matter
        torch.manual_seed(resume_at)
        resumed = [step_prompts(n, per_step, seed, s) for s in range(resume_at, steps)]
        assert resumed == reference[resume_at:]


def test_order_does_not_depend_on_the_process():
    code = "from g2rl_core.prompt_order import step_prompts; print(step_prompts(100, 8, 3, 25))"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": str(h)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for h in (1, 2)
    }
    assert outputs == {str(step_prompts(100, 8, 3, 25))}


def test_different_seeds_walk_different_orders():
    assert epoch_order(7500, 0, 0) != epoch_order(7500, 1, 0)
    assert step_prompts(7500, 16, 0, 0) != step_prompts(7500, 16, 1, 0)
    assert sorted(epoch_order(7500, 1, 0)) == list(range(7500))


def test_more_prompts_per_step_than_problems_is_a_config_error():
    with pytest.raises(ConfigError, match="prompts_per_step = 9"):
        step_prompts(8, 9, 0, 0)


def test_trainer_rollout_walks_the_epochs(tiny_base, tmp_path):
    from g2rl_core.config import load_profile
    from g2rl_core.engines.native import Trainer

    cfg = load_profile("tiny", tiny_base / "params.yaml").train_config("grpo", 3)
    trainer = Trainer(cfg, tmp_path)
    trainer.backend.generate = lambda prompts, **kw: prompts  # only the prompt choice is under test
    n, per_step = len(trainer.train_problems), cfg.prompts_per_step
    per_epoch = n // per_step
    ids = []
    for step in [*range(per_epoch), per_epoch + 2]:
        trainer.step = step
        problems, prompts = trainer.rollout()
        assert prompts == [p.prompt for p in problems]
        expected = [trainer.train_problems[i].id for i in step_prompts(n, per_step, 3, step)]
        assert [p.id for p in problems] == expected
        if step < per_epoch:
            ids.extend(p.id for p in problems)
    assert len(ids) == len(set(ids)) == per_epoch * per_step  # no prompt twice in an epoch


def _left_pad_loop(rows, pad_id):
    """The hand-written left_pad this package had before it used pad_sequence (the reference)."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
    return ids, mask


def _right_pad_loop(rows, pad, dtype=torch.long):
    """The hand-written right_pad this package had before it used pad_sequence (the reference)."""
    width = max(1, max(map(len, rows)))
    ids = torch.full((len(rows), width), pad, dtype=dtype)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=dtype)
        mask[i, : len(row)] = 1
    return ids, mask


@pytest.mark.parametrize(
    "rows",
    [[[5, 6, 7], [8], [9, 10]], [[3], [], [4, 5, 6, 7]], [[], []], [[1, 2]], [[11, 12], [13, 14]]],
    ids=["ragged", "with-empty", "all-empty", "one-row", "equal"],
)
def test_pad_helpers_equal_the_hand_written_loops(rows):
    from g2rl_core.rollout import left_pad, right_pad

    for ours, reference in [
        (left_pad(rows, 0), _left_pad_loop(rows, 0)),
        (left_pad(rows, 99), _left_pad_loop(rows, 99)),
        (right_pad(rows, 99), _right_pad_loop(rows, 99)),
        (right_pad([[x / 7 for x in r] for r in rows], 0.0, torch.float32),
         _right_pad_loop([[x / 7 for x in r] for r in rows], 0.0, torch.float32)),
    ]:  # fmt: skip
        for got, want in zip(ours, reference):
            assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want)
    ids, mask = left_pad(rows, -1)
    assert (mask.sum(1) == torch.tensor([len(r) for r in rows])).all()
    if rows == [[5, 6, 7], [8], [9, 10]]:  # the layout itself, not only agreement
        assert ids.tolist() == [[5, 6, 7], [-1, -1, 8], [-1, 9, 10]]
        assert right_pad(rows, -1)[0].tolist() == [[5, 6, 7], [8, -1, -1], [9, 10, -1]]
