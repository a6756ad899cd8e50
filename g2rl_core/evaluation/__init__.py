"""Evaluation: benchmarks (loading), verifier (rewards and grading), metrics (pass@k, maj@k, CIs), runner."""
