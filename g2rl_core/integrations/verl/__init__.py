"""G2RL for verl (>= 0.9, pinned 0.9.1). See adapter.py for what runs and what does not."""
