"""The exploration methods inside TRL's GRPOTrainer (trl 1.16).

Every method runs through ``ExplorationGRPOTrainer``, the smallest hook TRL allows: it
overrides ``_calculate_rewards``, which TRL calls after gathering every process's rewards,
and returns the method's advantages (``maths.methods.METHODS``: eq. 2 of the method's
rewards) in place of the rewards. With ``scale_rewards="none"`` TRL then only subtracts the
group mean, which is already 0, so every arm of a comparison trains on the same eq. 2
(population std), computed by ``g2rl_core.maths.shaping`` and nowhere else; TRL's own
Bessel-corrected group std (plus 1e-4) is never used. The loss is TRL's: loss_type="dapo"
(token-mean), k3 KL (beta), and TRL's ``entropy_coef`` for methods with an entropy bonus.
The hook gathers each process's Phi (methods that need it) and the response texts (methods
with an encoder), so a group split across processes is scored as a whole.

Where Phi comes from. TRL computes old-policy log-probs only when generation and optimiser
steps are misaligned or vLLM importance sampling is on, and then only as logits inside
``_get_per_token_logps_and_entropies``, without the hidden states. In the default aligned
setting there is no old-policy pass at all, so the hook runs one extra no-grad decoder pass
(``features.causal_lm_sequence_features``). benchmarks/trl_step.py measures that cost.

The per-step log (TRL's ``log_history`` / logger) gains ``g2rl/nu_mean``, ``g2rl/nu_std``,
``g2rl/phi_cos_mean``, ``g2rl/phi_neg_share`` and ``g2rl/base_reward_mean``. (TRL's own
``reward`` column then shows the mean of the returned advantages, which is 0.)
"""

from __future__ import annotations

import torch
from accelerate.utils import gather, gather_object
from trl import GRPOConfig, GRPOTrainer

from g2rl_core.config import TrainConfig
from g2rl_core.evaluation.verifier import verify
from g2rl_core.maths.features import causal_lm_sequence_features
from g2rl_core.maths.methods import METHODS, GroupBatch
from g2rl_core.maths.shaping import group_geometry
from g2rl_core.models import load_policy, sentence_encoder
from g2rl_core.rollout import format_prompt, left_pad, right_pad


def verifier_reward(completions, answer, kind, **kwargs) -> list[float]:
    """TRL reward function: +1 / -1 from our verifier (no parsable answer: -1)."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [verify(text, gold, k).reward for text, gold, k in zip(texts, answer, kind)]


def grpo_config_from_profile(cfg: TrainConfig, output_dir: str, **overrides) -> GRPOConfig:
    """A GRPOConfig with the same Table 3 settings as our trainer's ``TrainConfig``.

    Batch sizes: a training step sees ``prompts_per_step * rollouts_per_prompt`` completions,
    split into mini-batches of ``ppo_mini_batch_size`` prompts (one optimiser step each).
    TRL's unit is the per-device micro-batch; ``steps_per_generation`` mini-batches reuse one
    generation, as in verl.
    """
    completions = cfg.prompts_per_step * cfg.rollouts_per_prompt
    per_mini = cfg.ppo_mini_batch_size * cfg.rollouts_per_prompt
    micro = min(cfg.ppo_micro_batch_size, per_mini)
    values = dict(
        output_dir=output_dir,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=max(1, per_mini // micro),
        num_generations=cfg.rollouts_per_prompt,
        generation_batch_size=completions,
        num_iterations=cfg.ppo_epochs,
        learning_rate=cfg.lr,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=cfg.lr_warmup_steps,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.grad_clip if cfg.grad_clip > 0 else 1e9,
        beta=cfg.kl_coef if cfg.use_kl_loss else 0.0,
        epsilon=cfg.clip_ratio,
        loss_type="dapo",  # token-mean over the accumulated mini-batch
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=0,
        max_completion_length=cfg.max_response_length,
        max_steps=cfg.steps * (completions // per_mini),
        seed=cfg.seed,
        entropy_coef=cfg.entropy_coeff if METHODS[cfg.method].uses_entropy_bonus else 0.0,
        scale_rewards="none",  # the hook returns finished eq. 2 advantages
        use_vllm=cfg.rollout.backend == "vllm",
        logging_steps=1,
        # TrainConfig.loggers, less dvclive: transformers' DVCLiveCallback opens Live() with dvcyaml="dvc.yaml",
        # which rewrites the repository's dvc.yaml metrics/plots; a dvclive callback must pass dvcyaml=None
        report_to=[name for name in cfg.loggers if name != "dvclive"] or "none",
        save_strategy="no",
        use_cpu=not torch.cuda.is_available(),
    )
    values.update(overrides)
    return GRPOConfig(**values)


class ExplorationGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose group advantages come from ``METHODS[exploration.method]``."""

    def __init__(self, *args, exploration: TrainConfig, **kwargs):
        super().__init__(*args, **kwargs)
        if self.scale_rewards != "none":
            raise ValueError(
                "ExplorationGRPOTrainer returns finished advantages; set scale_rewards='none' in GRPOConfig"
            )
        if len(self.reward_funcs) != 1:
            raise ValueError("ExplorationGRPOTrainer shapes one base reward: pass reward_funcs=[verifier_reward]")
        self.exploration = exploration
        self.method = METHODS[exploration.method]
        self.encode = sentence_encoder(exploration.encoder) if self.method.needs_encoder else None
        self._last_token_ids = None

    def _generate(self, prompts):
        out = super()._generate(prompts)
        self._last_token_ids = (out[0], out[1])  # prompt_ids_list, completion_ids_list (this process)
        return out

    def local_features(self, prompt_ids_list, completion_ids_list) -> torch.Tensor:
        """Phi [n_local, d] of this process's completions (one extra no-grad decoder pass)."""
        pad = self.processing_class.pad_token_id
        prompt_ids, prompt_mask = left_pad(prompt_ids_list, pad)
        completion_ids, completion_mask = right_pad(completion_ids_list, pad)
        model = self.accelerator.unwrap_model(self.model)
        device = next(model.parameters()).device
        feats = causal_lm_sequence_features(
            model,
            prompt_ids.to(device),
            prompt_mask.to(device),
            completion_ids.to(device),
            completion_mask.to(device),
            temperature=self.temperature,
            chunk_size=self.exploration.feature_chunk_size,
        )
        return feats.phi.float()

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)  # gathered [N, 1]
        N = rewards.shape[0]
        if self.method.needs_phi:
            prompt_ids_list, _ = self._last_token_ids
            phi = gather(self.local_features(prompt_ids_list, completion_ids_list).to(rewards.device)).cpu()
        else:  # no extra decoder pass for methods that do not read Phi
            phi = torch.zeros(N, 0)
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        if self.method.needs_encoder:  # the texts and which answers parse, gathered from every process
            parsable_local = [verify(t, x["answer"], x["kind"]).extracted is not None for t, x in zip(texts, inputs)]
            all_texts, parsable = gather_object(texts), torch.tensor(gather_object(parsable_local))
        else:
            all_texts, parsable = texts, torch.ones(N, dtype=torch.bool)
        advantages = self.shape_gathered(rewards[:, 0].cpu(), phi, parsable, all_texts)
        return advantages.view(-1, 1).to(rewards.device)

    def shape_gathered(
        self, rewards: torch.Tensor, phi: torch.Tensor, parsable: torch.Tensor, texts: list[str]
    ) -> torch.Tensor:
        """Whole-group advantages [N] from gathered rewards [N], Phi [N, d]; groups are consecutive runs of m."""
        m = self.num_generations
        G = rewards.numel() // m
        batch = GroupBatch(rewards.view(G, m), parsable.view(G, m), phi.view(G, m, -1), texts)
        advantages = self.method.advantages(batch, self.exploration, self.encode).reshape(-1)
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["g2rl/base_reward_mean"].append(rewards.mean().item())
        if self.method.needs_phi:
            for key, value in group_geometry(batch.phi, batch.rewards).items():
                if key in ("nu_mean", "nu_std", "phi_cos_mean", "phi_neg_share"):
                    self._metrics[mode][f"g2rl/{key}"].append(value)
        return advantages


def problems_dataset(problems, tokenizer=None, chat_template: bool = False):
    """A datasets.Dataset with the columns the trainer and verifier_reward need.

    The prompt is the text the native engine feeds its model (``rollout.format_prompt``), so
    both engines see identical prompts.
    """
    from datasets import Dataset

    rows = [
        {"prompt": format_prompt(tokenizer, p.prompt, chat_template), "answer": p.answer, "kind": p.kind}
        for p in problems
    ]
    return Dataset.from_list(rows)


def train_with_trl(cfg: TrainConfig, out: str, **config_overrides):
    """``g2rl train --engine trl``: the same profile, run by TRL. Returns the trainer after training."""
    from g2rl_core.evaluation.benchmarks import load_problems

    model, tokenizer = load_policy(cfg.model)
    args = grpo_config_from_profile(cfg, out, **config_overrides)
    problems = load_problems(cfg.train_data, cfg.train_kind, cfg.data_dir)
    dataset = problems_dataset(problems, tokenizer, cfg.rollout.chat_template)
    trainer = ExplorationGRPOTrainer(
        model=model,
        reward_funcs=[verifier_reward],
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        exploration=cfg,
    )
    trainer.train()
    trainer.save_model(f"{out}/final")
    tokenizer.save_pretrained(f"{out}/final")
    return trainer
