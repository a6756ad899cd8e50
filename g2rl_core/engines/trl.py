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
``g2rl/phi_cos_mean``, ``g2rl/phi_neg_share``, ``g2rl/base_reward_mean``, ``g2rl/accuracy`` and
``g2rl/advantage_abs_mean``. (TRL's own ``reward`` column then shows the mean of the returned
advantages, which is 0.) ``RunLogCallback`` writes ``<out>/log.jsonl`` with the native engine's
column names (``TRL_TO_NATIVE``), one row per training step, plus the native ``val`` rows.

Trackers (``TrainConfig.loggers``). Every row ``RunLogCallback`` writes to ``log.jsonl`` also goes to
each tracker in ``cfg.loggers`` through ``g2rl_core.tracking``, the code the native engine uses, with
the same keys (``train/<column>``, ``val/<column>``), the same x-axis (the training step) and the
same per-step completions table; only the main process (rank 0) opens and writes them. TRL's own
``report_to`` is always ``"none"``: for every tracker (dvclive, trackio, wandb, tensorboard) our
tracker writes, never transformers' callback, so no row is written twice. Why ours for each:
transformers' DVCLiveCallback opens ``Live(dvcyaml="dvc.yaml")`` and rewrites the repository's
dvc.yaml; and all of transformers' callbacks log TRL's own names (``rewards/...``, ``reward``,
which is 0 here) against the optimiser step, so a TRL run and a native run of the same profile
would not share a chart. The completions table comes from the hook: ``prompt`` is the text TRL fed
the policy (``format_prompt``; the native table's bare problem text when ``chat_template`` is off),
and ``nu`` / ``shaped_reward`` are filled for methods that compute Phi (g2rl) and None for the others
(grpo, entropy, evol), for which this engine runs no extra decoder pass to get Phi.

Run layout (as the native engine): ``<out>/final`` (Hugging Face format), ``<out>/log.jsonl``,
``<out>/config.json``, and TRL's own checkpoints in ``<out>/checkpoints/checkpoint-<optimizer step>``
every ``checkpoint_every`` training steps; a run resumes from the newest one.

Precision: ``precision`` (``float32`` or ``bf16``) maps to GRPOConfig's ``bf16`` explicitly; TRL's
own default (bf16 on) is never inherited. TrainConfig gains that field on the ``gpu`` branch; until
then every run is float32.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from accelerate.utils import gather, gather_object
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint
from trl import GRPOConfig, GRPOTrainer

from g2rl_core.config import PRECISIONS, RolloutConfig, TrainConfig
from g2rl_core.engines import checkpoint as ckpt
from g2rl_core.errors import ConfigError, G2RLError
from g2rl_core.evaluation.runner import mean_accuracy, sample_and_score
from g2rl_core.evaluation.verifier import verify
from g2rl_core.maths.features import causal_lm_sequence_features
from g2rl_core.maths.methods import METHODS, GroupBatch
from g2rl_core.maths.shaping import group_geometry
from g2rl_core.models import load_policy, sentence_encoder
from g2rl_core.provenance import forget_run_info
from g2rl_core.rollout import format_prompt, left_pad, make_rollout, right_pad
from g2rl_core.runlock import run_lock
from g2rl_core.tracking import Trackers, completions_table, open_trackers, read_log, remove_tracker_files

# TRL's log_history names -> the native engine's log.jsonl columns (engines/native.py, Trainer.train_step).
TRL_TO_NATIVE = {
    "g2rl/base_reward_mean": "reward_mean",
    "g2rl/accuracy": "accuracy",
    "completions/mean_length": "response_length_mean",
    "entropy": "entropy_mean",
    "loss": "loss",
    "kl": "kl",
    "clip_ratio/region_mean": "clip_frac",
    "grad_norm": "grad_norm",
    "g2rl/nu_mean": "nu_mean",
    "g2rl/nu_std": "nu_std",
    "g2rl/nu_min": "nu_min",
    "g2rl/nu_max": "nu_max",
    "g2rl/phi_cos_mean": "phi_cos_mean",
    "g2rl/phi_neg_share": "phi_neg_share",
    "g2rl/advantage_abs_mean": "advantage_abs_mean",
    "learning_rate": "lr",
}


def verifier_reward(completions, answer, kind, **kwargs) -> list[float]:
    """TRL reward function: +1 / -1 from our verifier (no parsable answer: -1)."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [verify(text, gold, k).reward for text, gold, k in zip(texts, answer, kind)]


def precision_flags(precision: str) -> dict[str, bool]:
    """GRPOConfig's ``bf16``/``fp16`` for a profile's ``precision`` (never TRL's default, which is bf16 on)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision = {precision!r} is not allowed; choose one of {list(PRECISIONS)}")
    return {"bf16": precision == "bf16", "fp16": False}


def optimizer_steps_per_step(cfg: TrainConfig) -> int:
    """TRL counts optimiser steps; one training step is ``prompts_per_step / ppo_mini_batch_size`` of them."""
    return (cfg.prompts_per_step * cfg.rollouts_per_prompt) // (cfg.ppo_mini_batch_size * cfg.rollouts_per_prompt)


def grpo_config_from_profile(cfg: TrainConfig, output_dir: str, **overrides) -> GRPOConfig:
    """A GRPOConfig with the same Table 3 settings as our trainer's ``TrainConfig``.

    Batch sizes: a training step sees ``prompts_per_step * rollouts_per_prompt`` completions,
    split into mini-batches of ``ppo_mini_batch_size`` prompts (one optimiser step each).
    TRL's unit is the per-device micro-batch; ``steps_per_generation`` mini-batches reuse one
    generation, as in verl.

    Memory settings come from the profile: ``precision`` (bf16/fp32, explicit), ``gradient_checkpointing``
    and, with ``rollout.backend: vllm``, vLLM colocated on the training GPUs with sleep mode. Checkpoints:
    every ``checkpoint_every`` training steps, the newest ``keep_checkpoints`` kept. One log row per
    training step (``logging_steps``).
    """
    completions = cfg.prompts_per_step * cfg.rollouts_per_prompt
    per_step = optimizer_steps_per_step(cfg)
    use_vllm = cfg.rollout.backend == "vllm"
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
        # TRL's schedule counts optimiser steps: the same warm-up length in training steps as verl and the native
        # engine (lr_schedule), though TRL's factor also rises within a training step
        warmup_steps=cfg.lr_warmup_steps * per_step,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.grad_clip if cfg.grad_clip > 0 else 1e9,
        beta=cfg.kl_coef if cfg.use_kl_loss else 0.0,
        epsilon=cfg.clip_ratio,
        delta=cfg.dual_clip_ratio,  # two-sided clip: bounds -A * ratio at -A * delta for A < 0 (verl clip_ratio_c)
        loss_type="dapo",  # token-mean over the accumulated mini-batch
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=0,
        max_completion_length=cfg.max_response_length,
        max_steps=cfg.steps * per_step,
        seed=cfg.seed,
        entropy_coef=cfg.entropy_coeff if METHODS[cfg.method].uses_entropy_bonus else 0.0,
        scale_rewards="none",  # the hook returns finished eq. 2 advantages
        use_vllm=use_vllm,
        **({"vllm_mode": "colocate", "vllm_enable_sleep_mode": True} if use_vllm else {}),
        gradient_checkpointing=cfg.gradient_checkpointing,
        **precision_flags(cfg.precision),
        logging_steps=per_step,
        report_to="none",  # cfg.loggers are written by RunLogCallback through g2rl_core.tracking (module docstring)
        save_strategy="steps",
        save_steps=cfg.checkpoint_every * per_step,
        save_total_limit=cfg.keep_checkpoints,
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
        self.completions: list[dict] = []  # the last generation's completions table (main process, with loggers)

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
        if self.exploration.loggers:  # every process takes part in the gathers; the main process keeps the table
            self.completions = self.gathered_completions(inputs, texts, all_texts, rewards[:, 0].cpu(), phi, advantages)
        return advantages.view(-1, 1).to(rewards.device)

    def gathered_completions(self, inputs, texts, all_texts, rewards, phi, advantages) -> list[dict]:
        """The step's completions table (``tracking.completions_table``) over every process's completions."""
        prompts = gather_object([x["prompt"] for x in inputs])
        answers = gather_object([str(x["answer"]) for x in inputs])
        if len(all_texts) != len(prompts):  # texts not gathered by the method (no encoder)
            all_texts = gather_object(texts)
        if not self.accelerator.is_main_process:
            return []
        m = self.num_generations
        G = rewards.numel() // m
        step = self.state.global_step // optimizer_steps_per_step(self.exploration) + 1
        return completions_table(
            step,
            prompts[::m],
            answers[::m],
            all_texts,
            rewards.view(G, m),
            phi.view(G, m, -1) if self.method.needs_phi else None,
            advantages.view(G, m),
            self.exploration.shaping,
        )

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
        self._metrics[mode]["g2rl/accuracy"].append((rewards > 0).float().mean().item())
        self._metrics[mode]["g2rl/advantage_abs_mean"].append(advantages.abs().mean().item())
        if self.method.needs_phi:
            for key, value in group_geometry(batch.phi, batch.rewards).items():
                if key in ("nu_mean", "nu_std", "nu_min", "nu_max", "phi_cos_mean", "phi_neg_share"):
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


def native_row(logs: dict, step: int, completions: int, seconds: float) -> dict:
    """A TRL log dict (one training step) as a native ``log.jsonl`` train row (``TRL_TO_NATIVE``).

    ``step_time_s`` is the wall time of the training step (generation included), measured by the
    caller; ``tokens_per_s`` is the step's response tokens over it, as in the native engine.
    """
    row = {"kind": "train", "step": step}
    row.update({ours: float(logs[theirs]) for theirs, ours in TRL_TO_NATIVE.items() if theirs in logs})
    row["step_time_s"] = seconds
    if "completions/mean_length" in logs and seconds > 0:
        row["tokens_per_s"] = float(logs["completions/mean_length"]) * completions / seconds
    return row


class RunLogCallback(TrainerCallback):
    """Writes ``<out>/log.jsonl`` on the main process: a native train row per training step, val rows
    every ``val_every`` steps and at step 0 and the last step (``validate(model)`` gives the row).

    Every row also goes to ``trackers`` (open on the main process only), and after each train row the
    step's completions table, read from ``completions()`` (the trainer's ``completions``)."""

    def __init__(self, cfg: TrainConfig, log_path: Path, validate, trackers: Trackers | None = None, completions=None):
        self.cfg, self.log_path, self.validate = cfg, Path(log_path), validate
        self.trackers = trackers if trackers is not None else Trackers()
        self.completions = completions or (lambda: [])
        self.per_step = optimizer_steps_per_step(cfg)
        self.clock = time.perf_counter()

    def write(self, row: dict) -> None:
        try:
            with self.log_path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
        except OSError as err:
            raise G2RLError(f"cannot append to {self.log_path}: {err.strerror or err}; free disk space") from None
        self.trackers.log_row(row)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and state.global_step == 0:
            self.write({**self.validate(model), "step": 0})
        self.clock = time.perf_counter()

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if not state.is_world_process_zero or not logs or "loss" not in logs:  # not a training-step log
            return
        step = state.global_step // self.per_step
        completions = self.cfg.prompts_per_step * self.cfg.rollouts_per_prompt
        self.write(native_row(logs, step, completions, time.perf_counter() - self.clock))
        table = [row for row in self.completions() if row["step"] == step]
        if table:
            self.trackers.log_completions(step, table)
        if step % self.cfg.val_every == 0 or step == self.cfg.steps:
            self.write({**self.validate(model), "step": step})
        self.clock = time.perf_counter()


def validation_fn(cfg: TrainConfig, tokenizer, val_problems):
    """``validate(model)`` -> the native engine's val row: mean@val_samples on ``val_data`` (transformers sampling)."""

    def validate(model) -> dict:
        rollout = RolloutConfig(
            backend="transformers", batch_size=cfg.rollout.batch_size, chat_template=cfg.rollout.chat_template
        )
        was_training = model.training
        model.eval()
        backend = make_rollout(rollout, model, tokenizer, model_path=cfg.model, seed=cfg.seed)
        samples = sample_and_score(
            backend,
            val_problems,
            n=cfg.val_samples,
            temperature=cfg.val_temperature,
            top_p=cfg.top_p,
            max_new_tokens=cfg.max_response_length,
            seed=cfg.seed * 1_000_003 + 10**6,
        )
        model.train(was_training)
        return {
            "kind": "val",
            f"val_mean_at_{cfg.val_samples}": mean_accuracy(samples),
            "val_response_length_mean": sum(s.response_tokens for s in samples) / len(samples),
        }

    return validate


def prepare_run_dir(cfg: TrainConfig, out: Path, restart_on_config_change: bool) -> str | None:
    """The checkpoint to resume from (None: start afresh), after checking ``out/config.json``.

    A run directory written with another config is refused (``ConfigError``), or emptied of its
    checkpoints and log with ``restart_on_config_change``. Log rows past the checkpoint are dropped.
    """
    checkpoints, log_path, config_path = out / ckpt.CHECKPOINTS, out / "log.jsonl", out / "config.json"
    latest = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if latest is not None and config_path.exists():
        try:
            old = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = {}
        changed = ckpt.run_differences(old, cfg)
        if changed and not restart_on_config_change:
            raise ConfigError(
                f"{config_path} was written with a different config or base model (fields {changed}); use a new --out "
                "or --on-config-change restart"
            )
        if changed:
            import shutil

            shutil.rmtree(checkpoints)
            remove_tracker_files(out)
            latest = None
    if latest is None:
        log_path.unlink(missing_ok=True)
        forget_run_info(out)
        return None
    state = json.loads((Path(latest) / "trainer_state.json").read_text())
    if log_path.exists():
        ckpt.truncate_log(log_path, state["global_step"] // optimizer_steps_per_step(cfg))
    return latest


def train_with_trl(
    cfg: TrainConfig, out: str, restart_on_config_change: bool = False, callbacks: Sequence = (), **config_overrides
):
    """``g2rl train --engine trl``: the same profile, run by TRL, resumed from the newest checkpoint in
    ``out``. Writes the native run layout (``final/``, ``log.jsonl``, ``config.json``). Returns the trainer.
    ``callbacks``: more ``TrainerCallback`` objects for TRL's trainer (benchmarks/trl_step.py times steps with one)."""
    from g2rl_core.evaluation.benchmarks import load_problems

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    problems = load_problems(cfg.train_data, cfg.train_kind, cfg.data_dir)  # data errors before the model loads
    val_problems = load_problems(cfg.val_data, cfg.val_kind, cfg.data_dir)[: cfg.val_problems]
    ckpt.check_keep(cfg.keep_checkpoints)
    main_process = int(os.environ.get("RANK", "0")) == 0  # accelerate launch: one process per device
    with run_lock(out_dir) if main_process else contextlib.nullcontext():
        trackers = Trackers()
        if main_process:
            resume = prepare_run_dir(cfg, out_dir, restart_on_config_change)
            ckpt.atomic_write_bytes(out_dir / "config.json", json.dumps(ckpt.run_identity(cfg), indent=1).encode())
            trackers = open_trackers(  # rank 0 only; dvclive is rebuilt from the (truncated) log.jsonl
                cfg.loggers,
                out_dir,
                run_name=f"{out_dir.name}-{cfg.method}-seed{cfg.seed}",
                config=cfg.to_dict(),
                history=read_log(out_dir / "log.jsonl"),
                resume_step=resumed_step(resume, cfg),
            )
        else:  # the other processes only read which checkpoint to resume from
            checkpoints = out_dir / ckpt.CHECKPOINTS
            resume = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
        try:
            model, tokenizer = load_policy(cfg.model)
            args = grpo_config_from_profile(cfg, str(out_dir / ckpt.CHECKPOINTS), **config_overrides)
            dataset = problems_dataset(problems, tokenizer, cfg.rollout.chat_template)
            run_log = RunLogCallback(
                cfg, out_dir / "log.jsonl", validation_fn(cfg, tokenizer, val_problems), trackers=trackers
            )
            trainer = ExplorationGRPOTrainer(
                model=model,
                reward_funcs=[verifier_reward],
                args=args,
                train_dataset=dataset,
                processing_class=tokenizer,
                exploration=cfg,
                callbacks=[run_log, *callbacks],
            )
            run_log.completions = lambda: trainer.completions
            trainer.train(resume_from_checkpoint=resume)
            trainer.save_model(str(out_dir / "final"))
            if trainer.accelerator.is_main_process:
                tokenizer.save_pretrained(str(out_dir / "final"))
        finally:
            trackers.close()
    return trainer


def resumed_step(checkpoint: str | None, cfg: TrainConfig) -> int:
    """The training step a TRL checkpoint was written at (0 without one)."""
    if checkpoint is None:
        return 0
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    return state["global_step"] // optimizer_steps_per_step(cfg)
