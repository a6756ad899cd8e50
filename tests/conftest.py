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
