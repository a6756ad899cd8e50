"""``g2rl plan``: the memory estimate against memory measured on the CPU, and the printed plan.

The measurement runs one update micro-batch (the trainer's own functions: ``response_hidden_states``,
``token_logprobs_and_entropy``, a loss, backward) of a random Qwen3 in a fresh process, with glibc
told to serve every allocation above 64 KiB by mmap so that freed tensors leave the resident set.
The peak resident set (VmHWM, reset through /proc/self/clear_refs after the weights and gradients
exist) minus the resident set before the pass is the pass's activation peak.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from g2rl_core.config import TrainConfig
from g2rl_core.errors import ConfigError
from g2rl_core.pipeline.cli import main
from g2rl_core.plan import KNOWN_SHAPES, ModelShape, memory_plan, model_shape, update_activation_bytes

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
TOLERANCE = 0.10  # |estimate / measured - 1| for the update pass at these shapes

SHAPES = [  # (hidden, intermediate, layers, heads, kv heads, head_dim, vocab, responses, prompt, response, ckpt)
    (256, 1024, 2, 4, 2, 64, 8192, 4, 32, 224, False),
    (256, 1024, 2, 4, 2, 64, 8192, 4, 32, 224, True),
    (512, 1536, 3, 8, 4, 64, 4096, 2, 64, 448, False),
    (512, 1536, 3, 8, 4, 64, 4096, 2, 64, 448, True),
    (128, 768, 4, 4, 1, 32, 32768, 8, 16, 112, False),
]


def _vm(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(key)


def measure(d, inter, layers, heads, kv, head_dim, vocab, responses, prompt, response, ckpt) -> dict:
    """Peak activation bytes of one update micro-batch, in this process (run it in a fresh one)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from g2rl_core.maths.features import lm_head_parameters, response_hidden_states, token_logprobs_and_entropy

    torch.manual_seed(0)
    torch.set_num_threads(1)
    config = Qwen3Config(
        vocab_size=vocab,
        hidden_size=d,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=head_dim,
        tie_word_embeddings=True,
        max_position_embeddings=1024,
    )
    model = Qwen3ForCausalLM(config).train()
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    g = torch.Generator().manual_seed(0)
    prompt_ids = torch.randint(0, vocab, (responses, prompt), generator=g)
    prompt_mask = torch.ones(responses, prompt, dtype=torch.long)
    prompt_mask[0, :3] = 0  # left padding: the pass runs with a padding mask, as in training
    response_ids = torch.randint(0, vocab, (responses, response), generator=g)
    response_mask = torch.ones(responses, response, dtype=torch.long)

    def one_pass():
        hidden = response_hidden_states(model, prompt_ids, prompt_mask, response_ids, response_mask)
        weight, bias = lm_head_parameters(model)
        logp, entropy = token_logprobs_and_entropy(
            hidden, weight, response_ids, response_mask, lm_head_bias=bias, chunk_size=1024
        )
        (logp.sum() + 1e-3 * entropy.sum()).backward()

    one_pass()  # gradients exist from here on, as in any step after the first micro-batch
    model.zero_grad(set_to_none=False)
    Path("/proc/self/clear_refs").write_text("5")
    before = _vm("VmRSS")
    one_pass()
    return {"peak": _vm("VmHWM") - before}


def estimate(d, inter, layers, heads, kv, head_dim, vocab, responses, prompt, response, ckpt) -> float:
    shape = ModelShape(vocab, d, inter, layers, heads, kv, head_dim)
    return update_activation_bytes(shape, 4, responses, prompt, response, 1024, ckpt)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc peak-RSS reset")
@pytest.mark.parametrize(
    "case", SHAPES, ids=[f"d{s[0]}-L{s[2]}-V{s[6]}-b{s[7]}{'-ckpt' if s[10] else ''}" for s in SHAPES]
)
def test_update_activation_estimate_matches_measured_peak(case):
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, __file__, json.dumps(case)], capture_output=True, text=True, env=env, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    measured = json.loads(out.stdout.strip().splitlines()[-1])["peak"]
    predicted = estimate(*case)
    assert abs(predicted / measured - 1) <= TOLERANCE, (predicted / 2**20, measured / 2**20)


def test_checkpointing_shrinks_the_decoder_term_and_known_shapes_count_parameters():
    # Qwen3-1.7B-Base has 1.72 B parameters with tied embeddings, Qwen3-4B-Base 4.02 B (their model cards)
    assert round(KNOWN_SHAPES["Qwen/Qwen3-1.7B-Base"].parameters() / 1e9, 2) == 1.72
    assert round(KNOWN_SHAPES["Qwen/Qwen3-4B-Base"].parameters() / 1e9, 2) == 4.02
    shape = KNOWN_SHAPES["Qwen/Qwen3-1.7B-Base"]
    full = update_activation_bytes(shape, 2, 2, 1024, 8192, 1024, False)
    ckpt = update_activation_bytes(shape, 2, 2, 1024, 8192, 1024, True)
    assert ckpt < full / 2


def test_plan_scales_with_the_micro_batch_not_the_step():
    shape = KNOWN_SHAPES["Qwen/Qwen3-1.7B-Base"]
    small = memory_plan(TrainConfig(prompts_per_step=2, precision="bf16"), shape)
    large = memory_plan(TrainConfig(prompts_per_step=64, precision="bf16"), shape)
    assert small["training_peak"] == large["training_peak"]
    doubled = memory_plan(TrainConfig(ppo_micro_batch_size=4, precision="bf16"), shape)
    assert doubled["parts"]["update_activations"] > 1.9 * small["parts"]["update_activations"] - 1


def test_model_shape_reads_a_local_config(tmp_path):
    config = {"vocab_size": 100, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1}
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_attention_heads": 2}))
    shape = model_shape(str(tmp_path))
    assert (shape.head_dim, shape.num_key_value_heads, shape.tie_word_embeddings) == (4, 2, False)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match="config.json.*num_attention_heads"):
        model_shape(str(tmp_path))


@pytest.mark.parametrize(
    ("profile", "gib", "fits"), [("paper-1_7b", 80, True), ("paper-4b", 80, False), ("paper-4b", 141, True)]
)
def test_g2rl_plan_prints_the_paper_profiles(profile, gib, fits, capsys):
    assert main(["plan", "--params", str(PARAMS), "--profile", profile, "--device-memory-gib", str(gib)]) == 0
    text = capsys.readouterr().out
    assert "weights" in text and "vLLM share" in text and "12 runs x 200 steps x 256 responses" in text
    assert ("the run fits" in text) == fits and ("does NOT fit" in text) == (not fits)


def test_trainer_on_a_gpu_too_small_says_what_it_needs_before_loading(monkeypatch, tmp_path, shared_data):
    import torch

    from g2rl_core.engines import native

    class Props:
        total_memory = 16 * 2**30

    loaded = []
    monkeypatch.setattr(native, "resolve_device", lambda device: torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props())
    monkeypatch.setattr(native, "load_policy", lambda *a, **k: loaded.append(a))
    from g2rl_core.config import load_profile

    cfg = load_profile("paper-smoke", PARAMS).train_config(
        "g2rl", 0, model="Qwen/Qwen3-1.7B-Base", data_dir=str(shared_data)
    )
    with pytest.raises(ConfigError, match=r"needs about .* GiB on one device .* the device has 16.0 GiB"):
        native.Trainer(dataclasses.replace(cfg, max_response_length=8192, ppo_micro_batch_size=2), tmp_path)
    assert not loaded


if __name__ == "__main__":  # one measurement, in a fresh process
    print(json.dumps(measure(*json.loads(sys.argv[1]))))
