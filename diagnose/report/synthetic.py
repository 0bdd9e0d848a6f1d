"""Seeded synthetic run directories in the table schemas, for tests, previews and documentation.

Nothing here is a stored result: arithmetic questions and templated responses are drawn from a seed, a latent
success probability evolves along each response, Q-hat is binomial around it, and every score is computed by
the real library code (`ideal_gradient`, the objective registry, `cosines`, `proxies`, `teacher_advantage`).
Teachers differ by how much of the true Q they "know": the one with the largest `skill` aligns best by
construction.

    python -m diagnose.report.synthetic OUT_DIR [--seed 0]
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import alignment as al
from .. import objectives as objs
from ..estimate.nodes import Node, design_weights
from ..ideal import ideal_gradient
from .tables import config_label, difficulty_band, standard_metadata, write_table

_TOKEN_RE = re.compile(r"\s?\d|\s?[A-Za-z]+|\s?[^\sA-Za-z\d]|\n")
_TEMPLATES = (
    "We need {a} {op} {b}. Start from {a} and apply {opw} {b}. So {a} {op} {b} = {ans}.\nAnswer: {ans}",
    "Let me compute {a} {op} {b} step by step. First, {a} {op} {b} means {opw} {b} to {a}. "
    "That gives {ans}. Check: the result is {ans}.\nAnswer: {ans}",
    "{a} {op} {b} = {ans}.\nAnswer: {ans}",
    "To solve this, I take {a} and combine it with {b} by {opw} {b}. That should give {ans}. "
    "I am fairly sure the answer is {ans}.\nAnswer: {ans}",
)
_FILLER = [
    " the",
    " so",
    " we",
    " is",
    " of",
    " and",
    " result",
    " number",
    " wait",
    " hmm",
    " maybe",
    ".",
    ",",
    " =",
    " +",
    " *",
    "\n",
]


@dataclass(frozen=True)
class TeacherSpec:
    """A synthetic teacher: logits = student + skill * (Q - V) signal + noise * N(0, 1)."""

    label: str
    skill: float
    noise: float


DEFAULT_TEACHERS = (
    TeacherSpec("self:solution", skill=9.0, noise=0.5),
    TeacherSpec("self:answer", skill=4.0, noise=0.8),
    TeacherSpec("Qwen3-8B", skill=2.0, noise=1.2),
    TeacherSpec("self:hint", skill=0.0, noise=0.8),
)
DEFAULT_OBJECTIVES = ("rkl", "fkl", "jsd:beta=0.5")


def _tokenize(text: str) -> list[str]:
    return _TOKEN_RE.findall(text)


def _windows(length: int, budget: int, rng) -> list[int]:
    """Node positions: geometric windows [0,1), [1,3), [3,7), ... each get an equal share of the budget."""
    edges, lo, width = [], 0, 1
    while lo < length:
        edges.append((lo, min(length, lo + width)))
        lo, width = lo + width, width * 2
    share = max(1, budget // len(edges))
    picks = []
    for lo, hi in edges:
        k = min(share, hi - lo)
        picks.extend(rng.choice(np.arange(lo, hi), size=k, replace=False).tolist())
    return sorted(picks)


def _latent_value(length: int, start: float, end: float, rng) -> np.ndarray:
    """Success probability after each prefix length 0..T: a smooth move from `start` to `end`."""
    tau = rng.uniform(0.3, 0.9) * length
    scale = max(1.0, length / rng.uniform(8, 20))
    t = np.arange(length + 1)
    s = 1 / (1 + np.exp(-(t - tau) / scale))
    s = (s - s[0]) / max(s[-1] - s[0], 1e-9)
    return np.clip(start + (end - start) * s + rng.normal(0, 0.03, size=t.shape), 0.0, 1.0)


def generate_run(
    run_dir,
    seed: int = 0,
    n_questions: int = 12,
    rollouts_per_question: int = 4,
    nodes_per_rollout: int = 12,
    n_continuations: int = 8,
    top_k: int = 4,
    teachers=DEFAULT_TEACHERS,
    objectives=DEFAULT_OBJECTIVES,
    node_bootstrap: int = 40,
    n_shards: int = 2,
) -> Path:
    """Write rollouts, nodes, candidates, alignment tables, cost.json and config.toml to `run_dir`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread avoids spin-waiting on a busy machine
    try:
        return _generate(
            run_dir,
            seed,
            n_questions,
            rollouts_per_question,
            nodes_per_rollout,
            n_continuations,
            top_k,
            teachers,
            objectives,
            node_bootstrap,
            n_shards,
        )
    finally:
        torch.set_num_threads(threads)


def _generate(
    run_dir,
    seed,
    n_questions,
    rollouts_per_question,
    nodes_per_rollout,
    n_continuations,
    top_k,
    teachers,
    objectives,
    node_bootstrap,
    n_shards,
) -> Path:
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    objective_list = [objs.parse(spec) for spec in objectives]

    # Questions, responses and a shared toy vocabulary.
    questions = []
    for qi in range(n_questions):
        a, b = int(rng.integers(2, 10)), int(rng.integers(2, 10))
        op, opw, ans = ("+", "adding", a + b) if rng.random() < 0.5 else ("*", "multiplying by", a * b)
        questions.append(
            dict(question_id=f"q{qi:03d}", a=a, b=b, op=op, opw=opw, ans=ans, rate=float(rng.beta(0.7, 0.7)))
        )
    rollouts = []
    for q in questions:
        outcomes = rng.random(rollouts_per_question) < q["rate"]
        for r, ok in enumerate(outcomes):
            ans = q["ans"] if ok else q["ans"] + int(rng.choice([-3, -2, -1, 1, 2, 10]))
            tmpl = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
            text = tmpl.format(a=q["a"], b=q["b"], op=q["op"], opw=q["opw"], ans=ans)
            rollouts.append(
                dict(q=q, rollout_idx=r, correct=bool(ok), answer=str(ans), tokens=_tokenize(text))
            )
    vocab = sorted(
        {t for ro in rollouts for t in ro["tokens"]}
        | set(_FILLER)
        | {str(d) for d in range(10)}
        | {" " + str(d) for d in range(10)}
    )
    tok_id = {t: i for i, t in enumerate(vocab)}
    V = len(vocab)

    rows = {"rollouts": [], "nodes": [], "candidates": [], "alignment": []}
    shard_of = {}
    cost = dict(rollouts=0, generated_tokens=0, continuations=0, continuation_tokens=0, teacher_tokens=0)
    by_q = {}
    for ro in rollouts:
        by_q.setdefault(ro["q"]["question_id"], []).append(ro["correct"])
    for ro in rollouts:
        q = ro["q"]
        qid = q["question_id"]
        shard_of[(qid, ro["rollout_idx"])] = f"{int(qid[1:]) * n_shards // n_questions:05d}"
        ids = torch.tensor([tok_id[t] for t in ro["tokens"]])
        T = len(ids)
        # Student logits: noise plus a boost on the sampled token (so p(token) spans confident and unsure).
        z = torch.randn(T, V, generator=gen) * 1.5
        z[torch.arange(T), ids] += torch.from_numpy(rng.uniform(0.5, 7.0, size=T)).float()
        logp = torch.log_softmax(z, -1)
        pass_rate = float(np.mean(by_q[qid]))
        prompt = f"<|user|>What is {q['a']} {q['op']} {q['b']}? End with 'Answer: <number>'.<|assistant|>"
        rows["rollouts"].append(
            dict(
                question_id=qid,
                rollout_idx=ro["rollout_idx"],
                prompt=prompt,
                response="".join(ro["tokens"]),
                token_ids=ids.numpy().astype(np.int32),
                tokens=list(ro["tokens"]),
                student_logprobs=logp[torch.arange(T), ids].numpy(),
                n_tokens=T,
                correct=ro["correct"],
                pass_rate=pass_rate,
                difficulty=str(difficulty_band(pass_rate)),
                reference=str(q["ans"]),
                extracted_answer=ro["answer"],
            )
        )
        cost["rollouts"] += 1
        cost["generated_tokens"] += T

        value = _latent_value(T, q["rate"], 1.0 if ro["correct"] else 0.0, rng)
        pos = torch.tensor(_windows(T, nodes_per_rollout, rng))
        node_w = design_weights([Node(0, int(t)) for t in pos], [T], "windows")
        zn, tok = z[pos], ids[pos]
        n = len(pos)
        # True Q on the whole vocabulary: the sampled token leads to V(t+1); alternatives scatter around V(t),
        # wider where the sampled token moved the value a lot.
        v_now, v_next = value[pos.numpy()], value[pos.numpy() + 1]
        spread = 0.12 + 0.8 * np.abs(v_next - v_now)
        q_true = np.clip(
            v_now[:, None]
            + rng.normal(0, 1, size=(n, V)) * spread[:, None]
            - 0.5 * (v_next - v_now)[:, None],
            0,
            1,
        )
        q_true[np.arange(n), tok.numpy()] = v_next
        q_true = torch.from_numpy(q_true).float()
        teacher_logits = {}
        for spec in teachers:
            signal = q_true - (logp[pos].exp() * q_true).sum(-1, keepdim=True)
            teacher_logits[spec.label] = (
                zn + spec.skill * signal + spec.noise * torch.randn(n, V, generator=gen)
            )
        # Candidates: student top-k, each teacher's top-k, and the observed token.
        sources = [dict() for _ in range(n)]
        for name, logits in [("student", zn)] + [("teacher", t) for t in teacher_logits.values()]:
            top = logits.topk(top_k, -1).indices
            for i in range(n):
                for k in top[i].tolist():
                    sources[i].setdefault(k, set()).add(name)
        for i in range(n):
            sources[i].setdefault(int(tok[i]), set()).add("observed")
        K = max(len(s) for s in sources)
        cand = torch.full((n, K), -1, dtype=torch.long)
        nn = torch.zeros(n, K, dtype=torch.long)
        succ = torch.zeros(n, K, dtype=torch.long)
        for i in range(n):
            for j, k in enumerate(sorted(sources[i])):
                cand[i, j] = k
                draws = int(rng.binomial(n_continuations, float(q_true[i, k])))
                extra = int(k == int(tok[i]))  # the rollout itself is one free sample of the observed token
                nn[i, j] = n_continuations + extra
                succ[i, j] = draws + (int(ro["correct"]) if extra else 0)
        valid = cand >= 0
        q_hat = torch.where(valid, succ.float() / nn.clamp_min(1).float(), torch.zeros(()))
        star = ideal_gradient(zn, cand, q_hat)
        p = logp[pos].exp()
        g_sq = (star.g.double() ** 2).sum(-1)
        g_sq_unb = g_sq - _noise_of_g_sq(p.double(), cand, q_hat.double(), nn)
        degenerate_node = g_sq <= 1e-20
        ent = -(p * logp[pos]).sum(-1)
        # Parametric bootstrap of the continuations for the per-node intervals.
        trials = nn.clamp_min(1).numpy()
        boot_q = torch.from_numpy(
            rng.binomial(trials, q_hat.clamp(0, 1).numpy(), size=(node_bootstrap, n, K)) / trials
        ).float()
        boot_star = ideal_gradient(
            zn.repeat(node_bootstrap, 1),
            cand.repeat(node_bootstrap, 1),
            torch.where(valid, boot_q, 0.0).reshape(-1, K),
        )
        q_dense = torch.where(
            star.candidates,
            torch.zeros(n, V).scatter(1, cand.clamp_min(0), q_hat),
            star.value[:, None].expand(n, V),
        )

        for i in range(n):
            key = dict(question_id=qid, rollout_idx=ro["rollout_idx"], position=int(pos[i]))
            rows["nodes"].append(
                dict(
                    key,
                    token_id=int(tok[i]),
                    token=vocab[int(tok[i])],
                    p_token=float(p[i, tok[i]]),
                    entropy_student=float(ent[i]),
                    v_hat=float(star.value[i]),
                    n_candidates=int(valid[i].sum()),
                    n_continuations=int(nn[i].sum()),
                    degenerate=bool(degenerate_node[i]),
                    g_sq=float(g_sq[i]),
                    g_sq_unbiased=float(g_sq_unb[i]),
                    weight=float(node_w[i]),
                    inclusion_prob=1.0 / float(node_w[i]),
                    negligible=False,
                )
            )
            for j in range(int(valid[i].sum())):
                k = int(cand[i, j])
                rows["candidates"].append(
                    dict(
                        key,
                        token_id=k,
                        token=vocab[k],
                        p=float(p[i, k]),
                        q_hat=float(q_hat[i, j]),
                        n=int(nn[i, j]),
                        successes=int(succ[i, j]),
                        observed=k == int(tok[i]),
                        source="+".join(sorted(sources[i][k])),
                    )
                )
            cost["continuations"] += int(nn[i].sum()) - 1
            cost["continuation_tokens"] += (int(nn[i].sum()) - 1) * (T - int(pos[i]))

        for tlabel, zt in teacher_logits.items():
            cost["teacher_tokens"] += T
            prox = al.proxies(zn, zt)
            ta = al.teacher_advantage(zn, zt, q_dense, star.value)
            boot_dense = torch.where(
                boot_star.candidates,
                torch.zeros(n * node_bootstrap, V).scatter(
                    1,
                    cand.repeat(node_bootstrap, 1).clamp_min(0),
                    torch.where(valid, boot_q, 0.0).reshape(-1, K),
                ),
                boot_star.value[:, None].expand(-1, V),
            )
            ta_boot = al.teacher_advantage(
                zn.repeat(node_bootstrap, 1), zt.repeat(node_bootstrap, 1), boot_dense, boot_star.value
            ).reshape(node_bootstrap, n)
            qtok = torch.softmax(zt, -1)[torch.arange(n), tok]
            for obj in objective_list:
                d = obj.direction(zn, zt, tok)
                cos = al.cosines(star.g, d, star.candidates)
                cos_b = al.cosines(boot_star.g, d.repeat(node_bootstrap, 1), boot_star.candidates)
                deg = cos.degenerate.numpy()
                dot = (star.g.double() * d.double()).sum(-1)
                d_sq = (d.double() ** 2).sum(-1)
                d_sq_s = (torch.where(star.candidates, d, 0.0).double() ** 2).sum(-1)
                bc = (dot / (g_sq_unb.clamp_min(1e-30) * d_sq).sqrt()).clamp(-1, 1).numpy()
                bc = np.where((g_sq_unb > 0).numpy() & ~deg, bc, np.nan)
                bc_s = (dot / (g_sq_unb.clamp_min(1e-30) * d_sq_s).sqrt()).clamp(-1, 1).numpy()
                bc_s = np.where((g_sq_unb > 0).numpy() & ~deg, bc_s, np.nan)
                frame = dict(
                    question_id=qid,
                    rollout_idx=ro["rollout_idx"],
                    position=pos.numpy(),
                    config=config_label(tlabel, obj.label),
                    teacher=tlabel,
                    objective=obj.label,
                    cos_full=cos.full.numpy(),
                    cos_support=cos.support.numpy(),
                    **_interval("cos_full", cos_b.full.reshape(node_bootstrap, n), deg),
                    **_interval("cos_support", cos_b.support.reshape(node_bootstrap, n), deg),
                    cos_bias_corrected=bc,
                    cos_support_bias_corrected=bc_s,
                    teacher_advantage=ta.numpy(),
                    **_interval("ta", ta_boot, np.zeros(n, dtype=bool)),
                    q_token=qtok.numpy(),
                    **{k: v.numpy() for k, v in prox.items()},
                    param_cos=np.full(n, np.nan),
                    dot=dot.numpy(),
                    d_sq=d_sq.numpy(),
                    d_sq_support=d_sq_s.numpy(),
                    weight=1.0,
                    degenerate=deg,
                    signal_ratio=np.full(n, np.inf),
                    no_signal=np.zeros(n, dtype=bool),
                )
                rows["alignment"].append(frame)

    meta = standard_metadata(
        models={
            "student": "synthetic-student",
            "teachers": {t.label: f"skill={t.skill},noise={t.noise}" for t in teachers},
        },
        seeds={"generator": seed},
        config_hash=None,
        synthetic=True,
    )
    config_text = _config_toml(
        seed,
        n_questions,
        rollouts_per_question,
        nodes_per_rollout,
        n_continuations,
        top_k,
        teachers,
        objectives,
    )
    meta["config_hash"] = hashlib.sha256(config_text.encode()).hexdigest()[:16]
    for name, recs in rows.items():
        df = _stack(recs) if name == "alignment" else pd.DataFrame.from_records(recs)
        shards = [shard_of[key] for key in zip(df["question_id"], df["rollout_idx"], strict=True)]
        for shard, part in df.groupby(shards, sort=True):
            write_table(run_dir, name, part.reset_index(drop=True), shard=shard, metadata=meta)
    cost["wall_time_s"] = round(3.0 + cost["continuation_tokens"] / 2500.0, 1)
    cost["device"] = "synthetic"
    (run_dir / "cost.json").write_text(json.dumps(cost, indent=2))
    (run_dir / "config.toml").write_text(config_text)
    return run_dir


def _stack(frames: list[dict]) -> pd.DataFrame:
    """Column-wise concatenation of dicts of equal-length arrays (scalars broadcast): one DataFrame build."""
    sizes = [len(f["position"]) for f in frames]
    cols = {}
    for key in frames[0]:
        parts = [np.broadcast_to(np.asarray(f[key]), (m,)) for f, m in zip(frames, sizes, strict=True)]
        cols[key] = np.concatenate(parts)
    return pd.DataFrame(cols)


def _interval(prefix: str, samples: torch.Tensor, degenerate: np.ndarray) -> dict:
    """Percentile 95% interval over bootstrap replicates [B, n]; (0, 0) at degenerate nodes."""
    lo, hi = torch.quantile(
        samples.double(), torch.tensor([0.025, 0.975], dtype=torch.float64), dim=0
    ).numpy()
    return {
        f"{prefix}_ci_low": np.where(degenerate, 0.0, lo),
        f"{prefix}_ci_high": np.where(degenerate, 0.0, hi),
    }


def _noise_of_g_sq(p: torch.Tensor, cand: torch.Tensor, q_hat: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Expected excess of |g*-hat|^2 over |g*|^2 from binomial Q-hat noise (unbiased per-candidate variances).

    g = A Q-hat with A_jk = p_j (delta_jk - pi_k), pi = p / p(C) on C, so the excess is
    sum_k |A_:k|^2 Var(Q-hat_k), with |A_:k|^2 = p_k^2 - 2 p_k^2 pi_k + pi_k^2 sum_C p_j^2.
    """
    valid = cand >= 0
    pc = torch.where(valid, p.gather(1, cand.clamp_min(0)), torch.zeros((), dtype=p.dtype))
    pi = pc / pc.sum(-1, keepdim=True).clamp_min(1e-30)
    col = pc**2 - 2 * pc**2 * pi + pi**2 * (pc**2).sum(-1, keepdim=True)
    var = torch.where(n > 1, q_hat * (1 - q_hat) / (n - 1).clamp_min(1), torch.zeros((), dtype=p.dtype))
    return (col * var * valid).sum(-1)


def _config_toml(seed, n_questions, rpq, nodes, n_cont, top_k, teachers, objectives) -> str:
    lines = [
        "# synthetic run (diagnose.report.synthetic)",
        f"seed = {seed}",
        "[task]",
        'name = "synthetic-arith"',
        f"questions = {n_questions}",
        f"rollouts_per_question = {rpq}",
        "[estimate]",
        f"nodes_per_rollout = {nodes}",
        f"continuations = {n_cont}",
        f"top_k = {top_k}",
        f"objectives = {json.dumps(list(objectives))}",
    ]
    for t in teachers:
        lines += ["[[teachers]]", f'label = "{t.label}"', f"skill = {t.skill}", f"noise = {t.noise}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--questions", type=int, default=12)
    args = ap.parse_args()
    out = generate_run(args.out, seed=args.seed, n_questions=args.questions)
    from .summary import write_summary

    write_summary(out)
    from .html import render_report

    print(render_report(out))
