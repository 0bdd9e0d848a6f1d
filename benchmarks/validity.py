"""Benchmark: are the reported numbers honest? Everything on the exact engine (Q known by dynamic programming)
at the settings `diagnose run` uses by default (RunConfig: 4 rollouts, 2 continuations per candidate, top-k
2, budget 40 per question, windows, 64 tokens), with a teacher that is another exact model.

- split_bias: mean Q-hat(observed token) - Q per split of the rollouts' verdict (correct / incorrect),
  with its standard error: the estimator must not manufacture the correct-vs-incorrect difference.
- false_clear_rate: share of seeded null runs (two teachers with the same truth: the student's logits plus
  independent noise of one size) whose summary declares a clear winner. Goal <= 0.05.
- coverage: share of seeded runs whose 95% interval for a configuration's alignment (summary `mean`)
  covers the exact population value (exact Q at every token of 1,500 questions' rollouts), the worst over
  four configurations: another exact model (alignment ~0) and a teacher that knows Q (clearly positive),
  each with rkl and fkl. Goal >= 0.90.
- max_precision_error: largest |cos - cos_exact| over every objective on peaked rows (1 - p_top down to
  1e-12), the estimator's path (fused kernel d at the candidates, float64 sums) against a 60-digit mpmath
  oracle of the closed forms. Goal <= 1e-3.

Run: .venv/bin/python benchmarks/validity.py [--quick]   (last line: JSON)
"""

from __future__ import annotations

import json
import math
import sys
import time

import numpy as np
import torch

from diagnose import engines, kernels, objectives
from diagnose.estimate import engine_teacher
from diagnose.estimate.stats import node_scores
from diagnose.estimate.truth import (
    concat_inputs,
    exact_q,
    exact_questions,
    informed_teacher,
    noisy_teacher,
    population_truth,
    run_per_question,
)
from diagnose.pipeline.config import RunConfig
from diagnose.report.summary import summarize

QUICK = "--quick" in sys.argv
RUNS = 30 if QUICK else 100
QUESTIONS = 16  # per run
HORIZON = 12
DEBUG = "--debug" in sys.argv


def _engines():
    return engines.load("exact", "exact", seed=1, horizon=HORIZON), engines.load(
        "exact", "exact", seed=2, horizon=HORIZON
    )


def _config():
    cfg = RunConfig().estimate_config()
    cfg.n_boot = 20  # node-level intervals are not used here
    return cfg


def split_bias(n_questions: int) -> dict:
    eng, teacher = _engines()
    runs = run_per_question(
        eng, exact_questions(eng, n_questions, seed=11), {"t": engine_teacher(teacher)}, ["rkl"], _config()
    )
    errs = {True: [], False: []}
    for est, _ in runs:
        for e in est.estimates:
            k = e.cand_ids.index(e.observed)
            errs[bool(est.rollouts[e.node.rollout].correct)].append(e.q_hat[k] - float(exact_q(est, e)[k]))
    out = {}
    for flag, name in ((True, "correct"), (False, "incorrect")):
        x = np.array(errs[flag])
        out[name] = {"bias": float(x.mean()), "se": float(x.std(ddof=1) / math.sqrt(len(x))), "nodes": len(x)}
    return out


def false_clear_rate(runs: int) -> dict:
    eng, _ = _engines()
    teachers = {"a": noisy_teacher(eng, "a"), "b": noisy_teacher(eng, "b")}
    clear = 0
    for seed in range(runs):
        res = run_per_question(eng, exact_questions(eng, QUESTIONS, seed=1000 + seed), teachers, ["fkl"], _config())
        summ = summarize(**concat_inputs([r for _, r in res]), n_boot=500, seed=seed, metrics=("cos_full",))
        clear += bool(summ.recommendation["cos_full"]["overall"].get("clear"))
    return {"rate": clear / runs, "runs": runs, "questions_per_run": QUESTIONS}


def coverage(runs: int) -> dict:
    eng, teacher = _engines()
    teachers = {"t": engine_teacher(teacher), "informed": informed_teacher(eng)}
    objs = ["rkl", "fkl"]
    pop = population_truth(eng, exact_questions(eng, 1500, seed=7), teachers, objs, _config())
    truth = summarize(**concat_inputs(pop), n_boot=0).table.set_index(["config", "metric"])["mean"]
    hits, widths = {k: 0 for k in truth.index}, {k: [] for k in truth.index}
    for seed in range(runs):
        res = run_per_question(eng, exact_questions(eng, QUESTIONS, seed=5000 + seed), teachers, objs, _config())
        tab = summarize(**concat_inputs([r for _, r in res]), n_boot=500, seed=seed).table
        for _, row in tab.iterrows():
            key = (row["config"], row["metric"])
            hits[key] += bool(row["ci_low"] <= truth[key] <= row["ci_high"])
            widths[key].append(row["ci_high"] - row["ci_low"])
    per = {f"{c}/{m}": hits[(c, m)] / runs for c, m in truth.index}
    return {
        "coverage": min(per.values()),
        "per_config": per,
        "truth": {f"{c}/{m}": float(v) for (c, m), v in truth.items()},
        "median_width": {f"{c}/{m}": float(np.median(w)) for (c, m), w in widths.items()},
        "runs": runs,
        "questions_per_run": QUESTIONS,
    }


def _mp_direction(obj, z, zt, a, adv, mp):
    """d = -dL/dz of one row in 60-digit arithmetic, from the closed forms of docs/math.md."""
    n = len(z)

    def softmax(x, keep=None):
        e = [mp.e ** mp.mpf(float(v)) if keep is None or i in keep else mp.mpf(0) for i, v in enumerate(x)]
        s_ = mp.fsum(e)
        return [v / s_ for v in e]

    def topk(x, k):
        return set(sorted(range(n), key=lambda i: -float(x[i]))[:k])

    p, q = softmax(z), softmax(zt)
    lp = [mp.log(x) for x in p]
    lq = [mp.log(x) for x in q]
    name, prm = obj.name, obj.params
    e = [mp.mpf(1) if i == a else mp.mpf(0) for i in range(n)]
    kl = mp.fsum(p[i] * (lp[i] - lq[i]) for i in range(n))
    if name == "rkl" or (name == "jsd" and float(prm["beta"]) == 1.0):
        return [-p[i] * (lp[i] - lq[i] - kl) for i in range(n)]
    if name == "fkl" or (name == "jsd" and float(prm["beta"]) == 0.0):
        return [q[i] - p[i] for i in range(n)]
    if name == "jsd":
        b = mp.mpf(float(prm["beta"]))
        r = [lp[i] - mp.log(b * q[i] + (1 - b) * p[i]) for i in range(n)]
        klm = mp.fsum(p[i] * r[i] for i in range(n))
        return [-(1 - b) * p[i] * (r[i] - klm) for i in range(n)]
    if name == "fkl_clipped":
        c = mp.mpf(float(prm["clip"]))
        qu = [q[i] if q[i] * (lq[i] - lp[i]) < c else mp.mpf(0) for i in range(n)]
        su = mp.fsum(qu)
        return [qu[i] - p[i] * su for i in range(n)]
    if name == "rkl_sampled":
        return [-(lp[a] - lq[a]) * (e[i] - p[i]) for i in range(n)]
    if name == "rkl_baselined":
        return [-(lp[a] - lq[a] - kl) * (e[i] - p[i]) for i in range(n)]
    if name == "k3_loss":
        return [(q[a] / p[a] - 1) * (e[i] - p[i]) for i in range(n)]
    if name == "k1_loss":
        return [-(e[i] - p[i]) for i in range(n)]
    if name == "grpo_ref":
        return [mp.mpf(adv) * (e[i] - p[i]) for i in range(n)]
    k = int(prm["k"])
    support = "teacher" if name == "fkl_topk" else prm["support"]
    s_set = {"student": topk(z, k), "teacher": topk(zt, k), "union": topk(z, k) | topk(zt, k)}[support]
    if name == "fkl_topk":
        qs = softmax(zt, s_set)
        return [qs[i] - p[i] for i in range(n)]
    if name == "rkl_topk":
        ps, qs = softmax(z, s_set), softmax(zt, s_set)
        kls = mp.fsum(ps[i] * (mp.log(ps[i]) - mp.log(qs[i])) for i in s_set)
        return [-ps[i] * (mp.log(ps[i]) - mp.log(qs[i]) - kls) if i in s_set else mp.mpf(0) for i in range(n)]
    if name == "rkl_topk_unnorm":
        inner = mp.fsum(p[i] * (lp[i] - lq[i] + 1) for i in s_set)
        return [-(p[i] * (lp[i] - lq[i] + 1) if i in s_set else 0) + p[i] * inner for i in range(n)]
    raise ValueError(f"no 60-digit oracle for {obj.label}")


PRECISION_OBJECTIVES = [
    "rkl",
    "fkl",
    "jsd:beta=0.5",
    "jsd:beta=0.1",
    "fkl_clipped",
    "fkl_clipped:clip=0.01",
    "rkl_sampled",
    "rkl_baselined",
    "k1_loss",
    "k3_loss",
    "grpo_ref",
    "rkl_topk:k=5",
    "rkl_topk:k=5,support=union",
    "rkl_topk_unnorm:k=5",
    "fkl_topk:k=5",
]


def max_precision_error() -> dict:
    """The estimator's path (kernels.node_stats d at the candidates and |d|^2 as the estimator calls it, then
    estimate.stats.node_scores) against a 60-digit oracle on rows from flat to peaked (1 - p_top ~ 1e-12)."""
    import mpmath as mp

    mp.mp.dps = 60
    gen = torch.Generator().manual_seed(0)
    vocab, zs, zts = 300, [], []
    for gap in (2.0, 14.0, 22.0, 30.0):
        z = torch.randn(vocab, generator=gen)
        z[3] += gap
        zt = z + 0.3 * torch.randn(vocab, generator=gen)
        zt[7] += 3.0
        zs.append(z)
        zts.append(zt)
    z, zt = torch.stack(zs).float(), torch.stack(zts).float()
    tokens = torch.tensor([3, 7, 3, 11])
    adv = torch.tensor([0.5, -0.25, 0.75, -1.0])
    cand = torch.stack([torch.tensor([int(t)] + [c for c in (3, 7, 11, 20) if c != int(t)]) for t in tokens])
    q_c = torch.rand(cand.shape, generator=gen, dtype=torch.float64)
    objs = [objectives.parse(n) for n in PRECISION_OBJECTIVES]
    zeros = torch.zeros(cand.shape, dtype=torch.float64)
    teacher_objs = [o for o in objs if o.name != "grpo_ref"]
    st_t = kernels.node_stats(z, [zt], cand, zeros, teacher_objs, tokens=tokens, backend="chunked")
    st_n = kernels.node_stats(
        z, [z], cand, zeros, [objectives.parse("grpo_ref")], tokens=tokens, advantages=adv, backend="chunked"
    )
    worst, per = 0.0, {}
    mask = torch.ones(1, cand.shape[1], dtype=torch.bool)
    for obj in objs:
        if obj.name == "grpo_ref":
            st, o = st_n, 0
        else:
            st, o = st_t, teacher_objs.index(obj)
        err = 0.0
        for i in range(len(zs)):
            ids = [int(x) for x in cand[i]]
            ez = [mp.e ** mp.mpf(float(x)) for x in z[i].tolist()]
            sz = mp.fsum(ez)
            pm = [ez[k] / sz for k in ids]
            p_c = torch.tensor([float(x) for x in pm], dtype=torch.float64)[None]
            got = node_scores(
                p_c, q_c[i][None], torch.ones_like(q_c[i][None]), mask, st.d_cand[0, o, i][None],
                st.d_sq[0, o, i][None], n_boot=1,
            )
            d = _mp_direction(obj, z[i].tolist(), (z if obj.name == "grpo_ref" else zt)[i].tolist(),
                              int(tokens[i]), float(adv[i]), mp)
            qv = [mp.mpf(float(x)) for x in q_c[i]]
            v = mp.fsum(pm[k] * qv[k] for k in range(len(ids))) / mp.fsum(pm)
            gm = [pm[k] * (qv[k] - v) for k in range(len(ids))]
            dot = mp.fsum(gm[k] * d[ids[k]] for k in range(len(ids)))
            d_norm = mp.sqrt(mp.fsum(x * x for x in d))
            if d_norm == 0:
                continue
            cos = dot / mp.sqrt(mp.fsum(x * x for x in gm)) / d_norm
            err = max(err, abs(float(cos) - float(got.cos_full[0])))
            if DEBUG:
                print(obj.label, i, float(cos), float(got.cos_full[0]), float(dot), float(got.dot[0]))
        per[obj.label] = err
        worst = max(worst, err)
    one_minus = [float(1 - torch.softmax(z[i].double(), -1).max()) for i in range(len(zs))]
    return {"max_error": worst, "per_objective": per, "rows_1_minus_p_top": one_minus}


def main() -> None:
    t0 = time.time()
    out = {}
    sb = split_bias(100 if QUICK else 400)
    print("split bias", json.dumps(sb), flush=True)
    prec = max_precision_error()
    print("precision", json.dumps(prec), flush=True)
    fc = false_clear_rate(RUNS)
    print("false clear", json.dumps(fc), flush=True)
    cov = coverage(RUNS)
    print("coverage", json.dumps(cov), flush=True)
    out = {
        "split_bias": {k: v["bias"] for k, v in sb.items()},
        "false_clear_rate": fc["rate"],
        "coverage": cov["coverage"],
        "max_precision_error": prec["max_error"],
        "seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
