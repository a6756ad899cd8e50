"""g2rl_core: gradient-guided exploration (G2RL, arXiv:2512.15687) for GRPO-style RL.

The public API, imported lazily (``import g2rl_core`` loads neither torch nor transformers):

- G2RL's maths (pure functions, tensors in and out): ``sequence_features`` / ``causal_lm_sequence_features``
  (Phi, eq. 5-8; ``response_hidden_states``, ``lm_head_parameters`` and ``token_logprobs_and_entropy``
  for the update pass), ``exploration_scores`` (nu, eq. 9-11), ``normalize_scores``, ``shape_rewards``
  (eq. 12-13, section 2.5), ``grpo_advantages`` (eq. 2), ``ppo_clip_loss`` / ``k3_kl`` (eq. 4), ``ShapingConfig``.
- Methods: ``METHODS``, ``Method``, ``GroupBatch``, ``register``.
- Config: ``TrainConfig``, ``load_profile``; engine: ``Trainer``; verifier: ``verify``.
- Errors: ``G2RLError``, ``ConfigError``, ``DataError``, ``DataFileNotFoundError``.

See docs/own-loop.md for G2RL inside your own GRPO loop.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "g2rl_core.maths.features": (
        "SequenceFeatures",
        "sequence_features",
        "causal_lm_sequence_features",
        "response_hidden_states",
        "lm_head_parameters",
        "token_logprobs_and_entropy",
    ),
    "g2rl_core.maths.shaping": (
        "ShapingConfig",
        "exploration_scores",
        "normalize_scores",
        "shape_rewards",
        "grpo_advantages",
        "pairwise_cosine",
        "group_geometry",
    ),
    "g2rl_core.maths.losses": ("ppo_clip_loss", "k3_kl"),
    "g2rl_core.maths.methods": ("METHODS", "Method", "GroupBatch", "register"),
    "g2rl_core.config": ("TrainConfig", "load_profile"),
    "g2rl_core.engines.native": ("Trainer",),
    "g2rl_core.evaluation.verifier": ("verify", "Verdict"),
    "g2rl_core.errors": ("G2RLError", "ConfigError", "DataError", "DataFileNotFoundError"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = ["__version__", *_WHERE]


def __getattr__(name: str) -> Any:
    """PEP 562: import the module that defines ``name`` on first use."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'g2rl_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
