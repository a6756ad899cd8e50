"""GRPO with four interchangeable exploration methods (grpo, entropy, evol, g2rl).

Read top to bottom; the maths lives in ``features`` / ``shaping`` and each method's
reward transform in ``methods.METHODS``. Design choices:

- A step takes ``prompts_per_step`` prompts from seeded, shuffled epochs over the training set
  (``prompt_order``, as verl's dataloader) and samples ``rollouts_per_prompt`` responses each.
  Both depend only on (seed, step), so a resumed run draws exactly what an uninterrupted one would.
- Rewards are +1 / -1 from the verifier (no parsable answer: -1).
- Placement and precision: policy, reference and every batch tensor live on ``cfg.device``
  ("auto": the GPU when there is one); ``precision: bf16`` holds weights and runs the decoder in
  bfloat16, while Phi's softmax, log-probs, entropies and sums stay float32 (``features``
  accumulates in float32 for any non-float64 input), and so do the loss and advantages. On the
  CPU, policy and reference run grouped-query attention inside SDPA (``rollout.decode.use_gqa_sdpa``:
  no copies of repeated key/value heads; the forward's bits unchanged, gradients to rounding).
- Every no-grad pass (old policy with Phi unless ``old_policy_from_rollout``, reference) runs over micro-batches of
  ``log_prob_micro_batch_size`` responses, each trimmed to its own padding width, so its peak
  memory depends on the micro-batch, not on prompts_per_step x rollouts_per_prompt.
  ``gradient_checkpointing`` recomputes decoder activations in the update's backward.
- ONE old-policy pass gives the log-probs, entropies and Phi of every response, for every
  method, so geometry (nu, Phi cosines) is logged for all of them. With ``old_policy_from_rollout``
  that pass is the sampling loop itself: the policy sampled the responses in float32 and its logits
  at each step already give p_t, so no separate forward pass runs (equal to float32 rounding).
- Advantages come from the method registry, one scalar per response, broadcast to tokens.
- Loss (eq. 4, ``maths.losses.ppo_clip_loss``): PPO clipped surrogate with ratio pi_theta / pi_old
  and verl's dual clip for negative advantages, plus kl_coef * k3 KL to the frozen reference
  (verl's low_var_kl), minus entropy_coeff * entropy for methods with an entropy bonus;
  token-mean over each mini-batch. A mini-batch is ``ppo_mini_batch_size`` prompts (all their
  responses) and is one optimiser step; micro-batches of ``ppo_micro_batch_size`` responses
  accumulate gradients. Learning rate: verl's linear warm-up from 0, then constant (``lr_schedule``).
- Every ``checkpoint_every`` steps a checkpoint is written (``engines.checkpoint``: safetensors
  weights, weights-only state, config sidecar, sha256 manifest, atomic, the last
  ``keep_checkpoints`` kept); ``train`` holds ``out``'s run lock, resumes from the newest
  checkpoint and drops log rows past it, and stops before checkpointing if a step's loss,
  gradient norm or weights are not finite.
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import get_constant_schedule_with_warmup, set_seed

from g2rl_core.config import ConfigError, TrainConfig
from g2rl_core.engines import checkpoint as ckpt
from g2rl_core.errors import G2RLError
from g2rl_core.evaluation.benchmarks import load_problems
from g2rl_core.evaluation.runner import mean_accuracy, sample_and_score
from g2rl_core.evaluation.verifier import verify
from g2rl_core.maths.features import (
    SequenceFeatures,
    causal_lm_sequence_features,
    lm_head_parameters,
    response_hidden_states,
    token_logprobs_and_entropy,
)
from g2rl_core.maths.losses import ppo_clip_loss
from g2rl_core.maths.methods import METHODS, GroupBatch
from g2rl_core.maths.shaping import group_geometry
from g2rl_core.models import load_policy, resolve_device, sentence_encoder
from g2rl_core.plan import require_fit
from g2rl_core.prompt_order import step_prompts
from g2rl_core.provenance import forget_run_info
from g2rl_core.rollout import RolloutBatch, make_rollout
from g2rl_core.rollout.decode import fast_loop_refusal, use_gqa_sdpa
from g2rl_core.runlock import run_lock
from g2rl_core.tracking import Trackers, completions_table, open_trackers, read_log, remove_tracker_files


def lr_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """verl's actor schedule (``lr_warmup_steps``, constant after): stepped once per training step.

    transformers' ``get_constant_schedule_with_warmup``, the formula verl 0.9.1's
    ``verl.utils.torch_functional.get_constant_schedule_with_warmup`` also uses: training step
    s (from 0) runs at ``lr * s / warmup_steps`` while s < warmup_steps, then at ``lr``; so with a
    warm-up the first step runs at lr 0, as in verl. Without one (every profile) the factor is 1.0.
    """
    return get_constant_schedule_with_warmup(optimizer, warmup_steps)


def step_seed(seed: int, step: int) -> int:
    return seed * 1_000_003 + step


def trimmed_rows(batch: RolloutBatch, rows: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(prompt_ids, prompt_mask, response_ids, response_mask) of ``rows`` without all-padding columns.

    Prompts are left-padded, so leading columns no row attends to are dropped; responses are
    right-padded, so trailing ones are. Positions count attended tokens only
    (``features.final_hidden_states``), so trimming changes no valid token's position. At least one
    prompt column and one response column are kept.
    """
    prompt_ids, prompt_mask = batch.prompt_ids[rows], batch.prompt_mask[rows]
    response_ids, response_mask = batch.response_ids[rows], batch.response_mask[rows]
    used_prompt = prompt_mask.any(0).nonzero()
    first = int(used_prompt[0]) if used_prompt.numel() else prompt_mask.shape[1] - 1
    used_response = response_mask.any(0).nonzero()
    width = int(used_response[-1]) + 1 if used_response.numel() else 1
    return prompt_ids[:, first:], prompt_mask[:, first:], response_ids[:, :width], response_mask[:, :width]


def pad_right(x: torch.Tensor, width: int) -> torch.Tensor:
    """[n, w] -> [n, width] with zeros on the right (differentiable)."""
    return F.pad(x, (0, width - x.shape[1]))


def batch_to(batch: RolloutBatch, device: torch.device) -> RolloutBatch:
    """The batch with every tensor on ``device`` (texts unchanged)."""
    reported, policy = batch.sampler_logprobs, batch.policy_features
    return RolloutBatch(
        batch.prompt_ids.to(device),
        batch.prompt_mask.to(device),
        batch.response_ids.to(device),
        batch.response_mask.to(device),
        batch.texts,
        None if reported is None else reported.to(device),
        None
        if policy is None
        else SequenceFeatures(*(t.to(device) for t in (policy.phi, policy.logprobs, policy.entropy))),
    )


@torch.no_grad()
def micro_batched_features(
    model: torch.nn.Module,
    batch: RolloutBatch,
    micro_batch_size: int,
    *,
    temperature: float,
    chunk_size: int | None,
) -> SequenceFeatures:
    """The old-policy pass (Phi eq. 8, log-probs, entropies) over micro-batches of ``micro_batch_size`` responses.

    Equal to ``causal_lm_sequence_features`` over the whole batch on every valid token (each
    micro-batch is trimmed to its own padding width; outputs are zero-padded back to [N, R]).
    """
    N, R = batch.response_ids.shape
    phis, logps, ents = [], [], []
    for start in range(0, N, micro_batch_size):
        rows = slice(start, min(start + micro_batch_size, N))
        out = causal_lm_sequence_features(
            model, *trimmed_rows(batch, rows), temperature=temperature, chunk_size=chunk_size
        )
        phis.append(out.phi)
        logps.append(pad_right(out.logprobs, R))
        ents.append(pad_right(out.entropy, R))
    return SequenceFeatures(phi=torch.cat(phis), logprobs=torch.cat(logps), entropy=torch.cat(ents))


class Trainer:
    def __init__(self, cfg: TrainConfig, out: str | Path):
        self.cfg, self.out = cfg, Path(out)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        set_seed(cfg.seed)  # Python, NumPy and torch generators: a checkpoint's saved states are reproducible too
        self.train_problems = load_problems(cfg.train_data, cfg.train_kind, cfg.data_dir)  # data errors first
        self.val_problems = load_problems(cfg.val_data, cfg.val_kind, cfg.data_dir)[: cfg.val_problems]
        if len(self.train_problems) < cfg.prompts_per_step:
            raise ConfigError(
                f"prompts_per_step = {cfg.prompts_per_step} exceeds the {len(self.train_problems)} "
                f"problems in {cfg.train_data}"
            )
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda":  # a run that cannot fit says what it needs before anything loads
            require_fit(cfg, torch.cuda.get_device_properties(self.device).total_memory)
        self.model, self.tokenizer = load_policy(cfg.model, device=self.device, precision=cfg.precision)
        use_gqa_sdpa(self.model)  # CPU: grouped-query attention inside SDPA, here and in the reference's copy
        self.identity = ckpt.run_identity(cfg)  # config + base model digest, hashed once; every checkpoint records it
        # the reference: same precision, same device, never trained, never checkpointed
        self.ref = copy.deepcopy(self.model).eval().requires_grad_(False) if cfg.use_kl_loss else None
        if cfg.gradient_checkpointing:  # HF recomputes each decoder layer in backward (training mode only)
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.model.config.use_cache = False
        self.backend = make_rollout(cfg.rollout, self.model, self.tokenizer, model_path=cfg.model, seed=cfg.seed)
        self.method = METHODS[cfg.method]
        self.encode = sentence_encoder(cfg.encoder) if self.method.needs_encoder else None
        # fused: one kernel per parameter, the same update to rounding (TRL's default optimiser, adamw_torch_fused)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True
        )
        self.scheduler = lr_schedule(self.optimizer, cfg.lr_warmup_steps)
        self.step = 0
        self.trackers = Trackers()  # opened by train() (cfg.loggers)
        self.completions: list[dict] = []  # the last step's completions table, when trackers are open

    # --- checkpoints (layout and guarantees: g2rl_core.engines.checkpoint) -------------------------
    @property
    def checkpoints_dir(self) -> Path:
        return self.out / ckpt.CHECKPOINTS

    @property
    def log_path(self) -> Path:
        return self.out / "log.jsonl"

    def save_checkpoint(self) -> Path:
        """Weights (safetensors), step/optimiser/scheduler/RNG (read back weights-only), config JSON, sha256s."""
        # The schedule is a function of the config (lr_schedule); only its position is state. Its
        # lambdas are stored as None, as torch stores plain functions, so a checkpoint's bytes do not
        # depend on how that function is built.
        scheduler = self.scheduler.state_dict() | {"lr_lambdas": [None] * len(self.scheduler.lr_lambdas)}
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": scheduler,
            "rng": ckpt.capture_rng(),
        }
        return ckpt.save_checkpoint(
            self.checkpoints_dir,
            self.step,
            self.model,
            state,
            self.identity,
            keep=self.cfg.keep_checkpoints,
        )

    @staticmethod
    def discard_stale_checkpoint(cfg: TrainConfig, out: str | Path) -> bool:
        """Delete the checkpoints and log in ``out`` if they were written with another config, base model or format.

        Reads only the checkpoint's config sidecar (checked against its sha256).
        """
        out = Path(out)
        if not out.is_dir():
            return False
        with run_lock(out):
            legacy = out / ckpt.LEGACY_NAME
            latest = ckpt.latest_checkpoint(out / ckpt.CHECKPOINTS)
            stale = legacy.exists() or (
                latest is not None and bool(ckpt.run_differences(ckpt.read_config(latest), cfg))
            )
            if stale:
                legacy.unlink(missing_ok=True)
                ckpt.remove_checkpoints(out / ckpt.CHECKPOINTS)
                (out / "log.jsonl").unlink(missing_ok=True)
                remove_tracker_files(out)
                forget_run_info(out)
            return stale

    def maybe_resume(self) -> None:
        """Resume from the newest checkpoint in ``out`` (verified); drop log rows written after it."""
        legacy = self.out / ckpt.LEGACY_NAME
        if legacy.exists():
            raise ckpt.legacy_checkpoint_error(legacy)
        ckpt.clean_partial(self.checkpoints_dir)
        latest = ckpt.latest_checkpoint(self.checkpoints_dir)
        if latest is None:  # a new run, or one killed before its first checkpoint: start afresh
            self.log_path.unlink(missing_ok=True)
            forget_run_info(self.out)
            return
        changed = ckpt.run_differences(ckpt.read_config(latest), self.cfg)
        if changed:
            raise ConfigError(
                f"{latest} was written with a different config or base model (fields {changed}); use a new --out"
            )
        state = ckpt.load_checkpoint(latest, self.model)
        for group in state["optimizer"]["param_groups"]:  # saved moments, today's kernel: a checkpoint
            group["fused"] = self.optimizer.defaults["fused"]  # from before fused AdamW resumes fused
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        ckpt.restore_rng(state["rng"])
        self.step = state["step"]
        self.backend.sync_weights(self.model)
        if self.log_path.exists():  # rows written after the checkpoint will be written again
            ckpt.truncate_log(self.log_path, self.step)

    def log(self, row: dict) -> None:
        try:
            with self.log_path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
        except OSError as err:
            raise G2RLError(f"cannot append to {self.log_path}: {err.strerror or err}; free disk space") from None
        self.trackers.log_row(row)

    # --- one step -----------------------------------------------------------------------------
    def rollout(self) -> tuple[list, RolloutBatch]:
        cfg = self.cfg
        order = step_prompts(len(self.train_problems), cfg.prompts_per_step, cfg.seed, self.step)  # shuffled epochs
        problems = [self.train_problems[i] for i in order]
        batch = self.backend.generate(
            [p.prompt for p in problems],
            n=cfg.rollouts_per_prompt,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_new_tokens=cfg.max_response_length,
            seed=step_seed(cfg.seed, self.step),
            policy_features=cfg.old_policy_from_rollout,
        )
        return problems, batch

    def logprobs(self, model: torch.nn.Module, batch: RolloutBatch, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs, entropies [n, R] (float32) of responses ``rows`` under ``model`` (update and reference pass).

        The rows are trimmed to their own padding width for the forward and zero-padded back to R.
        """
        prompt_ids, prompt_mask, response_ids, response_mask = trimmed_rows(batch, rows)
        hidden = response_hidden_states(model, prompt_ids, prompt_mask, response_ids, response_mask)
        weight, bias = lm_head_parameters(model)
        logp, entropy = token_logprobs_and_entropy(
            hidden,
            weight,
            response_ids,
            response_mask,
            lm_head_bias=bias,
            temperature=self.cfg.temperature,
            chunk_size=self.cfg.feature_chunk_size,
        )
        R = batch.response_ids.shape[1]
        return pad_right(logp, R), pad_right(entropy, R)

    @torch.no_grad()
    def reference_logprobs(self, batch: RolloutBatch) -> torch.Tensor:
        """[N, R] log-probs under the frozen reference, over micro-batches of ``log_prob_micro_batch_size``."""
        N, size = batch.response_ids.shape[0], self.cfg.log_prob_micro_batch_size
        return torch.cat([self.logprobs(self.ref, batch, slice(s, min(s + size, N)))[0] for s in range(0, N, size)])

    def update(self, batch: RolloutBatch, advantages: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs) -> dict:
        """PPO-clip epochs over mini-batches (one optimiser step each) of micro-batches (eq. 4, ``ppo_clip_loss``)."""
        cfg = self.cfg
        per_mini, N = cfg.ppo_mini_batch_size * cfg.rollouts_per_prompt, batch.response_ids.shape[0]
        sums: dict[str, float] = defaultdict(float)
        losses, grad_norms = [], []
        self.model.train()
        for _ in range(cfg.ppo_epochs):
            for lo in range(0, N, per_mini):
                hi = min(lo + per_mini, N)
                mini_tokens = batch.response_mask[lo:hi].sum().clamp(min=1)
                self.optimizer.zero_grad(set_to_none=True)
                mini_loss = 0.0
                for start in range(lo, hi, cfg.ppo_micro_batch_size):
                    rows = slice(start, min(start + cfg.ppo_micro_batch_size, hi))
                    logp, entropy = self.logprobs(self.model, batch, rows)
                    loss, stats = ppo_clip_loss(
                        logp,
                        old_logprobs[rows],
                        advantages[rows],
                        batch.response_mask[rows],
                        clip_ratio=cfg.clip_ratio,
                        dual_clip_ratio=cfg.dual_clip_ratio,
                        ref_logp=None if ref_logprobs is None else ref_logprobs[rows],
                        kl_coef=cfg.kl_coef,
                        entropy=entropy if self.method.uses_entropy_bonus else None,
                        entropy_coeff=cfg.entropy_coeff,
                        normalizer=mini_tokens,
                    )
                    loss.backward()
                    mini_loss += loss.item()
                    for key, value in stats.items():
                        sums[key] += value.item()
                max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
                grad_norms.append(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm).item())
                losses.append(mini_loss)
                self.optimizer.step()
                self.backend.sync_weights(self.model)
        self.model.eval()
        self.scheduler.step()
        tokens = max(sums["tokens"], 1.0)
        return {
            "loss": sum(losses) / len(losses),
            "kl": sums["kl"] / tokens,
            "clip_frac": sums["clipped"] / tokens,
            "grad_norm": sum(grad_norms) / len(grad_norms),
        }

    def train_step(self) -> dict:
        cfg, start = self.cfg, time.perf_counter()
        G, m = cfg.prompts_per_step, cfg.rollouts_per_prompt
        problems, batch = self.rollout()
        sleep = getattr(self.backend, "sleep", None)
        if sleep is not None:  # vLLM sleep mode: free its KV cache and weights while the policy trains
            sleep()
        batch = batch_to(batch, self.device)
        verdicts = [verify(text, problems[i // m].answer, problems[i // m].kind) for i, text in enumerate(batch.texts)]
        rewards = torch.tensor([v.reward for v in verdicts]).view(G, m)
        parsable = torch.tensor([v.extracted is not None for v in verdicts]).view(G, m)
        self.model.eval()
        old = batch.policy_features  # old_policy_from_rollout: the sampling loop's own, else a pass of its own
        if old is None:
            if cfg.old_policy_from_rollout:
                warnings.warn(
                    f"old_policy_from_rollout: the sampling loop is refused here ({fast_loop_refusal(self.model)}), "
                    "so the old-policy pass runs",
                    stacklevel=1,
                )
            old = micro_batched_features(
                self.model,
                batch,
                cfg.log_prob_micro_batch_size,
                temperature=cfg.temperature,
                chunk_size=cfg.feature_chunk_size,
            )
        ref_logprobs = self.reference_logprobs(batch) if self.ref is not None else None
        phi = old.phi.view(G, m, -1).cpu()  # the method's maths (groups, shaping) runs on small CPU tensors
        advantages = self.method.advantages(GroupBatch(rewards, parsable, phi, batch.texts), cfg, self.encode).reshape(
            -1
        )
        if self.trackers:
            self.completions = completions_table(
                self.step + 1,
                [p.prompt for p in problems],
                [str(p.answer) for p in problems],
                batch.texts,
                rewards,
                phi,
                advantages.view(G, m),
                cfg.shaping,
            )
        stats = self.update(batch, advantages.float().to(self.device), old.logprobs, ref_logprobs)
        wake = getattr(self.backend, "wake_up", None)
        if wake is not None:
            wake()
        mask = batch.response_mask.float()
        entropy_mean = ((old.entropy * mask).sum() / mask.sum()).item()
        mask = mask.cpu()
        seconds = time.perf_counter() - start
        self.step += 1
        return {
            "kind": "train",
            "step": self.step,
            "reward_mean": rewards.mean().item(),
            "accuracy": (rewards > 0).float().mean().item(),
            "response_length_mean": mask.sum(1).mean().item(),
            "entropy_mean": entropy_mean,
            **stats,
            **group_geometry(phi, rewards),
            "advantage_abs_mean": advantages.abs().mean().item(),
            "lr": self.scheduler.get_last_lr()[0],
            "step_time_s": seconds,
            "tokens_per_s": mask.sum().item() / seconds,
        }

    def validate(self) -> dict:
        cfg = self.cfg
        samples = sample_and_score(
            self.backend,
            self.val_problems,
            n=cfg.val_samples,
            temperature=cfg.val_temperature,
            top_p=cfg.top_p,
            max_new_tokens=cfg.max_response_length,
            seed=step_seed(cfg.seed, 10**6),
        )
        return {
            "kind": "val",
            "step": self.step,
            f"val_mean_at_{cfg.val_samples}": mean_accuracy(samples),
            "val_response_length_mean": sum(s.response_tokens for s in samples) / len(samples),
        }

    # --- the loop -------------------------------------------------------------------------------
    def train(self) -> Path:
        """Run (or resume) to ``cfg.steps``; returns the directory of the final model.

        Holds the run lock on ``out`` throughout; stops with ``NonFiniteError`` (before checkpointing)
        when a step's loss, gradient norm or weights are not finite.
        """
        ckpt.check_keep(self.cfg.keep_checkpoints)
        with run_lock(self.out):
            return self._train_locked()

    def _train_locked(self) -> Path:
        self.maybe_resume()
        ckpt.atomic_write_bytes(self.out / "config.json", json.dumps(self.cfg.to_dict(), indent=1).encode())
        self.trackers = open_trackers(
            self.cfg.loggers,
            self.out,
            run_name=f"{self.out.name}-{self.cfg.method}-seed{self.cfg.seed}",
            config=self.cfg.to_dict(),
            history=read_log(self.log_path),
            resume_step=self.step,
        )
        try:
            return self._loop()
        finally:
            self.trackers.close()
            self.trackers = Trackers()

    def _loop(self) -> Path:
        bar = tqdm(
            total=self.cfg.steps, initial=self.step, desc=f"train {self.cfg.method} seed {self.cfg.seed}", unit="step"
        )
        if self.step == 0:
            self.log(self.validate())
        while self.step < self.cfg.steps:
            row = self.train_step()
            self.log(row)
            self.trackers.log_completions(self.step, self.completions)
            ckpt.raise_if_non_finite(row, self.model, ckpt.latest_checkpoint(self.checkpoints_dir))
            if self.step % self.cfg.val_every == 0 or self.step == self.cfg.steps:
                self.log(self.validate())
            if self.step % self.cfg.checkpoint_every == 0 or self.step == self.cfg.steps:
                self.save_checkpoint()
            bar.set_postfix(acc=f"{row['accuracy']:.2f}", nu=f"{row['nu_mean']:.2f}", s=f"{row['step_time_s']:.2f}")
            bar.update(1)
        bar.close()
        final = self.out / "final"
        self.model.save_pretrained(final)
        self.tokenizer.save_pretrained(final)
        return final
