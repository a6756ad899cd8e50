"""Adapters that let distributed RL engines (TRL, verl) call g2rl_core's maths."""
