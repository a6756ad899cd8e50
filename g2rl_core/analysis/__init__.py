"""Analyses of trained policies beyond the training loop (Figure 3's geometry)."""
