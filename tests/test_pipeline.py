"""`diagnose run` end to end on the real embedded model: tables, resume after SIGKILL, refusals, notebook, CLI."""

from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import diagnose
from diagnose.pipeline import RunConfig, Runner
from diagnose.tables import read_metadata, read_table

TINY = dict(
    questions=2,
    rollouts=2,
    max_new_tokens=32,
    budget=48,
    top_k=2,
    continuations=2,
    teachers=["self:answer", "self:contrastive"],
    objectives=["rkl", "fkl", "rkl_sampled"],
    seed=0,
)
TABLES = ("rollouts", "nodes", "candidates", "alignment")
KEYS = {
    "rollouts": ["question_id", "rollout_idx"],
    "nodes": ["question_id", "rollout_idx", "position"],
    "candidates": ["question_id", "rollout_idx", "position", "token_id"],
    "alignment": ["question_id", "rollout_idx", "position", "config"],
}
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}


def _toml(path: Path, **values) -> Path:
    path.write_text(RunConfig(**{**TINY, **values}).to_toml())
    return path


def _cli(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "diagnose", *args], capture_output=True, text=True, timeout=timeout, env=ENV
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, embedded_model_path):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    result = diagnose.run(out=str(out), progress=False, **TINY)
    return out, result


def _sorted(df, name):
    return df.sort_values(KEYS[name]).reset_index(drop=True)


def test_run_writes_consistent_tables(tiny_run):
    out, result = tiny_run
    for name in TABLES + ("summary",):
        assert (out / name).is_dir()
    assert (out / "report.html").stat().st_size > 100_000 and (out / "config.toml").is_file()
    ro, nodes, cands, al = (getattr(result, n) for n in TABLES)
    assert len(ro) == TINY["questions"] * TINY["rollouts"] and len(nodes) > 0
    # every node belongs to a rollout, every candidate and score to a node
    assert set(map(tuple, nodes[KEYS["rollouts"]].values)) <= set(map(tuple, ro[KEYS["rollouts"]].values))
    node_keys = set(map(tuple, nodes[KEYS["nodes"]].values))
    assert set(map(tuple, cands[KEYS["nodes"]].values)) == node_keys
    assert set(map(tuple, al[KEYS["nodes"]].values)) == node_keys
    # each node's observed token is the rollout's token at that position, and is among its candidates
    for _, n in nodes.iterrows():
        r = ro[(ro.question_id == n.question_id) & (ro.rollout_idx == n.rollout_idx)].iloc[0]
        assert r.token_ids[n.position] == n.token_id
    assert cands.groupby(KEYS["nodes"])["observed"].sum().eq(1).all()
    expected = {f"{t}|{o}" for t in TINY["teachers"] for o in TINY["objectives"]}
    assert set(al.config) == expected
    assert al.cos_full.between(-1, 1).all() and (al.cos_full_ci_low <= al.cos_full_ci_high).all()
    assert (al.loc[al.degenerate, ["cos_full", "cos_support"]] == 0).all().all()
    # every live row's cosines are its own <g*, d> over the norms: g_sq from nodes, d_sq(_support) from the row
    live = al[~al.degenerate].merge(nodes[KEYS["nodes"] + ["g_sq"]], on=KEYS["nodes"], validate="many_to_one")
    assert len(live) >= 3, "the tiny run should have live (non-degenerate) nodes"
    assert (live.g_sq > 0).all() and (live.d_sq > 0).all() and (live.d_sq_support > 0).all()
    want_full = live["dot"] / np.sqrt(live.g_sq * live.d_sq)
    want_support = live["dot"] / np.sqrt(live.g_sq * live.d_sq_support)
    np.testing.assert_allclose(live.cos_full, want_full, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(live.cos_support, want_support, rtol=1e-5, atol=1e-6)
    assert (live.cos_full.abs() > 1e-3).any()  # not all ~0: the check above has something to compare
    assert cands.q_hat.between(0, 1).all() and (cands.successes <= cands.n).all()
    # rkl_sampled is the same objective's one-sample estimate: its d differs from rkl's, its teacher is the same
    kl = al[al.objective == "rkl"].set_index(KEYS["nodes"] + ["teacher"]).kl_pq
    kl_s = al[al.objective == "rkl_sampled"].set_index(KEYS["nodes"] + ["teacher"]).kl_pq
    pd.testing.assert_series_equal(kl.sort_index(), kl_s.sort_index())
    digest = RunConfig(**{**TINY, "out": str(out)}).digest()
    for name in TABLES:
        meta = read_metadata(out, name)
        assert meta["seeds"] == {"seed": TINY["seed"]}, meta["seeds"]
        assert meta["versions"]["torch"] == torch.__version__
        assert meta["versions"]["diagnose"] == importlib.metadata.version("diagnose")
        assert meta["models"] == {"student": RunConfig().student, "teachers": TINY["teachers"]}, meta["models"]
        assert meta["config_hash"] == digest
        assert meta["teacher_dtype"] == "auto"  # the default: external teachers follow the student
        assert meta["student_dtype"] == "float32"  # the hf engine's choice on the CPU
        assert meta["engine"] == "hf" and meta["temperature"] == 1.0
    assert RunConfig.from_sources(out / "config.toml").digest() == digest
    cost = json.loads((out / "cost.json").read_text())
    assert cost["rollouts"] == len(ro) and cost["continuations"] > 0


def test_rerun_resumes_without_work_and_refuses_another_config(tiny_run):
    out, result = tiny_run
    before = {n: (out / n / "part-q00000.parquet").stat().st_mtime_ns for n in TABLES}
    again = Runner(RunConfig(**{**TINY, "out": str(out), "progress": False}))
    assert again.pending() == []
    again.run()
    assert again.engine is None  # nothing left to do: the model was never loaded
    assert before == {n: (out / n / "part-q00000.parquet").stat().st_mtime_ns for n in TABLES}
    proc = _cli("run", "--config", str(_toml(out.parent / "other.toml", budget=99)), "--out", str(out), "-q")
    assert proc.returncode != 0 and "different config" in proc.stderr and "budget" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_killed_run_resumes_to_the_same_tables(tiny_run, tmp_path):
    out_ref, _ = tiny_run
    cfg = _toml(tmp_path / "tiny.toml")
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "diagnose", "run", "--config", str(cfg), "--out", str(out), "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    # Both questions are in flight at once (their engine calls merged). The second question's sample cache
    # (cache/q00001.sqlite) holds rows once the first merged engine call, the rollouts, has been written: the
    # kill then lands mid-way through both questions, and the resumed run must rebuild them identically.
    cache = out / "cache" / "q00001.sqlite"
    deadline = time.time() + 600
    cached = 0
    while proc.poll() is None and time.time() < deadline:
        cached = _cached_samples(cache)
        if cached:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert cached > 0, "no sample of the second question was cached before the deadline"
    assert not (out / "alignment" / "part-q00001.parquet").exists(), "the second question had already finished"
    assert _cached_samples(cache) >= cached  # what was committed survives the kill and is reused on resume
    done = _cli("run", "--config", str(cfg), "--out", str(out), "-q")
    assert done.returncode == 0, done.stderr
    for name in TABLES:
        pd.testing.assert_frame_equal(_sorted(read_table(out, name), name), _sorted(read_table(out_ref, name), name))


def _cached_samples(path: Path) -> int:
    """Rows committed to a run's sqlite sample cache (0 while it does not exist yet or is being created)."""
    if not path.exists():
        return 0
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
        try:
            return int(db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error:  # not created yet, or locked for a moment
        return 0


def test_notebook_executes_on_a_run(tiny_run):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    out, _ = tiny_run
    nb = nbformat.read(Path(__file__).resolve().parents[1] / "notebooks" / "explore.ipynb", as_version=4)
    os.environ["DIAGNOSE_RUN_DIR"] = str(out)
    try:
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    finally:
        os.environ.pop("DIAGNOSE_RUN_DIR")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    text = "".join(o.get("text", "") for o in nb.cells[1].outputs)
    assert "alignment" in text and "live nodes of" in text
    assert "recommended:" in text or ("no clear winner: the evidence" in text and "highest point estimate:" in text)


# ---- refusals: one line on stderr, non-zero exit, nothing written ----------------------------------------


@pytest.fixture(scope="module")
def long_question_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "long.jsonl"
    path.write_text(json.dumps({"question": "Add these: " + " + ".join(["1"] * 6000), "answer": "6000"}) + "\n")
    return path


@pytest.fixture(scope="module")
def other_tokenizer_teacher(embedded_model_path, tmp_path_factory):
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("teacher")
    for f in ("config.json", "model.safetensors", "generation_config.json"):
        if Path(embedded_model_path, f).exists():
            (out / f).symlink_to(Path(embedded_model_path, f))
    tok = AutoTokenizer.from_pretrained(embedded_model_path)
    tok.add_tokens(["<other_a>"])
    tok.save_pretrained(out)
    return out


CASES = {
    "unknown task": (["--task", "nosuchtask"], "unknown task"),
    "unknown objective": (["--objective", "nosuchobjective"], "unknown objective"),
    "objective parameter out of range": (["--objective", "jsd:beta=2"], "beta must lie in [0, 1]"),
    "unknown context": (["--teacher", "self:nosuchcontext"], "unknown context"),
    "unknown engine": (["--engine", "nosuchengine"], "unknown engine"),
    "missing model path": (["--student", "/nonexistent/model/dir"], "/nonexistent/model/dir"),
    "budget <= 0": (["--budget", "0"], "budget"),
    "rollouts < 1": (["--rollouts", "0"], "rollouts"),
    "continuations < 1": (["--continuations", "0"], "continuations"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_writes_nothing(case, tmp_path):
    args, needle = CASES[case]
    out = tmp_path / "out"
    proc = _cli("run", *args, "--out", str(out), "-q")
    _assert_refused(proc, needle, out)


def _assert_refused(proc, needle, out):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr
    assert lines and lines[-1].startswith("error:") and needle in lines[-1], proc.stderr
    assert not any(line.startswith("error:") for line in lines[:-1])
    assert not out.exists()


def test_malformed_toml(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("questions = [1,\n")
    _assert_refused(
        _cli("run", "--config", str(bad), "--out", str(tmp_path / "out")), "malformed TOML", tmp_path / "out"
    )


def test_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    _assert_refused(_cli("run", "--out", str(blocker / "run"), "-q"), "not a directory", blocker / "run")


def test_teacher_with_another_tokenizer(tmp_path, other_tokenizer_teacher):
    out = tmp_path / "out"
    proc = _cli("run", "--teacher", f"model={other_tokenizer_teacher}", "--questions", "1", "--out", str(out), "-q")
    _assert_refused(proc, "does not share the student's tokenizer", out)
    assert "vocabulary size" in proc.stderr


def test_prompt_longer_than_the_context(tmp_path, long_question_file):
    out = tmp_path / "out"
    proc = _cli(
        "run",
        "--task",
        f"file:path={long_question_file},question=question,answer=answer",
        "--teacher",
        "self:answer",
        "--out",
        str(out),
        "-q",
    )
    _assert_refused(proc, "exceeds the model's context", out)


def test_ls_and_help():
    for what, names in {
        "tasks": ["arithmetic", "countdown", "gsm8k", "math", "file"],
        "objectives": ["rkl", "fkl", "jsd", "rkl_topk", "grpo_ref"],
        "contexts": ["answer", "solution", "summary", "contrastive", "system=<text>", "template=<path>"],
        "engines": ["hf", "vllm"],
    }.items():
        proc = _cli("ls", what)
        assert proc.returncode == 0 and all(n in proc.stdout for n in names), (what, proc.stdout)
    helptext = _cli("run", "--help").stdout
    for flag in (
        "--student",
        "--task",
        "--teacher",
        "--objective",
        "--questions",
        "--rollouts",
        "--continuations",
        "--top-k",
        "--budget",
        "--engine",
        "--seed",
        "--out",
        "--config",
    ):
        assert flag in helptext


def test_batch_grid_writes_a_comparison(tmp_path, embedded_model_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(
        'students = ["embedded"]\ntasks = ["arithmetic", "arithmetic:ops=+"]\nteachers = ["self:answer"]\n'
        'objectives = ["rkl", "fkl"]\nquestions = 1\nrollouts = 2\nmax_new_tokens = 24\nbudget = 24\n'
        f'top_k = 2\ncontinuations = 2\nprogress = false\nout = "{tmp_path / "grid"}"\n'
    )
    proc = _cli("batch", str(grid))
    assert proc.returncode == 0, proc.stderr
    table = pd.read_parquet(tmp_path / "grid" / "comparison.parquet")
    assert set(table.task) == {"arithmetic", "arithmetic:ops=+"} and set(table.student) == {"embedded"}
    assert "Best configuration per run" in (tmp_path / "grid" / "comparison.html").read_text()


def test_param_space_option_adds_a_column(tmp_path, embedded_model_path):
    """--param-space scores cos(J^T g*, J^T d) on the last block next to the logit-space cosine; live values
    are recomputed here with param_space_alignment from the tables and the model itself."""
    cfg = {**TINY, "teachers": ["self:answer"], "objectives": ["rkl", "fkl"], "budget": 24}
    result = diagnose.run(out=str(tmp_path / "p"), progress=False, param_space=True, **cfg)
    al = result.alignment
    assert len(al) > 0 and al.param_cos.notna().all()
    assert al.param_cos.between(-1, 1).all()
    # where g* = 0 its parameter-space image is 0 too: the cosine is undefined there as well
    assert (al.loc[al.degenerate, "param_cos"] == 0).all()
    live = al[~al.degenerate]
    assert len(live) > 0, "the run should have live (non-degenerate) nodes"
    # the parameter-space image is a different vector: the two cosines are not identical
    assert (live.param_cos - live.cos_full).abs().max() > 1e-4
    _check_param_cos(result, live, embedded_model_path, cfg)


def _check_param_cos(result, live, model_path, cfg, n_nodes=2):
    """Recompute param_cos of rkl and fkl at up to n_nodes live nodes of teacher self:answer: p and q from full
    forward passes of the student on its prompt and on the teacher's (the hinted prompt) + the response;
    g* = p (Q-hat - V) on the candidates that have continuations (V their p-weighted mean Q-hat); d written
    out (rkl: -p (l - KL(p||q)), fkl: q - p); both pulled back onto the last transformer block and the final
    norm (param_cos.py's default subset) with param_space_alignment."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from diagnose import tasks
    from diagnose.engines import render_prompt
    from diagnose.param_space import param_space_alignment
    from diagnose.teachers import ContextInputs, build_messages

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    subset = rf"layers\.{model.config.num_hidden_layers - 1}\.|(^|\.)norm\.weight$"
    questions = {q.id: q for q in tasks.get(RunConfig().task).questions(cfg["questions"], seed=cfg["seed"])}
    ro, nodes, cands = result.rollouts, result.nodes, result.candidates
    live = live[live.teacher == "self:answer"].set_index(KEYS["nodes"] + ["objective"]).param_cos
    keys = sorted({k[:3] for k in live.index})[:n_nodes]
    assert keys, "no live node to recompute"
    for key in keys:
        r = ro[(ro.question_id == key[0]) & (ro.rollout_idx == key[1])].iloc[0]
        response = [int(t) for t in r.token_ids]
        q = questions[key[0]]
        prompt = render_prompt(tok, q.prompt)
        assert tok.decode(prompt) == r.prompt
        hinted = render_prompt(tok, build_messages("answer", ContextInputs(question=q.prompt, answer=q.answer)))
        ids = torch.tensor([prompt + response])
        pos = len(prompt) + int(key[2]) - 1  # the logits there predict response[position]
        with torch.no_grad():
            z = model(ids).logits[0, pos].double()
            zt = model(torch.tensor([hinted + response])).logits[0, len(hinted) + int(key[2]) - 1].double()
        logp, logq = torch.log_softmax(z, -1), torch.log_softmax(zt, -1)
        p, q_t = logp.exp(), logq.exp()
        c = cands[(cands.question_id == key[0]) & (cands.rollout_idx == key[1]) & (cands.position == key[2])]
        c = c[c.n > 0]
        cid = torch.tensor(c.token_id.to_numpy(), dtype=torch.long)
        q_hat = torch.tensor(c.q_hat.to_numpy(), dtype=torch.float64)
        value = (p[cid] * q_hat).sum() / p[cid].sum()
        g = torch.zeros_like(p)
        g[cid] = p[cid] * (q_hat - value)
        node = nodes[(nodes.question_id == key[0]) & (nodes.rollout_idx == key[1]) & (nodes.position == key[2])]
        np.testing.assert_allclose(float((g * g).sum()), node.g_sq.iloc[0], rtol=1e-3)  # the run's own g*
        l = logp - logq
        dirs = {"rkl": -p * (l - (p * l).sum()), "fkl": q_t - p}
        at = (torch.zeros(1, dtype=torch.long), torch.tensor([pos]))  # batch row, position of the node
        d = torch.stack(list(dirs.values()))[None].float()  # [1 node, 2 directions, V]
        res = param_space_alignment(model, ids, *at, g[None].float(), d, params=subset)
        for j, name in enumerate(dirs):
            if key + (name,) in live.index:
                got, want = float(res.cos[0, j]), float(live[key + (name,)])
                assert abs(got - want) < 1e-3, (key, name, got, want)
