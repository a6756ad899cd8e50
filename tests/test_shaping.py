"""Properties of eq. 2 and 9-13 (grpo_advantages, exploration_scores, shape_rewards)."""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from g2rl_core.errors import ConfigError
from g2rl_core.maths.shaping import (
    ShapingConfig,
    exploration_scores,
    grpo_advantages,
    normalize_scores,
    pairwise_cosine,
    shape_rewards,
)

groups = st.integers(1, 3)
sizes = st.integers(1, 6)
dims = st.integers(1, 5)
variants = st.sampled_from(["equation", "centered"])
normalizations = st.sampled_from(["minmax", "none"])


def _case(seed, G, m, d):
    g = torch.Generator().manual_seed(seed)
    phi = torch.randn(G, m, d, generator=g, dtype=torch.float64)
    rewards = torch.where(torch.rand(G, m, generator=g) > 0.5, 1.0, -1.0).double()
    return phi, rewards


def test_grpo_advantages_hand_checked():
    r = torch.tensor([[1.0, -1.0, -1.0, -1.0]])
    # mean -0.5, population std sqrt(0.75 + eps)
    s = math.sqrt(0.75 + 1e-6)
    torch.testing.assert_close(grpo_advantages(r), torch.tensor([[1.5 / s, -0.5 / s, -0.5 / s, -0.5 / s]]))


def test_exploration_scores_hand_checked():
    # Three responses: 0 and 1 orthogonal, 2 at 45 degrees between them; rewards +1, +1, -1.
    phi = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]], dtype=torch.float64)
    r = torch.tensor([[1.0, 1.0, -1.0]], dtype=torch.float64)
    e, ei = math.e, 1 / math.e
    # S^2: S01 = 0, S02 = S12 = 1/sqrt(2) -> 0.5
    nu0 = 1 - (ei / (e + ei)) * 0.5
    nu1 = 1 - (ei / (e + ei)) * 0.5
    nu2 = 1 - (e / (2 * e)) * 0.5 - (e / (2 * e)) * 0.5
    torch.testing.assert_close(exploration_scores(phi, r), torch.tensor([[nu0, nu1, nu2]], dtype=torch.float64))


def test_shape_rewards_hand_checked():
    r = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    nu = torch.tensor([[0.2, 0.6, 0.2, 1.0]])  # minmax -> [0, 0.5, 0, 1]
    eq = shape_rewards(r, nu, lam=1.0, variant="equation")
    torch.testing.assert_close(eq, torch.tensor([[1.0, 1.5, -1.0, 0.0]]))
    cen = shape_rewards(r, nu, lam=1.0, variant="centered")
    torch.testing.assert_close(cen, torch.tensor([[0.0, 1.0, 0.0, -2.0]]))
    # The prose reading: the most novel incorrect response is penalised more, not less.
    assert cen[0, 3] < -1 < eq[0, 3]
    # Clipping binds for large lam: r + 5 nubar = [1, 3.5, -1, 4] -> clip at 3.
    torch.testing.assert_close(shape_rewards(r, nu, lam=5.0, variant="equation"), torch.tensor([[1.0, 3.0, -1.0, 3.0]]))


def test_centered_refuses_lam_above_one():
    """At lam = 2 the centered factor 1 + 2 (2 nubar - 1) is -1 for the most redundant response (nubar = 0):
    a redundant correct answer would get -1 and a redundant wrong one +1, against the prose it implements."""
    r = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    nu = torch.tensor([[0.2, 0.6, 0.2, 1.0]])
    with pytest.raises(ConfigError, match="lam > 1"):
        shape_rewards(r, nu, lam=2.0, variant="centered")
    with pytest.raises(ConfigError, match="lam > 1"):
        ShapingConfig(lam=1.5, variant="centered")
    shape_rewards(r, nu, lam=1.0, variant="centered")  # the boundary is allowed
    ShapingConfig(lam=2.0, variant="equation")


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), G=groups, m=sizes, d=dims)
def test_nu_in_unit_interval(seed, G, m, d):
    phi, r = _case(seed, G, m, d)
    nu = exploration_scores(phi, r)
    assert nu.shape == (G, m)
    assert torch.all((nu >= 0) & (nu <= 1))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), G=groups, m=sizes, d=dims, log_scale=st.floats(-1, 3), which=st.integers(0, 5))
def test_nu_invariant_to_positive_rescaling(seed, G, m, d, log_scale, which):
    phi, r = _case(seed, G, m, d)
    # Norms in [0.5, 2] before scaling, so the eps of eq. 9 moves nu by < 1e-6.
    phi = phi / phi.norm(dim=-1, keepdim=True) * (0.5 + 1.5 * torch.rand(G, m, 1, dtype=phi.dtype))
    scaled = phi.clone()
    scaled[:, which % m] *= 10.0**log_scale
    torch.testing.assert_close(exploration_scores(scaled, r), exploration_scores(phi, r), rtol=1e-6, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    G=groups,
    m=sizes,
    d=dims,
    lam=st.floats(0, 4),
    variant=variants,
    normalize=normalizations,
    data=st.data(),
)
def test_permutation_equivariance(seed, G, m, d, lam, variant, normalize, data):
    phi, r = _case(seed, G, m, d)
    perm = torch.tensor(data.draw(st.permutations(list(range(m)))))
    nu = exploration_scores(phi, r)
    nu_p = exploration_scores(phi[:, perm], r[:, perm])
    torch.testing.assert_close(nu_p, nu[:, perm])
    assume(variant == "equation" or lam <= 1)
    shaped = shape_rewards(r, nu, lam=lam, variant=variant, normalize=normalize)
    shaped_p = shape_rewards(r[:, perm], nu_p, lam=lam, variant=variant, normalize=normalize)
    torch.testing.assert_close(shaped_p, shaped[:, perm])
    torch.testing.assert_close(grpo_advantages(shaped_p), grpo_advantages(shaped)[:, perm])


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    G=groups,
    m=sizes,
    lam=st.floats(0, 20),
    clip=st.floats(0.5, 5),
    variant=variants,
    normalize=normalizations,
)
def test_shaped_rewards_are_clipped(seed, G, m, lam, clip, variant, normalize):
    g = torch.Generator().manual_seed(seed)
    r = torch.where(torch.rand(G, m, generator=g) > 0.5, 1.0, -1.0)
    nu = torch.rand(G, m, generator=g)
    lam = lam if variant == "equation" else lam / 20  # centered: lam <= 1
    shaped = shape_rewards(r, nu, lam=lam, clip=clip, variant=variant, normalize=normalize)
    assert torch.all(shaped.abs() <= clip)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), G=groups, m=sizes, d=dims, variant=variants, normalize=normalizations)
def test_lam_zero_is_exactly_grpo(seed, G, m, d, variant, normalize):
    phi, r = _case(seed, G, m, d)
    nu = exploration_scores(phi, r)
    shaped = shape_rewards(r, nu, lam=0.0, variant=variant, normalize=normalize)
    assert torch.equal(grpo_advantages(shaped), grpo_advantages(r))


@pytest.mark.parametrize("variant", ["equation", "centered"])
def test_equation_reading_keeps_correct_above_incorrect_for_lam_below_two(variant):
    g = torch.Generator().manual_seed(0)
    r = torch.where(torch.rand(50, 8, generator=g) > 0.5, 1.0, -1.0)
    nu = torch.rand(50, 8, generator=g)
    shaped = shape_rewards(r, nu, lam=1.9, variant="equation")
    worst_correct = torch.where(r > 0, shaped, torch.inf).amin(1)
    best_incorrect = torch.where(r < 0, shaped, -torch.inf).amax(1)
    assert torch.all(worst_correct > best_incorrect)


def test_degenerate_groups_are_finite_and_documented():
    # m = 1: no other response -> nu = 1, nubar = 0.5, advantage 0.
    phi = torch.randn(2, 1, 4)
    r = torch.tensor([[1.0], [-1.0]])
    nu = exploration_scores(phi, r)
    assert torch.equal(nu, torch.ones(2, 1))
    assert torch.equal(normalize_scores(nu), torch.full((2, 1), 0.5))
    assert torch.equal(grpo_advantages(shape_rewards(r, nu, lam=1.0)), torch.zeros(2, 1))

    # All-zero features: cosine 0 with everything -> nu = 1.
    assert torch.equal(exploration_scores(torch.zeros(1, 4, 3), torch.ones(1, 4)), torch.ones(1, 4))

    # Identical features: nu ~ 0 (eps-close), finite.
    same = torch.ones(1, 4, 3, dtype=torch.float64)
    r4 = torch.tensor([[1.0, -1.0, 1.0, -1.0]], dtype=torch.float64)
    nu_same = exploration_scores(same, r4)
    assert torch.all(nu_same >= 0) and torch.all(nu_same < 1e-6)
    # Opposite directions are as redundant as parallel ones (squared cosine).
    opposite = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]], dtype=torch.float64)
    assert torch.all(exploration_scores(opposite, torch.ones(1, 2, dtype=torch.float64)) < 1e-6)

    # All rewards equal: GRPO gives 0; shaped advantages are finite standardised nubar.
    r_eq = torch.ones(1, 4, dtype=torch.float64)
    phi4 = torch.randn(1, 4, 3, dtype=torch.float64)
    assert torch.equal(grpo_advantages(r_eq), torch.zeros(1, 4))
    adv = grpo_advantages(shape_rewards(r_eq, exploration_scores(phi4, r_eq), lam=1.0))
    assert torch.all(torch.isfinite(adv))
    nubar = normalize_scores(exploration_scores(phi4, r_eq))
    torch.testing.assert_close(adv, grpo_advantages(nubar), rtol=1e-5, atol=1e-5)

    # Identical features and equal rewards: every output is finite, advantages 0.
    flat = exploration_scores(same, r_eq)
    assert torch.equal(grpo_advantages(shape_rewards(r_eq, flat, lam=1.0)), torch.zeros(1, 4, dtype=torch.float64))


def test_pairwise_cosine_diagonal_is_one_for_nonzero():
    phi = torch.randn(2, 3, 5, dtype=torch.float64)
    S = pairwise_cosine(phi)
    torch.testing.assert_close(torch.diagonal(S, dim1=1, dim2=2), torch.ones(2, 3, dtype=torch.float64))


def test_errors_name_the_bad_argument():
    r = torch.ones(2, 3)
    with pytest.raises(ValueError, match="variant"):
        shape_rewards(r, r, lam=1.0, variant="prose")
    with pytest.raises(ValueError, match="normalize"):
        shape_rewards(r, r, lam=1.0, normalize="rank")
    with pytest.raises(ValueError, match="lam"):
        shape_rewards(r, r, lam=-1.0)
    with pytest.raises(ValueError, match="lam"):
        shape_rewards(r, r, lam=float("nan"))
    with pytest.raises(ValueError, match="clip"):
        shape_rewards(r, r, lam=1.0, clip=float("inf"))
    with pytest.raises(ValueError, match="phi"):
        exploration_scores(torch.ones(2, 3), r)
    with pytest.raises(ValueError, match="rewards"):
        grpo_advantages(torch.ones(3))
