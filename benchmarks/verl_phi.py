"""Benchmark: the cost of Phi in verl's actor log-prob pass (PhiCaptureEngine), on CPU.

verl's FSDP engine forward path (``infer_batch``: packing, micro-batches, the model, log-probs
and entropies from the LM head's logits) timed with and without ``PHI_FLAG``, interleaved.
The model has the LM head of Qwen3-1.7B (d = 2048, V = 151936) and one decoder layer, so the
ratio is an upper bound for the full 28-layer model, whose forward costs far more than the head.
Run in .venv-verl (scripts/setup_extra.sh verl):

    .venv-verl/bin/python benchmarks/verl_phi.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM
from verl.trainer.config.config import CheckpointConfig
from verl.utils import seqlen_balancing
from verl.utils import tensordict_utils as tu
from verl.workers.config import FSDPEngineConfig, FSDPOptimizerConfig, HFModelConfig
from verl.workers.engine.fsdp import transformer_impl

from g2rl_core.engines.verl.adapter import PHI_FLAG, PHI_KEY
from g2rl_core.engines.verl.engine import PhiCaptureEngine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--response", type=int, default=192)
    args = parser.parse_args()

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29571")
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    for module in (transformer_impl, seqlen_balancing):  # verl names "cuda" when it finds no accelerator
        module.get_device_name = lambda: "cpu"
    transformer_impl.get_device_id = lambda: "cpu"
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=6144,
        num_hidden_layers=1,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        tie_word_embeddings=True,
    )
    model = Qwen3ForCausalLM(config).eval()
    with tempfile.TemporaryDirectory() as path:
        config.architectures = ["Qwen3ForCausalLM"]
        config.save_pretrained(path)
        engine = transformer_impl.FSDPEngineWithLMHead(
            HFModelConfig(path=path, load_tokenizer=False, use_remove_padding=True),
            FSDPEngineConfig(use_torch_compile=False, strategy="fsdp2"),
            FSDPOptimizerConfig(lr=1e-6),
            CheckpointConfig(),
        )
    engine.module, engine._autocast_dtype, engine.__class__ = model, torch.float32, PhiCaptureEngine

    g = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(args.sequences):
        ids = torch.randint(0, config.vocab_size, (args.prompt + args.response,), generator=g)
        mask = torch.ones(args.response, dtype=torch.int64)
        samples.append(
            {"input_ids": ids, "position_ids": torch.arange(len(ids)), "response_mask": mask, "loss_mask": mask}
        )
    samples[0] = {k: v[:-1] for k, v in samples[0].items()}  # unequal lengths: verl's nested layout

    def run(phi: bool) -> float:
        td = tu.list_of_dict_to_tensordict(samples)
        tu.assign_non_tensor(
            td,
            calculate_entropy=True,
            compute_loss=False,
            temperature=1.0,
            use_fused_kernels=False,
            use_remove_padding=True,
            use_dynamic_bsz=False,
            micro_batch_size_per_gpu=args.sequences // 2,
            **({PHI_FLAG: True} if phi else {}),
        )
        start = time.perf_counter()
        out = engine.infer_batch(td)["model_output"]
        elapsed = time.perf_counter() - start
        assert (PHI_KEY in out.keys()) == phi
        return elapsed

    run(False)  # warm-up
    times = {False: [], True: []}
    for _ in range(args.rounds):
        for phi in (False, True):
            times[phi].append(run(phi))
    base, with_phi = statistics.median(times[False]), statistics.median(times[True])
    tokens = sum(len(s["input_ids"]) for s in samples)
    response = sum(len(s["response_mask"]) for s in samples)
    print(
        f"log-prob pass, {args.sequences} sequences, {tokens} tokens ({response} response), "
        f"d=2048, V=151936, 1 layer, {torch.get_num_threads()} threads"
    )
    print(f"  without Phi: median {base:.2f} s  {[round(t, 2) for t in times[False]]}")
    print(f"  with Phi:    median {with_phi:.2f} s  {[round(t, 2) for t in times[True]]}")
    print(f"  ratio with/without: {with_phi / base:.3f}")


if __name__ == "__main__":
    main()
