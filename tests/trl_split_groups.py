"""Run under `accelerate launch --num_processes N --cpu` (or plain python for N = 1).

Every process builds an ExplorationGRPOTrainer on the tiny model and scores its share of one
fixed batch (3 groups x 4 completions; with 2 processes the middle group is split across
ranks) through the trainer's real hook, `_calculate_rewards`. Rank 0 writes the gathered
advantages to OUT as JSON. Usage: trl_split_groups.py MODEL_DIR OUT METHOD
"""

import json
import sys

import torch

from g2rl_core.config import TrainConfig
from g2rl_core.engines.trl import ExplorationGRPOTrainer, grpo_config_from_profile, problems_dataset, verifier_reward
from g2rl_core.evaluation.benchmarks import Problem
from g2rl_core.models import load_policy


def fixed_batch(tokenizer):
    problems = [Problem(f"p{g}", f"Compute {g + 1}+{g + 2}+3.", str(g + 6), "math") for g in range(3)]
    rows = []
    for g, problem in enumerate(problems):
        a, b, total = g + 1, g + 2, int(problem.answer)
        rows += [
            (problem, f"{a}+{b}={a + b},{a + b}+3={total},\\boxed{{{total}}}"),  # correct
            (problem, f"{a}+{b}={a + b + 1},{a + b + 1}+3={total + 1},\\boxed{{{total + 1}}}"),  # wrong
            (problem, f"3+{b}={3 + b},{3 + b}+{a}={total},\\boxed{{{total}}}"),  # correct, another path
            (problem, f"{a}+3={a + 3},{a + 3}+{b}={total}, no answer"),  # unparsable
        ]
    prompt_ids = [tokenizer(p.prompt, add_special_tokens=False)["input_ids"] for p, _ in rows]
    completion_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for _, t in rows]
    return problems, rows, prompt_ids, completion_ids


def main(model_dir: str, out: str, method: str) -> None:
    model, tokenizer = load_policy(model_dir)
    cfg = TrainConfig(
        model=model_dir,
        method=method,
        prompts_per_step=2,
        rollouts_per_prompt=4,
        ppo_mini_batch_size=1,
        ppo_micro_batch_size=4,
        lr=1e-4,
        max_response_length=40,
        steps=1,
    )
    problems, rows, prompt_ids, completion_ids = fixed_batch(tokenizer)
    args = grpo_config_from_profile(cfg, out + ".trainer", per_device_train_batch_size=4, generation_batch_size=8)
    trainer = ExplorationGRPOTrainer(
        model=model,
        reward_funcs=[verifier_reward],
        args=args,
        train_dataset=problems_dataset(problems),
        processing_class=tokenizer,
        exploration=cfg,
    )
    rank, world = trainer.accelerator.process_index, trainer.accelerator.num_processes
    share = len(rows) // world
    mine = slice(rank * share, (rank + 1) * share)
    local_rows = rows[mine]
    inputs = [{"prompt": p.prompt, "answer": p.answer, "kind": p.kind} for p, _ in local_rows]
    trainer._last_token_ids = (prompt_ids[mine], completion_ids[mine])
    trainer.model.train()
    advantages = trainer._calculate_rewards(
        inputs, [p.prompt for p, _ in local_rows], [t for _, t in local_rows], completion_ids[mine]
    )
    base = torch.tensor([verifier_reward([t], [p.answer], [p.kind])[0] for p, t in rows])
    if rank == 0:
        with open(out, "w") as fh:
            json.dump(
                {
                    "world": world,
                    "advantages": advantages.view(-1).tolist(),
                    "base_rewards": base.tolist(),
                    "metrics": {k: v for k, v in trainer._metrics["train"].items() if k.startswith("g2rl/")},
                },
                fh,
            )


if __name__ == "__main__":
    main(*sys.argv[1:4])
