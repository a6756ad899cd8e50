"""GPU smoke test of the native trainer at Table 3 shapes, with no hub access (run by scripts/gpu_smoke.sh).

Builds a random-initialised Qwen3 from the exact Qwen3-1.7B config (28 layers, hidden 2048, 16 query /
8 KV heads, head_dim 128, intermediate 6144, vocab 151936, tied embeddings) and a word-level tokenizer
over the same 151936 ids, writes synthetic math problems, and runs ``--steps`` native training steps
(``Trainer.train_step``: rollout, verifier, micro-batched old-policy pass with Phi, reference pass,
PPO update) at 16 prompts x 16 responses, every response forced to ``--response-length`` tokens
(EOS ignored). Prints, per step and at the end:

- peak_memory_gib: peak GPU memory torch allocated (``max_memory_allocated``; vLLM in-process
  included), or the process's peak RSS on CPU;
- generation_tokens_per_s: response tokens / rollout seconds;
- training_tokens_per_s: response tokens / (step seconds - rollout seconds);
- step_time_s;
- phi_share: share of the old-policy pass spent on Phi, measured on the last batch as
  1 - t(log-probs and entropies only) / t(log-probs, entropies and Phi), same micro-batches.

``--tiny`` runs the same logic at tiny shapes on the CPU in float32 (tests/test_gpu_path.py).
Rollouts use vLLM when importable (bf16, sleep mode on CUDA), else transformers ``generate``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from g2rl_core.config import RolloutConfig, TrainConfig
from g2rl_core.engines import native
from g2rl_core.engines.native import Trainer, trimmed_rows
from g2rl_core.maths.features import lm_head_parameters, response_hidden_states, token_logprobs_and_entropy
from g2rl_core.maths.shaping import ShapingConfig
from g2rl_core.plan import KNOWN_SHAPES

#: Qwen3-1.7B-Base's config: g2rl plan's known shape plus the fields the plan does not need.
QWEN3_1_7B = dict(
    asdict(KNOWN_SHAPES["Qwen/Qwen3-1.7B-Base"]), max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-6
)
TINY = dict(QWEN3_1_7B, vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512)  # fmt: skip
EOS = "<|endoftext|>"


def build_tokenizer(vocab_size: int):
    """A word-level tokenizer whose ids cover the whole vocabulary: "w0" ... and the Qwen-style EOS/pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(vocab_size - 2)}
    vocab["<unk>"], vocab[EOS] = vocab_size - 2, vocab_size - 1
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece()  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token=EOS, pad_token=EOS)


def write_assets(workdir: Path, shape: dict, precision: str, problems: int) -> tuple[Path, Path]:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    model_dir, data = workdir / "model", workdir / "train.jsonl"
    tokenizer = build_tokenizer(shape["vocab_size"])
    config = Qwen3Config(**shape, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).to(torch.bfloat16 if precision == "bf16" else torch.float32)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    rows = [{"id": str(i), "problem": f"What is {i} plus {i + 1} ?", "answer": str(2 * i + 1)} for i in range(problems)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return model_dir, data


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def phi_share(trainer: Trainer, batch) -> tuple[float, float]:
    """(seconds of the old-policy pass with Phi, Phi's share of it) on ``batch``, same micro-batches."""
    cfg, device = trainer.cfg, trainer.device
    batch = native.batch_to(batch, device)
    trainer.model.eval()
    sync(device)
    start = time.perf_counter()
    native.micro_batched_features(
        trainer.model,
        batch,
        cfg.log_prob_micro_batch_size,
        temperature=cfg.temperature,
        chunk_size=cfg.feature_chunk_size,
    )
    sync(device)
    with_phi = time.perf_counter() - start
    N, size = batch.response_ids.shape[0], cfg.log_prob_micro_batch_size
    weight, bias = lm_head_parameters(trainer.model)
    start = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, N, size):
            prompt_ids, prompt_mask, response_ids, response_mask = trimmed_rows(batch, slice(lo, min(lo + size, N)))
            hidden = response_hidden_states(trainer.model, prompt_ids, prompt_mask, response_ids, response_mask)
            token_logprobs_and_entropy(
                hidden,
                weight,
                response_ids,
                response_mask,
                lm_head_bias=bias,
                temperature=cfg.temperature,
                chunk_size=cfg.feature_chunk_size,
            )
    sync(device)
    without = time.perf_counter() - start
    return with_phi, max(0.0, 1.0 - without / with_phi)


def force_long(trainer: Trainer, cfg: TrainConfig) -> None:
    """Every response runs to max_response_length: vLLM ignores EOS; transformers gets an EOS id it never samples."""
    backend = trainer.backend
    if cfg.rollout.backend == "vllm":
        backend.ignore_eos = True
    else:
        backend.eos = {-1}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="where the random model and data are written")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on CPU (the test's mode)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--response-length", type=int, default=None, help="default 8000 (tiny: 8)")
    parser.add_argument("--backend", choices=["auto", "vllm", "transformers"], default="auto")
    parser.add_argument("--log-prob-micro-batch", type=int, default=None, help="default 8 (tiny: 3)")
    parser.add_argument("--ppo-micro-batch", type=int, default=None, help="default 2 (tiny: 4)")
    args = parser.parse_args(argv)

    tiny = args.tiny
    precision = "float32" if tiny else "bf16"
    device = "cpu" if tiny else "auto"
    if not tiny and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA GPU visible; use --tiny for the CPU check", file=sys.stderr)
        return 2
    backend = args.backend
    if backend == "auto":
        try:
            import vllm  # noqa: F401

            backend = "transformers" if tiny else "vllm"
        except ImportError:
            backend = "transformers"
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    shape = TINY if tiny else QWEN3_1_7B
    response_length = args.response_length or (8 if tiny else 8000)
    model_dir, data = write_assets(workdir, shape, precision, problems=64)
    on_gpu = backend == "vllm" and not tiny
    rollout = RolloutConfig(
        backend=backend,
        batch_size=256,
        chat_template=False,
        dtype="bfloat16" if on_gpu else "float32",
        gpu_memory_utilization=0.3,
        enforce_eager=False,
        sleep_mode=on_gpu,
        max_model_len=response_length + 64,
    )
    cfg = TrainConfig(
        model=str(model_dir),
        train_data=str(data),
        val_data=str(data),
        prompts_per_step=2 if tiny else 16,
        rollouts_per_prompt=4 if tiny else 16,
        ppo_mini_batch_size=1,
        ppo_micro_batch_size=args.ppo_micro_batch or (4 if tiny else 2),
        log_prob_micro_batch_size=args.log_prob_micro_batch or (3 if tiny else 8),
        lr=1e-6,
        max_response_length=response_length,
        steps=args.steps,
        method="g2rl",
        shaping=ShapingConfig(lam=1.0),
        rollout=rollout,
        device=device,
        precision=precision,
        gradient_checkpointing=True,
        feature_chunk_size=1024,
        val_every=10**6,
        checkpoint_every=10**6,
    )
    print(f"gpu_smoke: shape={'tiny' if tiny else 'Qwen3-1.7B'} backend={backend} precision={precision}", flush=True)
    trainer = Trainer(cfg, workdir / "run")
    force_long(trainer, cfg)
    print(f"device={trainer.device} ({torch.cuda.get_device_name() if trainer.device.type == 'cuda' else 'cpu'})")
    timing: dict[str, object] = {}
    real_rollout = trainer.rollout

    def timed_rollout():
        sync(trainer.device)
        start = time.perf_counter()
        problems, batch = real_rollout()
        sync(trainer.device)
        timing["rollout_s"], timing["batch"] = time.perf_counter() - start, batch
        return problems, batch

    trainer.rollout = timed_rollout
    for _ in range(args.steps):
        row = trainer.train_step()
        batch = timing["batch"]
        tokens = int(batch.response_mask.sum())
        gen = timing["rollout_s"]
        print(
            f"step {row['step']}: responses={batch.response_ids.shape[0]} response_tokens={tokens} "
            f"mean_length={row['response_length_mean']:.0f} step_time_s={row['step_time_s']:.1f} "
            f"generation_tokens_per_s={tokens / gen:.0f} "
            f"training_tokens_per_s={tokens / max(row['step_time_s'] - gen, 1e-9):.0f} "
            f"peak_memory_gib={peak_memory_gib(trainer.device):.2f} loss={row['loss']:.4g}",
            flush=True,
        )
    old_pass_s, share = phi_share(trainer, timing["batch"])
    print(f"old_policy_pass_s={old_pass_s:.2f} phi_share={share:.3f}")
    print(f"peak_memory_gib={peak_memory_gib(trainer.device):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
