import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def tiny_qwen3(*, tie_word_embeddings: bool, vocab_size: int = 97, hidden_size: int = 32, seed: int = 0):
    """A random 2-layer Qwen3ForCausalLM built offline from a config."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden_size // 4,
        max_position_embeddings=128,
        tie_word_embeddings=tie_word_embeddings,
    )
    model = Qwen3ForCausalLM(config).eval()
    # Random init gives near-uniform p_t; sharpen the head so the test is not trivial.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(20.0)
    return model


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A small base model (2 layers, d=64) after a short warm start, its task data, and a params file."""
    import json

    import yaml

    from g2rl_core.pipeline import tiny

    root = tmp_path_factory.mktemp("tiny")
    paths = tiny.write_task(root / "data", seed=0)
    tokenizer = tiny.build_tokenizer()
    model = tiny.build_model(
        tokenizer,
        tiny.TinyModelConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1
        ),  # head_dim 32: a size vLLM's CPU attention supports
    )
    rows = [json.loads(line) for line in open(paths["train"])]
    tiny.sft(model, tokenizer, rows, [], tiny.SFTConfig(steps=40, batch_size=16, warmup_steps=5))
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    train = {
        "model": str(root / "base"),
        "train_data": str(paths["train"]),
        "val_data": str(paths["hard"]),
        "prompts_per_step": 4,
        "rollouts_per_prompt": 4,
        "ppo_mini_batch_size": 2,
        "ppo_micro_batch_size": 8,
        "lr": 1.0e-3,
        "max_response_length": 40,
        "steps": 12,
        "val_every": 4,
        "val_problems": 4,
        "val_samples": 2,
        "checkpoint_every": 3,
        "threads": 1,
        "feature_chunk_size": 64,
    }
    params = {
        "profile": "tiny",
        "methods": ["grpo", "g2rl"],
        "seeds": [0],
        "ablation": [{"variant": "centered", "lam": 1.0}],
        "profiles": {
            "tiny": {
                "train": train,
                "methods": {
                    "grpo": {},
                    "entropy": {"entropy_coeff": 0.01},
                    "g2rl": {"shaping": {"lam": 1.0, "variant": "equation"}},
                },
                "eval": {
                    "n": 4,
                    "ks": [1, 4],
                    "max_new_tokens": 40,
                    "benchmarks": {
                        "math500": {"source": str(paths["easy"])},
                        "aime25": {"source": str(paths["hardest"])},
                        "gpqa_diamond": {"source": str(paths["choice"]), "kind": "choice"},
                        "mmlu_pro": {"source": str(paths["choice10"]), "kind": "choice", "n": 2, "ks": [1]},
                    },
                },
                "geometry": {"source": str(paths["hardest"]), "problems": 3, "samples": 4},
            }
        },
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root
