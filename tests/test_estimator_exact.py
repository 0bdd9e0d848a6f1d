"""The estimator against exact truth: every estimate goes through the Engine protocol of the exact engine."""

import importlib.util
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from diagnose import engines
from diagnose.engines.base import PROTOCOL_ATTRIBUTES, SamplingParams
from diagnose.estimate import (
    EstimateConfig,
    EstimateQuestion,
    Estimator,
    Generator,
    Node,
    corrected_cosine,
    estimate,
    new_estimates,
    node_scores,
    noise_term,
    pack,
    refine_nodes,
    run_continuations,
    select_nodes,
    sparse_ideal,
)
from diagnose.estimate.nodes import window_index
from diagnose.estimate.truth import exact_q
from diagnose.ideal import ideal_gradient
from diagnose.teachers import engine_teacher


def _bench_estimator():
    """benchmarks/estimator.py (a benchmark, not part of the package): the adaptive-versus-uniform comparisons."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "estimator.py"
    spec = importlib.util.spec_from_file_location("benchmarks_estimator", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exact(**kw):
    return engines.load("exact", "exact", **kw)


def questions_for(eng, texts=("21", "3", "12", "0")):
    return [
        EstimateQuestion(id=f"q{i}", prompt_ids=eng.prompt(t), verify=eng.verifier(eng.prompt(t)))
        for i, t in enumerate(texts)
    ]


@pytest.fixture(scope="module")
def world():
    """Every node of 8 rollouts, candidates, the rkl direction toward a second exact model, and the truth."""
    eng, teacher = exact(seed=1), exact(seed=2)
    qs = questions_for(eng)
    cfg = EstimateConfig(
        rollouts_per_question=2, nodes="every", budget=1e9, continuations=1, free_sample=False,
        max_new_tokens=256, k_student=4, k_teacher=4,
    )
    est = Estimator(eng, qs, {"t": engine_teacher(teacher)}, ["rkl"], cfg)
    est.sample()
    est.select()
    ids, p, _, _, _ = pack(est.estimates)
    ((_, d, d_sq, tp),) = est.direction_tensors()
    q_true = torch.zeros_like(p)
    for i, e in enumerate(est.estimates):
        ro = est.rollouts[e.node.rollout]
        q, _ = eng.exact_values(ro.prompt_ids + ro.token_ids[: e.node.position])
        q_true[i, : len(e.cand_ids)] = q[torch.tensor(e.cand_ids)]
    mask = ids >= 0
    g, v = sparse_ideal(p, q_true, mask)
    true_cos, _, deg = corrected_cosine(
        (d * g).sum(-1), (g * g).sum(-1), torch.zeros(len(p)), (d * d).sum(-1)
    )
    true_ta = ((tp - p) * torch.where(mask, q_true - v[:, None], 0.0)).sum(-1)
    informative = ~deg & ((g * g).sum(-1).sqrt() > 0.02)
    return dict(
        eng=eng,
        qs=qs,
        est=est,
        ids=ids,
        p=p,
        d=d,
        d_sq=d_sq,
        tp=tp,
        q=q_true,
        g=g,
        cos=true_cos,
        ta=true_ta,
        informative=informative,
    )


def draw(world, n, seed, nodes=None):
    """Fresh estimates at the world's nodes with n continuations per candidate (sampling seed `seed`)."""
    est = world["est"]
    idx = list(range(len(est.estimates))) if nodes is None else nodes
    base = [est.estimates[i] for i in idx]
    gen = Generator(world["eng"], SamplingParams(seed=seed))
    ests = new_estimates(
        [b.node for b in base], est.rollouts, world["ids"][idx], torch.zeros(len(idx), 7), free=False
    )
    for e, b in zip(ests, base, strict=False):
        e.p = list(b.p)
    run_continuations(
        gen,
        world["qs"],
        est.rollouts,
        ests,
        {(i, k): n for i, e in enumerate(ests) for k in range(len(e.cand_ids))},
    )
    return ests


def test_q_hat_and_g_star_converge_to_truth(world):
    nodes = torch.nonzero(world["informative"]).flatten()[:6].tolist()
    mean_cos = []
    for n in (16, 128, 1024):
        _, _, s, c, mask = pack(draw(world, n, seed=11, nodes=nodes))
        q_hat, q = s / c.clamp_min(1), world["q"][nodes]
        sd = (q * (1 - q) / n).sqrt()
        assert bool(((q_hat - q).abs() <= 4.5 * sd + 2.0 / n)[mask].all())
        g_hat, _ = sparse_ideal(world["p"][nodes], q_hat, mask)
        g = world["g"][nodes]
        mean_cos.append(float(((g_hat * g).sum(-1) / (g_hat.norm(dim=-1) * g.norm(dim=-1))).mean()))
    assert mean_cos[0] < mean_cos[2] and mean_cos[2] > 0.98


def test_node_records_use_the_ideal_gradient(world):
    est = world["est"]
    res = est.results()
    i = 3
    rec, e = res.node_records[i], est.estimates[i]
    z = est.engine.score(
        [est.rollouts[e.node.rollout].prompt_ids + est.rollouts[e.node.rollout].token_ids],
        [[len(est.rollouts[e.node.rollout].prompt_ids) + e.node.position]],
    )[0].logits
    ideal = ideal_gradient(z, torch.tensor([e.cand_ids]), torch.tensor([e.q_hat]))
    g_rec = torch.tensor([c["g"] for c in rec["candidates"]], dtype=torch.float32)
    assert torch.allclose(g_rec, ideal.g[0, torch.tensor(e.cand_ids)], atol=1e-6)
    assert math.isclose(rec["v_hat"], float(ideal.value[0]), rel_tol=1e-5)
    # the records hold the very g* and V-hat the scores are computed from (one implementation, float64)
    g_sparse, v_sparse = e.ideal()
    assert [c["g"] for c in rec["candidates"]] == g_sparse
    assert rec["v_hat"] == v_sparse



def test_result_carries_the_logits_it_scored(world):
    """student_logits / teacher_logits: the logits the estimate scored, row i at node i (what proxies and the
    parameter-space cosine read), equal to scoring those nodes again."""
    est = world["est"]
    res = est.results()
    nodes = [e.node for e in res.nodes]
    assert res.student_logits.shape[0] == len(nodes) == len(res.node_records)
    assert set(res.teacher_logits) == {"t"}
    ref_t = engine_teacher(exact(seed=2))(res.rollouts, nodes)
    assert torch.equal(res.teacher_logits["t"], ref_t)
    for i in (0, len(nodes) // 2, len(nodes) - 1):
        ro, e = res.rollouts[nodes[i].rollout], res.nodes[i]
        z = est.engine.score([ro.prompt_ids + ro.token_ids], [[len(ro.prompt_ids) + nodes[i].position]])[0]
        assert torch.equal(res.student_logits[i], z.logits[0].float() / est.cfg.temperature)
        p = torch.softmax(res.student_logits[i].double(), -1)[torch.tensor(e.cand_ids)]
        assert torch.allclose(p, torch.tensor(e.p, dtype=torch.float64), atol=1e-9)
    again = est.results()  # a second call hands out the same values
    assert torch.equal(again.student_logits, res.student_logits)
    assert torch.equal(again.teacher_logits["t"], res.teacher_logits["t"])

def test_noise_term_is_unbiased():
    """E|g-hat|^2 - |g|^2 = E[noise_term] on a synthetic node (Monte Carlo over binomial outcomes)."""
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(1, 6, generator=gen), -1).double()
    q = torch.rand(1, 6, generator=gen).double()
    n = torch.tensor([[3.0, 5, 4, 8, 2, 6]]).double()
    mask = torch.ones(1, 6, dtype=torch.bool)
    reps = 200_000
    s = torch.binomial(
        n.expand(reps, 6).float().contiguous(), q.expand(reps, 6).float().contiguous(), generator=gen
    ).double()
    g_hat, _ = sparse_ideal(p.expand(reps, 6), s / n, mask.expand(reps, 6))
    g, _ = sparse_ideal(p, q, mask)
    inflation = float((g_hat**2).sum(-1).mean() - (g**2).sum())
    est = float(noise_term(p.expand(reps, 6), s, n.expand(reps, 6), mask.expand(reps, 6)).mean())
    assert inflation > 0 and abs(est - inflation) < 0.03 * inflation


def test_bias_corrected_cosine_is_nearer_the_truth(world):
    keep = world["informative"]
    raw, cor = [], []
    for seed in range(40):
        _, p, s, c, mask = pack(draw(world, 4, seed=100 + seed))
        st = node_scores(p, s, c, mask, world["d"], world["d_sq"], n_boot=10)
        raw.append(st.cos_support[keep])
        cor.append(st.cos_support_corrected[keep])
    truth = world["cos"][keep]
    cor = torch.stack(cor)
    # unresolved (noise >= |g-hat|^2) is null, not sign(dot); averaged where resolved
    assert bool(torch.isnan(cor).any())
    bias_raw = (torch.stack(raw).mean(0) - truth).abs().mean()
    bias_cor = (torch.nanmean(cor, 0) - truth).abs().mean()
    # measured: raw 0.206, corrected 0.088 (mean |E cos - cos| over the informative nodes, 4 continuations);
    # the correction scaled by 0.25 or 2 leaves the corrected bias above 0.11
    assert float(bias_cor) <= 0.11 and float(bias_raw) >= 0.15


def test_intervals_cover_the_truth(world):
    """Per-node intervals cover the exact cosine and are narrow enough to say something once a node has 32
    continuations per candidate (an interval of [-1, 1] everywhere would fail the width check). At the CLI's
    2 continuations a single node's corrected cosine is unresolvable and its interval rightly spans about
    [-1, 1]; the useful interval there is the pooled one (tests/test_validity.py)."""
    keep = world["informative"]
    cover, cover_ta, width = [], [], []
    for seed in range(20):
        _, p, s, c, mask = pack(draw(world, 32, seed=500 + seed))
        st = node_scores(
            p, s, c, mask, world["d"], world["d_sq"], teacher_p=world["tp"], n_boot=200, seed=seed
        )
        cover.append(
            ((st.cos_support_lo <= world["cos"] + 1e-9) & (world["cos"] <= st.cos_support_hi + 1e-9))[keep]
        )
        cover_ta.append(((st.ta_lo <= world["ta"] + 1e-9) & (world["ta"] <= st.ta_hi + 1e-9))[keep])
        width.append((st.cos_support_hi - st.cos_support_lo)[keep])
    assert torch.stack(cover).double().mean() >= 0.90
    assert torch.stack(cover_ta).double().mean() >= 0.90
    assert float(torch.cat(width).median()) <= 0.7


def test_cost_is_set_by_the_budget_not_rollout_length():
    spent = {}
    for horizon in (8, 64):
        eng = exact(seed=4, horizon=horizon, eos_bias=-6.0)
        cfg = EstimateConfig(
            rollouts_per_question=6, budget=600, continuations=4, k_student=2, k_teacher=0, n_boot=50,
            max_new_tokens=256,
        )
        res = estimate(eng, questions_for(eng, ("1", "2")), {}, ["rkl"], cfg)
        lengths = [len(r.token_ids) for r in res.rollouts]
        assert min(lengths) >= horizon // 2
        spent[horizon] = res.summary["continuations"]
        windows = {window_index(rec["position"], rec["length"]) for rec in res.node_records}
        assert len(windows) >= (4 if horizon == 64 else 3)
    for v in spent.values():
        assert 0.8 * 600 <= v <= 600
    assert abs(spent[8] - spent[64]) <= 0.2 * 600
    # A token budget: spent tokens stay near the budget whatever the length.
    eng = exact(seed=4, horizon=64, eos_bias=-6.0)
    cfg = EstimateConfig(
        rollouts_per_question=2,
        budget=20000,
        budget_unit="tokens",
        continuations=4,
        k_student=2,
        k_teacher=0,
        n_boot=50,
        max_new_tokens=256,
    )
    res = estimate(eng, questions_for(eng, ("1", "2")), {}, ["rkl"], cfg)
    assert 0.5 * 20000 <= res.summary["continuation_tokens"] <= 1.2 * 20000


class Flaky:
    """An engine that dies after `calls` continuation calls (a killed run)."""

    def __init__(self, inner, calls):
        self.inner, self.calls = inner, calls
        for attr in PROTOCOL_ATTRIBUTES:
            setattr(self, attr, getattr(inner, attr))

    def sample(self, *a, **k):
        return self.inner.sample(*a, **k)

    def score(self, *a, **k):
        return self.inner.score(*a, **k)

    def continue_from(self, *a, **k):
        if self.calls <= 0:
            raise RuntimeError("killed")
        self.calls -= 1
        return self.inner.continue_from(*a, **k)


def test_cache_resumes_and_reuses(tmp_path):
    eng, teacher = exact(seed=1), exact(seed=2)
    qs = questions_for(eng)
    cfg = EstimateConfig(
        rollouts_per_question=2,
        budget=800,
        continuations=4,
        allocation="adaptive",
        adaptive_initial=2,
        round_size=64,
        n_boot=100,
        max_batch=8,
        max_new_tokens=256, k_student=4, k_teacher=4,
    )
    teachers = {"t": engine_teacher(teacher)}
    with pytest.raises(RuntimeError, match="killed"):
        estimate(Flaky(eng, 5), qs, teachers, ["rkl"], cfg, cache=tmp_path / "a.sqlite")
    resumed = estimate(eng, qs, teachers, ["rkl"], cfg, cache=tmp_path / "a.sqlite")
    fresh = estimate(eng, qs, teachers, ["rkl"], cfg, cache=tmp_path / "b.sqlite")
    assert resumed.node_records == fresh.node_records
    pd.testing.assert_frame_equal(pd.DataFrame(resumed.scores), pd.DataFrame(fresh.scores))
    assert resumed.summary["cache_hits"] > 0
    assert resumed.summary["generated"] < fresh.summary["generated"]
    # Adding a teacher and an objective reuses every rollout and continuation already on disk.
    more = estimate(
        eng,
        qs,
        {**teachers, "u": engine_teacher(exact(seed=3))},
        ["rkl", "fkl"],
        EstimateConfig(**{**cfg.__dict__, "allocation": "uniform"}),
        cache=tmp_path / "b.sqlite",
    )
    assert more.summary["cache_hits"] >= len(more.rollouts)
    assert {r["teacher"] for r in more.scores} == {"t", "u"}


def test_node_selection_strategies():
    lengths = [40, 10, 3]
    cost = lambda r, t: 1.0  # noqa: E731
    nodes = select_nodes(lengths, 30, cost, "windows", seed=0)
    assert len(nodes) == 30 and len(set(nodes)) == 30
    per_window = {}
    for n in nodes:
        per_window[window_index(n.position, lengths[n.rollout])] = (
            per_window.get(window_index(n.position, lengths[n.rollout]), 0) + 1
        )
    # Budget 30 over 6 windows: window 0 holds only 3 positions and passes the rest on; the others share it.
    assert per_window[0] == 3 and all(5 <= v <= 6 for w, v in per_window.items() if w > 0)
    end = select_nodes(lengths, 18, cost, "windows_end", seed=0)
    assert all(Node(r, length - 1) in end for r, length in enumerate(lengths))  # width-1 window at the answer
    start = select_nodes(lengths, 18, cost, "windows", seed=0)
    assert all(Node(r, 0) in start for r in range(3)) and not all(Node(r, 0) in end for r in range(2))
    assert select_nodes(lengths, 30, cost, "windows", seed=0, exclude=nodes[:5])[0] not in nodes[:5]
    every = select_nodes(lengths, None, cost, "every")
    assert len(every) == sum(lengths)
    with pytest.raises(Exception, match="budget"):
        select_nodes(lengths, 10, cost, "every")
    uni = select_nodes(lengths, 20, cost, "uniform", seed=1)
    assert len(uni) == 20 and {n.rollout for n in uni} == {0, 1, 2}
    # Refinement bisects the gap with the largest jump in V-hat.
    values = {Node(0, 0): 0.5, Node(0, 10): 0.5, Node(0, 20): 0.9, Node(0, 30): 0.9}
    new = refine_nodes([40], values, [1.0], 1, cost)
    assert new == [Node(0, 15)]


def test_refine_strategy_runs_under_budget():
    eng, teacher = exact(seed=1), exact(seed=2)
    cfg = EstimateConfig(rollouts_per_question=2, budget=400, nodes="refine", continuations=2, n_boot=50,
                         max_new_tokens=256, k_student=4, k_teacher=4)
    res = estimate(eng, questions_for(eng), {"t": engine_teacher(teacher)}, ["rkl"], cfg)
    assert 0.7 * 400 <= res.summary["continuations"] <= 400
    assert res.summary["nodes"] >= 10
    # Rollout-level alignment: the cosine of the concatenated per-node vectors, from the per-node sums.
    tables = res.tables()
    assert set(tables) == {"rollouts", "nodes", "candidates", "alignment", "rollout_alignment"}
    al = tables["alignment"]
    one = res.rollout_scores[0]
    rows = al[al["question_id"] + "/" + al["rollout_idx"].astype(str) == one["rollout_id"]]
    g_sq = tables["nodes"].merge(rows[["question_id", "rollout_idx", "position"]])["g_sq"]
    assert len(rows) and len(g_sq) == len(rows)
    expect = rows["dot"].sum() / math.sqrt(g_sq.sum() * rows["d_sq"].sum())
    assert math.isclose(one["cos_full"], max(-1.0, min(1.0, expect)), rel_tol=1e-6, abs_tol=1e-9)


def test_adaptive_allocation_needs_fewer_continuations(world):
    """At the same budget (the pilot counted as spent) the unbiased adaptive plan reaches a smaller exact
    delta-method variance of the cosine than uniform allocation, on average and at the worst node, and its
    intervals still cover the exact cosine (benchmarks/estimator.py measures 1.6-1.9x at 16-64 per candidate)."""
    eng, teacher = exact(seed=1), exact(seed=2)
    qs = questions_for(eng)

    def make():
        cfg = EstimateConfig(
            rollouts_per_question=2,
            budget=1e7,
            nodes="every",
            allocation="adaptive",
            adaptive_initial=2,
            max_per_candidate=512,
            seed=3,
            max_new_tokens=256, k_student=4, k_teacher=4, continuations=8,
        )
        return Estimator(eng, qs, {"t": engine_teacher(teacher)}, ["rkl"], cfg)

    out = _bench_estimator().compare_at_budget(make, 16, exact_q)
    assert out["nodes"] >= 15
    assert out["savings"] >= 1.3 and out["savings_worst"] >= 1.3
    assert out["coverage_adaptive"] >= 0.85


def test_ideal_gradient_padding_keeps_token_zero():
    """Regression: -1 padding after candidate 0 must not erase token 0 from the candidate set."""
    ideal = ideal_gradient(torch.zeros(1, 4), torch.tensor([[0, 2, -1]]), torch.tensor([[1.0, 0.0, 0.5]]))
    assert ideal.candidates.tolist() == [[True, False, True, False]]
    assert torch.allclose(ideal.g, torch.tensor([[0.125, 0.0, -0.125, 0.0]]))
