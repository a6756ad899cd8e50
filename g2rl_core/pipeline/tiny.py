"""The embedded tiny setup: a ~1M-parameter Qwen3 model, its tokenizer, and a synthetic task.

Everything is built offline from code. The model and tokenizer are saved with
``save_pretrained`` so that the trainer loads them by path exactly as it loads a hub model.

The task: "Compute 3+5+2+7." with the paper's instruction; the answer is the sum, written as
``\\boxed{17}``. A solution adds the terms one at a time, in ANY order, e.g.
"3+5=8,8+2=10,10+7=17,\\boxed{17}" or "7+2=9,9+5=14,14+3=17,\\boxed{17}": many reasoning paths
lead to one answer, so exploring them matters. Answers are checked by the same verifier as the
real benchmarks. Splits get harder with more (and larger) terms, and play the roles of
MATH500 / AMC / AIME24 / AIME25; a four-option multiple-choice variant plays GPQA.

The supervised warm start (``sft``) trains on demonstrations in which each partial sum is
wrong with probability ``demo_error_rate``: the resulting "base model" is right often enough
for RL to have signal, and wrong often enough for RL to have something to fix.

``solution_format = "answer"`` (the tiny-direct profile) writes only the final ``\\boxed{17}``,
wrong as often as the unwritten steps would make it. A response is then ~5 tokens of which one
or two (the digits) are uncertain, so Phi is dominated by a few skewed tokens and the
within-group Phi geometry is structured (docs/phi_vs_gradient.md says why the steps format
gives near-random geometry).

The ``valid`` split is for design choices (learning rate, steps) and the training-time
validation curve; it draws after every other split, so adding it left them unchanged. It gets
what the 3-5-addend space has left after ``train``: mostly 5 addends (no 3-addend problem is left).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from g2rl_core.config import SFTConfig, TinyModelConfig
from g2rl_core.evaluation.benchmarks import INSTRUCTION, choice_prompt, math_prompt
from g2rl_core.evaluation.verifier import CHOICE_LETTERS

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
WORDS = [INSTRUCTION, "Compute", "Which equals", "\\boxed{"]
CHARACTERS = list("0123456789+-=,.?:{}() \n") + list("ABCDEFGHIJ")


def build_tokenizer():
    """A word-level tokenizer: the instruction and a few words are single tokens, the rest are characters."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([PAD, EOS, UNK, *WORDS, *CHARACTERS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    alternatives = "|".join(_regex_escape(w) for w in WORDS)
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(f"{alternatives}|[\\s\\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK, padding_side="left", model_max_length=256
    )


def _regex_escape(text: str) -> str:
    """Escape for the Rust regex syntax of `tokenizers`."""
    return "".join("\\" + c if c in r"\.^$|?*+()[]{}" else c for c in text)


def build_model(tokenizer, config: TinyModelConfig | None = None, seed: int = 0):
    """A randomly initialised Qwen3ForCausalLM (tied embeddings) sized for a 2-core CPU."""
    config = config or TinyModelConfig()
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    qwen = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        head_dim=config.hidden_size // config.num_attention_heads,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    return Qwen3ForCausalLM(qwen)


# --- the synthetic task --------------------------------------------------------------------


@dataclass(frozen=True)
class SplitSpec:
    """``size`` problems with ``terms`` addends drawn from 1..``max_term``."""

    name: str
    terms: tuple[int, int]  # inclusive range of the number of addends
    max_term: int
    size: int
    kind: str = "math"
    options: int = 4  # multiple choice only
    plays: str = ""  # the paper benchmark it stands in for


SPLITS = [
    SplitSpec("train", (3, 5), 9, 1200, plays="MATH train"),
    SplitSpec("easy", (3, 3), 9, 64, plays="MATH500"),
    SplitSpec("medium", (4, 4), 9, 64, plays="AMC23"),
    SplitSpec("hard", (5, 5), 12, 64, plays="AIME24"),
    SplitSpec("hardest", (6, 6), 15, 64, plays="AIME25"),
    SplitSpec("choice", (4, 4), 9, 64, kind="choice", plays="GPQA-Diamond"),
    SplitSpec("choice10", (3, 5), 9, 96, kind="choice", options=10, plays="MMLU-Pro"),
    SplitSpec(
        "valid", (3, 5), 9, 64, plays="validation: design choices, Figure 2 and the ablation's score; no benchmark"
    ),
]
# Splits draw in this order (others first); "train" and "valid" draw last so they cannot use up
# the held-out problems, and "valid" after "train" so that adding it changed no other split.
DRAW_LAST = ("train", "valid")


def solution(terms: list[int], rng: random.Random, error_rate: float = 0.0, solution_format: str = "steps") -> str:
    """Add the terms one at a time in a random order; each partial sum is off by one w.p. error_rate.

    "steps" writes every partial sum and the boxed total; "answer" writes the boxed total alone
    (the same random draws, so the same total as "steps" would reach).
    """
    order = terms[:]
    rng.shuffle(order)
    total, steps = order[0], []
    for term in order[1:]:
        new_total = total + term
        if rng.random() < error_rate:
            new_total += rng.choice([-1, 1])
        steps.append(f"{total}+{term}={new_total}")
        total = new_total
    if solution_format == "answer":
        return f"\\boxed{{{total}}}"
    if solution_format != "steps":
        raise ValueError(f"solution_format = {solution_format!r}; expected 'steps' or 'answer'")
    return ",".join(steps) + f",\\boxed{{{total}}}"


def make_row(split: SplitSpec, index: int, rng: random.Random) -> dict:
    terms = [rng.randint(1, split.max_term) for _ in range(rng.randint(*split.terms))]
    expression = "+".join(map(str, terms))
    answer = sum(terms)
    row = {"id": f"{split.name}-{index}", "terms": terms}
    if split.kind == "math":
        return {**row, "problem": f"Compute {expression}.", "answer": str(answer)}
    near = [answer + d for d in range(-split.options, split.options + 1) if d and answer + d > 0]
    options = [answer, *rng.sample(near, split.options - 1)]
    rng.shuffle(options)
    return {
        **row,
        "question": f"Which equals {expression}?",
        "choices": [str(o) for o in options],
        "answer": CHOICE_LETTERS[options.index(answer)],
    }


def write_task(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write every split as JSONL of the local benchmark schema; no problem repeats across splits."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    seen: set[tuple[int, ...]] = set()
    paths = {}
    # Held-out splits draw first, so the training split cannot use up their problems.
    for split in sorted(SPLITS, key=lambda s: DRAW_LAST.index(s.name) + 1 if s.name in DRAW_LAST else 0):
        rows: list[dict] = []
        for _attempt in range(100 * split.size):
            if len(rows) == split.size:
                break
            row = make_row(split, len(rows), rng)
            key = (split.kind, split.options if split.kind == "choice" else 0, *sorted(row["terms"]))
            if key in seen:
                continue
            seen.add(key)
            rows.append(row)
        else:
            raise ValueError(f"split {split.name!r}: could not draw {split.size} distinct problems; lower its size")
        paths[split.name] = out_dir / f"{split.name}.jsonl"
        with paths[split.name].open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
    (out_dir / "splits.json").write_text(json.dumps([asdict(s) for s in SPLITS], indent=1))
    return paths


def demonstration(row: dict, rng: random.Random, error_rate: float, solution_format: str = "steps") -> tuple[str, str]:
    """(prompt, response) for supervised warm-up; the answer follows the (possibly wrong) steps."""
    if "problem" in row:
        return math_prompt(row["problem"]), solution(row["terms"], rng, error_rate, solution_format)
    steps = solution(row["terms"], rng, error_rate, solution_format)
    total = steps.rsplit("{", 1)[1].rstrip("}")
    letters = CHOICE_LETTERS[: len(row["choices"])]
    letter = letters[row["choices"].index(total)] if total in row["choices"] else rng.choice(letters)
    return choice_prompt(row["question"], row["choices"]), steps.rsplit("\\boxed", 1)[0] + f"\\boxed{{{letter}}}"


def sft(model, tokenizer, train_rows: list[dict], choice_rows: list[dict], cfg: SFTConfig) -> list[float]:
    """Supervised warm start on fresh demonstrations of the training problems; returns the losses.

    Loss: token-mean cross-entropy on response tokens (and EOS). AdamW, linear warm-up then
    cosine decay. Deterministic for a given seed on CPU.
    """
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    model.train()
    losses = []
    for _ in tqdm(range(cfg.steps), desc="sft", mininterval=2):
        # One pool per batch: multiple-choice prompts are long, and mixing would pad every batch to them.
        pool = choice_rows if choice_rows and rng.random() < cfg.choice_fraction else train_rows
        pairs = [
            demonstration(rng.choice(pool), rng, cfg.demo_error_rate, cfg.solution_format)
            for _ in range(cfg.batch_size)
        ]
        ids, labels = _sft_batch(tokenizer, pairs)
        logits = model(input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id).long()).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    model.eval()
    return losses


def _sft_batch(tokenizer, pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [prompt + response + EOS] ids, labels -100 outside the response."""
    seqs, labels = [], []
    for prompt, response in pairs:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        seqs.append(p + r)
        labels.append([-100] * len(p) + r)
    width = max(map(len, seqs))
    pad = tokenizer.pad_token_id
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    lab = torch.tensor([s + [-100] * (width - len(s)) for s in labels])
    return ids, lab
