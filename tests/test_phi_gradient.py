"""Phi versus exact per-response gradients (issue 15): gradients against autograd, statistics on known data."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_qwen3

from g2rl_core.analysis import phi_gradient as pg
from g2rl_core.maths.shaping import exploration_scores, pairwise_cosine


def reference_gradient(model, prompt, response, temperature):
    """d/dtheta of mean_t log p(y_t) by plain autograd through the Hugging Face forward (logits included)."""
    model.zero_grad(set_to_none=True)
    ids = torch.cat([prompt, response]).unsqueeze(0)
    logits = model(input_ids=ids).logits[0, prompt.numel() - 1 : -1]
    logp = torch.log_softmax(logits / temperature, -1).gather(-1, response.unsqueeze(-1)).squeeze(-1)
    logp.mean().backward()
    grads = {name: p.grad.detach().reshape(-1).clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_response_gradient_matches_autograd(tied, temperature):
    model = tiny_qwen3(tie_word_embeddings=tied).double()
    gen = torch.Generator().manual_seed(1)
    prompt, response = torch.randint(0, 97, (5,), generator=gen), torch.randint(0, 97, (9,), generator=gen)
    ours = pg.response_gradient(model, prompt, response, temperature=temperature)
    ref = reference_gradient(model, prompt, response, temperature)
    assert set(ref) <= set(ours)
    for name, g in ref.items():
        # eq. 8's normaliser has an eps of 1e-8 (relative 1e-9), amplified by cancellation in the deep layers.
        assert g.norm() > 0 and (ours[name] - g).norm() <= 1e-6 * g.norm(), name
    assert all(p.grad is None for p in model.parameters()), "response_gradient must not touch .grad"


def test_head_block_is_eq6_outer_product():
    """d l / d W through the head alone = (1/T) sum_t a_t (e(y_t) - p_t) h_t^T (eq. 6, summed over tokens)."""
    T = 0.8
    model = tiny_qwen3(tie_word_embeddings=True)
    gen = torch.Generator().manual_seed(2)
    prompt, response = torch.randint(0, 97, (4,), generator=gen), torch.randint(0, 97, (7,), generator=gen)
    ours = pg.response_gradient(model, prompt, response, temperature=T)
    with torch.no_grad():
        ids = torch.cat([prompt, response]).unsqueeze(0)
        h = model.base_model(input_ids=ids).last_hidden_state[0, prompt.numel() - 1 : -1]
        W = model.get_output_embeddings().weight
        p = torch.softmax(h @ W.T / T, -1)
        residual = torch.nn.functional.one_hot(response, 97).float() - p
        expected = residual.T @ h / (T * response.numel())
    torch.testing.assert_close(ours[pg.HEAD_BLOCK], expected.reshape(-1), rtol=1e-4, atol=1e-7)
    # Tied: W's full gradient is the head use plus the input-embedding use, which is not zero here.
    embed_name = next(n for n, q in model.named_parameters() if q is W)
    assert not torch.allclose(ours[embed_name], ours[pg.HEAD_BLOCK])


def test_untied_head_block_is_the_head_parameter_gradient():
    model = tiny_qwen3(tie_word_embeddings=False)
    prompt, response = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6, 7])
    ours = pg.response_gradient(model, prompt, response)
    torch.testing.assert_close(ours["lm_head.weight"], ours[pg.HEAD_BLOCK])


def test_parameter_groups_cover_the_model():
    model = tiny_qwen3(tie_word_embeddings=True)
    groups = pg.parameter_groups(model)
    names = [n for n, _ in model.named_parameters()]
    assert groups["all"] == names
    layered = groups["embedding"] + groups["final_norm"] + [n for k in range(2) for n in groups[f"layer_{k}"]]
    assert sorted(layered) == sorted(names), "layers, embedding and final norm partition the parameters"
    assert groups["last_layer"] == groups["layer_1"] and groups["lm_head"] == [pg.HEAD_BLOCK]


def test_group_grams_strip_padding_and_give_full_gradient_cosines():
    model = tiny_qwen3(tie_word_embeddings=True)
    prompts = [[3, 4, 5], [3, 4, 5], [6, 7], [6, 7]]
    responses = [[10, 11, 12, 13], [20, 21], [30, 31, 32], [40]]
    P, R = 3, 4
    prompt_ids = torch.zeros(4, P, dtype=torch.long)
    prompt_mask = torch.zeros(4, P, dtype=torch.long)
    response_ids = torch.zeros(4, R, dtype=torch.long)
    response_mask = torch.zeros(4, R, dtype=torch.long)
    for k, (p, r) in enumerate(zip(prompts, responses)):
        prompt_ids[k, P - len(p) :], prompt_mask[k, P - len(p) :] = torch.tensor(p), 1
        response_ids[k, : len(r)], response_mask[k, : len(r)] = torch.tensor(r), 1
    grams = pg.group_gradient_grams(model, prompt_ids, prompt_mask, response_ids, response_mask, group_size=2)
    full = [reference_gradient(model, torch.tensor(p), torch.tensor(r), 1.0) for p, r in zip(prompts, responses)]
    flat = torch.stack([torch.cat(list(g.values())) for g in full]).double()
    for g in range(2):
        a, b = flat[2 * g], flat[2 * g + 1]
        expected = (a @ b / (a.norm() * b.norm())).item()
        cos = pg.GradientGrams(grams.grams).cosine(pg.parameter_groups(model)["all"])
        assert cos[g, 0, 1].item() == pytest.approx(expected, abs=1e-6)
        assert cos[g, 0, 0].item() == pytest.approx(1.0, abs=1e-9)


def test_nu_from_cosines_equals_nu_from_vectors():
    gen = torch.Generator().manual_seed(3)
    vectors = torch.randn(5, 6, 40, generator=gen, dtype=torch.float64)
    rewards = torch.randint(0, 2, (5, 6), generator=gen).double() * 2 - 1
    direct = exploration_scores(vectors, rewards)
    via_cos = exploration_scores(pg.vectors_with_cosines(pairwise_cosine(vectors)), rewards)
    torch.testing.assert_close(via_cos, direct, rtol=0, atol=1e-7)


# --- statistics on synthetic data with known answers ---------------------------------------------


def bivariate_normal(rho, n_clusters=200, per_cluster=50, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n_clusters * per_cluster, 2))
    x = z[:, 0]
    y = rho * z[:, 0] + math.sqrt(1 - rho**2) * z[:, 1]
    return x, y, np.repeat(np.arange(n_clusters), per_cluster)


@pytest.mark.parametrize("rho", [0.6, -0.3, 0.0])
def test_correlation_statistics_recover_known_values(rho):
    x, y, clusters = bivariate_normal(rho)
    truths = {
        pg.pearson: rho,
        pg.spearman: 6 / math.pi * math.asin(rho / 2),
        pg.sign_agreement: 0.5 + math.asin(rho) / math.pi,
        pg.kendall_tau: 2 / math.pi * math.asin(rho),
    }
    for fn, truth in truths.items():
        sub = slice(0, 1000) if fn is pg.kendall_tau else slice(None)  # tau is O(n^2): 20 clusters
        value, low, high = pg.cluster_bootstrap(fn, x[sub], y[sub], clusters[sub], n_resamples=200)
        assert abs(value - truth) < 0.04, (fn.__name__, value, truth)
        assert low <= truth <= high, (fn.__name__, low, truth, high)
        assert high - low < 0.15


@pytest.mark.parametrize("fn", [pg.pearson, pg.spearman, pg.sign_agreement, pg.mean_statistic])
def test_weighted_statistics_equal_the_repeated_sample(fn):
    """A bootstrap's multiplicities as weights give the statistic of the sample with the repeats written out."""
    rng = np.random.default_rng(6)
    x, y = rng.integers(-2, 3, 40).astype(float), rng.standard_normal(40)  # ties in x
    counts = rng.integers(0, 3, (5, 40))
    weighted = fn(x, y, counts.astype(float))
    repeated = [fn(np.repeat(x, c), np.repeat(y, c)) for c in counts]
    np.testing.assert_allclose(weighted, repeated, rtol=1e-12, atol=1e-12)


def test_rank_statistics_handle_ties_like_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 4, 40).astype(float), rng.integers(0, 5, 40).astype(float)
    assert pg.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert pg.kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    assert math.isnan(pg.kendall_tau(np.ones(5), np.arange(5.0)))


def test_cluster_bootstrap_resamples_groups_not_pairs():
    """Clustered data: the group-level interval is wider than one that treats pairs as independent."""
    rng = np.random.default_rng(2)
    clusters = np.repeat(np.arange(20), 30)
    shift = rng.standard_normal(20)[clusters]
    x = shift + 0.1 * rng.standard_normal(600)
    _, low, high = pg.cluster_bootstrap(pg.mean_statistic, x, x, clusters, n_resamples=500)
    _, ilow, ihigh = pg.cluster_bootstrap(pg.mean_statistic, x, x, np.arange(600), n_resamples=500)
    assert (high - low) > 3 * (ihigh - ilow)
    _, low, high = pg.cluster_bootstrap(pg.mean_statistic, x[:30], x[:30], clusters[:30])  # one cluster
    assert low == pytest.approx(x[:30].mean(), abs=1e-12) and high == pytest.approx(x[:30].mean(), abs=1e-12)


def test_compare_cosines_per_group_and_pooled():
    rng = np.random.default_rng(4)
    rows = []
    for g in range(30):
        target = rng.standard_normal(28)
        rows += [{"problem_id": f"p{g}", "phi": t + 0.5 * rng.standard_normal(), "grad": t} for t in target]
    pairs = pd.DataFrame(rows)
    out = {r["statistic"]: r for r in pg.compare_cosines(pairs, "phi", "grad", n_resamples=200)}
    truth = 1 / math.sqrt(1.25)
    assert out["pooled_pearson"]["low"] <= truth <= out["pooled_pearson"]["high"]
    assert out["group_pearson"]["value"] == pytest.approx(truth, abs=0.05)
    assert out["sign_agreement"]["value"] > 0.75


# --- the stage on a tiny model ------------------------------------------------------------------


def test_study_policy_and_summary_on_tiny_model(tiny_base):
    from g2rl_core.evaluation.benchmarks import load_problems
    from g2rl_core.models import load_policy
    from g2rl_core.rollout import TransformersRollout

    model, tokenizer = load_policy(str(tiny_base / "base"))
    problems = load_problems(str(tiny_base / "data" / "hardest.jsonl"), "math")[:3]

    def encode(texts):  # a stand-in sentence encoder: character counts
        return torch.tensor([[t.count(c) for c in "0123456789+=,"] for t in texts], dtype=torch.float32)

    pairs, responses = pg.study_policy(
        model,
        TransformersRollout(model, tokenizer),
        encode,
        problems,
        samples=3,
        temperature=0.8,
        top_p=1.0,
        max_new_tokens=20,
        seed=0,
        gradient_groups=2,
    )
    assert len(pairs) == 3 * 3 and len(responses) == 3 * 3
    grad_cols = [c for c in pairs.columns if c.startswith("grad_cos_")]
    assert {"grad_cos_all", "grad_cos_lm_head", "grad_cos_last_layer", "grad_cos_layer_0"} <= set(grad_cols)
    taken = pairs.problem_id.isin([p.id for p in problems[:2]])
    assert pairs.loc[taken, grad_cols].notna().all().all() and pairs.loc[~taken, grad_cols].isna().all().all()
    assert pairs[grad_cols].abs().max().max() <= 1 + 1e-9
    assert responses["nu_grad_all"].between(0, 1).sum() == 6
    summary = pg.summarize_study(pairs.assign(policy="base"), responses.assign(policy="base"), n_resamples=50)
    row = summary.query("proxy == 'phi_cos' and target == 'grad_cos_all' and statistic == 'pooled_pearson'")
    assert len(row) == 1 and -1 <= row.value.item() <= 1
    assert set(summary.statistic) >= {"mean", "negative_share", "group_spearman", "sign_agreement", "nu_kendall_tau"}


def test_stage_names_a_missing_run_and_a_bad_budget(tiny_base, tmp_path, capsys):
    params = str(tiny_base / "params.yaml")
    base = ["--params", params, "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    assert pg.main([*base, "--methods", "grpo", "--seeds", "0"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "runs" / "grpo" / "seed0" / "final") in err and "g2rl train" in err
    assert pg.main([*base, "--gradients", "-1"]) == 2
    assert "--gradients = -1" in capsys.readouterr().err


@pytest.fixture(scope="module")
def stage_outputs(tiny_base, tmp_path_factory):
    """The stage (base model only, 8 gradients) and the sweep (trained grid, smoke size) on the test's tiny base."""
    from g2rl_core.analysis import phi_sweep

    root = tmp_path_factory.mktemp("phi_gradient")
    args = ["--params", str(tiny_base / "params.yaml"), "--runs", str(root / "runs"), "--out", str(root / "study")]
    assert pg.main([*args, "--methods", "--gradients", "8", "--no-encoder", "--resamples", "20"]) == 0
    sweep = ["--out", str(root / "sweep"), "--base", str(tiny_base / "base"), "--no-random"]
    data = ["--data", str(tiny_base / "data" / "train.jsonl"), "--groups", "2", "--samples", "2"]
    assert phi_sweep.main([*sweep, *data, "--max-new-tokens", "6"]) == 0
    return root


def test_stage_writes_its_tables(stage_outputs):
    out = stage_outputs / "study"
    pairs, summary = pd.read_csv(out / "pairs.csv"), pd.read_csv(out / "summary.csv")
    assert set(pairs.policy) == {"base"} and pairs.grad_cos_all.notna().sum() == 2 * 6  # 2 groups of 4 samples
    assert (out / "responses.csv").exists() and (out / "meta.json").exists()
    assert "pooled_pearson" in set(summary.statistic)
    sweep = pd.read_csv(stage_outputs / "sweep" / "sweep.csv")
    assert len(sweep) == 15 and sweep.negative_share.between(0, 1).all() and sweep.include_prompt.any()


def test_notebook_runs_and_writes_its_outputs(stage_outputs, tmp_path):
    import papermill

    parameters = {
        "profile": "tiny",
        "phi_gradient_dir": str(stage_outputs / "study"),
        "sweep_dir": str(stage_outputs / "sweep"),
        "results_dir": str(tmp_path),
    }
    papermill.execute_notebook(
        "notebooks/phi_vs_gradient.ipynb",
        str(tmp_path / "out.ipynb"),
        parameters=parameters,
        progress_bar=False,
        kernel_name="python3",
    )
    for name in ["phi_vs_gradient.csv", "phi_vs_gradient.md", "phi_vs_gradient.png", "phi_sweep.csv", "phi_sweep.png"]:
        assert (tmp_path / name).stat().st_size > 0, name


def test_random_point_of_the_sweep():
    from g2rl_core.analysis.phi_sweep import RandomPoint, random_point

    row = random_point(RandomPoint(hidden_size=16, vocab_size=32, length=4), groups=2, samples=3)
    assert row["length_mean"] == 4 and 0 <= row["negative_share"] <= 1 and row["entropy_mean"] > 0


def test_a_skewed_phi_has_a_positive_mean_cosine_although_its_mean_is_zero():
    """Sampler = p: E Phi = 0 (score-function identity), yet E[Phi/|Phi|] need not be (docs/phi_vs_gradient.md).

    Peaked p and one-token responses: Phi is a small vector towards the likely token or a long one away from it,
    so most pairs agree (the docs' p = (0.9, 0.1) example: 0.64 and 18%). Over 8 tokens the sum is nearly
    symmetric and the mean cosine is back at 0.
    """
    from g2rl_core.analysis.phi_sweep import RandomPoint, random_point

    short = random_point(RandomPoint(length=1, logit_scale=64.0), groups=16, samples=8)
    assert short["phi_cos_low"] > 0.3 and short["negative_share"] < 0.3
    longer = random_point(RandomPoint(length=8, logit_scale=64.0), groups=16, samples=8)
    assert longer["phi_cos_low"] < 0 < longer["phi_cos_high"] and abs(longer["phi_cos_mean"]) < 0.05


# --- the sweep's helpers -------------------------------------------------------------------------


def test_nucleus_keeps_the_smallest_set_reaching_top_p():
    from g2rl_core.analysis.phi_sweep import nucleus

    probs = torch.tensor([[0.1, 0.5, 0.15, 0.25], [0.7, 0.1, 0.1, 0.1]], dtype=torch.float64)
    out = nucleus(probs, 0.7)
    torch.testing.assert_close(out[0], torch.tensor([0.0, 0.5, 0.0, 0.25], dtype=torch.float64) / 0.75)
    torch.testing.assert_close(out[1], torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    assert nucleus(probs, 1.0) is probs


def test_phi_geometry_sees_a_common_direction():
    from g2rl_core.analysis.phi_sweep import phi_geometry

    gen = torch.Generator().manual_seed(5)
    noise = torch.randn(40, 8, 64, generator=gen, dtype=torch.float64)
    iid = phi_geometry(noise, n_resamples=100)
    assert abs(iid["phi_cos_mean"]) < 0.02 and 0.45 < iid["negative_share"] < 0.55
    assert iid["resultant"] == pytest.approx(1 / 8, abs=0.01)
    shared = phi_geometry(noise + 0.5 * torch.ones(64, dtype=torch.float64), n_resamples=100)
    assert shared["phi_cos_low"] > 0.1 and shared["negative_high"] < 0.2 and shared["resultant"] > 0.25


def test_prompt_as_response_keeps_every_token_in_its_context():
    from g2rl_core.analysis.phi_sweep import with_prompt_as_response
    from g2rl_core.maths.features import causal_lm_sequence_features

    model = tiny_qwen3(tie_word_embeddings=True)
    prompt_ids, prompt_mask = torch.tensor([[0, 5, 6], [7, 8, 9]]), torch.tensor([[0, 1, 1], [1, 1, 1]])
    response_ids, response_mask = torch.tensor([[10, 11, 0], [12, 13, 14]]), torch.tensor([[1, 1, 0], [1, 1, 1]])
    layout = with_prompt_as_response(prompt_ids, prompt_mask, response_ids, response_mask)
    assert layout[2].tolist() == [[6, 10, 11, 0, 0], [8, 9, 12, 13, 14]] and layout[0].tolist() == [[5], [7]]
    old = causal_lm_sequence_features(model, prompt_ids, prompt_mask, response_ids, response_mask)
    new = causal_lm_sequence_features(model, *layout)
    torch.testing.assert_close(new.logprobs[0, 1:3], old.logprobs[0, :2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(new.logprobs[1, 2:], old.logprobs[1], rtol=1e-5, atol=1e-5)
