"""Training engines that share the maths: native (our readable trainer), trl (multi-GPU), verl (clusters)."""
