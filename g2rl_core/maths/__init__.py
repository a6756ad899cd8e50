"""The paper's maths: pure functions, tensors in and tensors out, each citing its equation.

features (Phi, eq. 5-8, 14), shaping (eq. 2, 9-13), losses (eq. 4), methods (the registry of
exploration methods). Nothing here reads files or knows about engines.
"""
