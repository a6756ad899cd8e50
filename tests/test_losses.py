"""The policy loss of eq. 4 (``maths.losses``) on hand-computed cases."""

import math

import pytest
import torch

from g2rl_core.maths.losses import k3_kl, ppo_clip_loss


def _case():
    # Two valid tokens and one padding token; ratios pi/pi_old = 0.5/0.4 = 1.25 and 0.3/0.4 = 0.75.
    logp = torch.log(torch.tensor([[0.5, 0.3, 0.9]], dtype=torch.float64)).requires_grad_(True)
    old = torch.log(torch.tensor([[0.4, 0.4, 0.1]], dtype=torch.float64))
    mask = torch.tensor([[1, 1, 0]])
    return logp, old, mask


def test_positive_advantage_clips_the_upper_side():
    logp, old, mask = _case()
    loss, stats = ppo_clip_loss(logp, old, torch.tensor([1.0], dtype=torch.float64), mask, clip_ratio=0.2)
    # token 0: max(-1.25, -clip(1.25) = -1.2) = -1.2 (clipped); token 1: max(-0.75, -0.8) = -0.75.
    assert loss.item() == pytest.approx((-1.2 - 0.75) / 2)
    assert stats["tokens"].item() == 2 and stats["clipped"].item() == 1
    loss.backward()
    # The clipped token has no gradient; token 1: d(-r)/dlogp = -r = -0.75, over 2 tokens. Padding: none.
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -0.375, 0.0]], dtype=torch.float64))


def test_negative_advantage_clips_the_lower_side():
    logp, old, mask = _case()
    loss, stats = ppo_clip_loss(logp, old, torch.tensor([-1.0], dtype=torch.float64), mask, clip_ratio=0.2)
    # token 0: max(1.25, 1.2) = 1.25; token 1: max(0.75, clip(0.75) = 0.8) = 0.8 (clipped).
    assert loss.item() == pytest.approx((1.25 + 0.8) / 2)
    assert stats["clipped"].item() == 1
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[1.25 / 2, 0.0, 0.0]], dtype=torch.float64))


def test_k3_kl_by_hand_and_in_the_loss():
    # logp = log 0.5, ref = log 0.25: d = ref - logp = log 0.5; k3 = e^d - d - 1 = 0.5 + log 2 - 1.
    logp = torch.log(torch.tensor([[0.5]], dtype=torch.float64))
    ref = torch.log(torch.tensor([[0.25]], dtype=torch.float64))
    expected = 0.5 + math.log(2) - 1
    assert k3_kl(logp, ref).item() == pytest.approx(expected)
    assert k3_kl(logp, logp).item() == 0.0
    assert k3_kl(torch.tensor([0.0]), torch.tensor([-100.0])).item() == 10.0  # e^-20 + 20 - 1 = 19, clamped to 10
    assert k3_kl(torch.tensor([0.0]), torch.tensor([-3.0])).item() == pytest.approx(math.exp(-3) + 3 - 1)
    loss, stats = ppo_clip_loss(
        logp,
        logp,
        torch.tensor([0.0], dtype=torch.float64),
        torch.ones(1, 1),
        clip_ratio=0.2,
        ref_logp=ref,
        kl_coef=0.1,
    )
    # A = 0 leaves only the KL term: 0.1 * k3.
    assert loss.item() == pytest.approx(0.1 * expected)
    assert stats["kl"].item() == pytest.approx(expected)


def test_entropy_bonus_is_subtracted():
    logp, old, mask = _case()
    entropy = torch.tensor([[2.0, 4.0, 100.0]], dtype=torch.float64)
    base, _ = ppo_clip_loss(logp, old, torch.tensor([1.0], dtype=torch.float64), mask, clip_ratio=0.2)
    loss, stats = ppo_clip_loss(
        logp, old, torch.tensor([1.0], dtype=torch.float64), mask, clip_ratio=0.2, entropy=entropy, entropy_coeff=0.01
    )
    # token-mean of H over the valid tokens = 3 (padding's 100 excluded); the loss drops by 0.01 * 3.
    assert (base - loss).item() == pytest.approx(0.03)
    assert stats["entropy"].item() == pytest.approx(6.0)


def test_token_mean_over_a_mini_batch_spread_across_micro_batches():
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(4, 5, generator=g, dtype=torch.float64).requires_grad_(True)
    old = logp.detach() + 0.3 * torch.randn(4, 5, generator=g, dtype=torch.float64)
    ref = logp.detach() + 0.2 * torch.randn(4, 5, generator=g, dtype=torch.float64)
    adv = torch.tensor([1.0, -0.5, 2.0, -1.5], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
    kwargs = dict(clip_ratio=0.2, kl_coef=0.05)
    whole, _ = ppo_clip_loss(logp, old, adv, mask, ref_logp=ref, **kwargs)
    whole.backward()
    grad_whole = logp.grad.clone()
    logp.grad = None
    tokens = mask.sum()
    total = 0.0
    for rows in (slice(0, 1), slice(1, 3), slice(3, 4)):  # uneven micro-batches, as ppo_micro_batch_size makes
        part, _ = ppo_clip_loss(
            logp[rows], old[rows], adv[rows], mask[rows], ref_logp=ref[rows], normalizer=tokens, **kwargs
        )
        part.backward()
        total += part.item()
    assert total == pytest.approx(whole.item())
    torch.testing.assert_close(logp.grad, grad_whole)
    # Without the shared normalizer each micro-batch would be its own mean: a different loss.
    parts = [
        ppo_clip_loss(logp[r], old[r], adv[r], mask[r], ref_logp=ref[r], **kwargs)[0].item()
        for r in (slice(0, 1), slice(1, 3), slice(3, 4))
    ]
    assert sum(parts) != pytest.approx(whole.item())


def test_dual_clip_bounds_negative_advantages_and_the_log_ratio_is_clamped():
    # ratio = 5 (log 5) with A = -1: PPO-clip gives max(5, clip(5) = 1.2) = 5; dual clip c = 3 bounds it at 3.
    logp = torch.tensor([[math.log(5.0), math.log(5.0)]], dtype=torch.float64).requires_grad_(True)
    old = torch.zeros(1, 2, dtype=torch.float64)
    mask = torch.ones(1, 2)
    adv = torch.tensor([[-1.0, 1.0]], dtype=torch.float64)  # per-token advantages: one negative, one positive
    plain, _ = ppo_clip_loss(logp, old, adv, mask, clip_ratio=0.2)
    dual, _ = ppo_clip_loss(logp, old, adv, mask, clip_ratio=0.2, dual_clip_ratio=3.0)
    # token 0: 5 -> 3 under the dual clip; token 1 (A > 0): max(-5, -1.2) = -1.2 either way.
    assert plain.item() == pytest.approx((5.0 - 1.2) / 2)
    assert dual.item() == pytest.approx((3.0 - 1.2) / 2)
    dual.backward()
    torch.testing.assert_close(logp.grad, torch.zeros(1, 2, dtype=torch.float64))  # both tokens are clipped
    with pytest.raises(ValueError, match="dual_clip_ratio"):
        ppo_clip_loss(logp, old, adv, mask, clip_ratio=0.2, dual_clip_ratio=1.0)
    # log r = 50 is clamped to 20 before exp: finite, and equal to the loss at log r = 20.
    huge, _ = ppo_clip_loss(
        torch.full((1, 1), 50.0), torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1), clip_ratio=0.2
    )
    assert huge.item() == pytest.approx(math.exp(20.0))
