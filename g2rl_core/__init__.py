"""g2rl_core: gradient-guided exploration (G2RL, arXiv:2512.15687) for GRPO-style RL."""

__version__ = "0.1.0"
