"""Which training prompts a step uses: seeded, shuffled epochs over the training set.

verl's trainer walks the training set in epochs: a ``RandomSampler`` seeded by ``data.seed``
draws a fresh permutation each epoch, and a dataloader with ``drop_last=True`` cuts it into
batches of ``train_batch_size`` prompts (volcengine/verl, verl/trainer/main_ppo.py
``create_rl_sampler`` and verl/trainer/ppo/ray_trainer.py ``_create_dataloader``). So within an
epoch no prompt repeats, and the ``n % per_step`` prompts left over at its end are skipped.

Here epoch e's permutation comes from a generator seeded by (seed, e) alone, so the prompts of
step s are a pure function of (n, per_step, seed, s): a run resumed at any step draws exactly
what an uninterrupted run would, with no sampler state to store. The permutations are not
verl's own (its generator runs on across epochs); the walk is the same.
"""

from __future__ import annotations

import random

from g2rl_core.errors import ConfigError


def epoch_order(n_prompts: int, seed: int, epoch: int) -> list[int]:
    """The permutation of ``range(n_prompts)`` that epoch ``epoch`` walks, seeded by (seed, epoch)."""
    order = list(range(n_prompts))
    random.Random(f"g2rl-prompt-order/{seed}/{epoch}").shuffle(order)  # str seeds hash with sha512: stable
    return order


def step_prompts(n_prompts: int, per_step: int, seed: int, step: int) -> list[int]:
    """Indices of the ``per_step`` training prompts of step ``step`` (0-based).

    Epoch ``step // (n_prompts // per_step)``, batch ``step % (n_prompts // per_step)`` of it.
    """
    if not 1 <= per_step <= n_prompts:
        raise ConfigError(
            f"prompts_per_step = {per_step} must be between 1 and the {n_prompts} training problems; lower it"
        )
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    epoch, batch = divmod(step, n_prompts // per_step)
    return epoch_order(n_prompts, seed, epoch)[batch * per_step : (batch + 1) * per_step]
