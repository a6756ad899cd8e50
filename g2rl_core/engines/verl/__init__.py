"""G2RL for verl (>= 0.9, pinned 0.9.1).

adapter.py (shaping), engine.py (Phi in the actor), trainer.py (trainer_mode g2rl).
"""
