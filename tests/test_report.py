"""The output layer: Parquet tables (schemas, atomic shards, resume), summary, RunResult, HTML report.

Data come from the real pipeline on the exact engine (tests/fixtures_run.py): 10 questions x 4 rollouts, four
teachers x two objectives. Two of the teachers are the student sharpened and flattened, whose rkl directions
are exact opposites, so the summary must report their figures as exact opposites. Whether the estimates
recover the true alignment is tests/test_validity.py's business (exact Q); here every figure is checked
against an independent computation from the tables.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures_run import FLATTER, OTHERS, SHARPER, exact_run

import diagnose
from diagnose import tables as T
from diagnose.errors import DiagnoseError
from diagnose.estimate.stats import spearman
from diagnose.estimate.summary import summarize, write_summary
from diagnose.tables import read_summary

ROOT = Path(__file__).resolve().parents[1]
SEED = 3


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One exact-engine run (tables, summary, report.html), a few seconds."""
    return exact_run(
        tmp_path_factory.mktemp("run") / "exact-run",
        teachers=[SHARPER, FLATTER, *OTHERS],
        objectives=["rkl", "fkl"],
        questions=10,
        rollouts=4,
        budget=120,
        seed=SEED,
    )


@pytest.fixture(scope="module")
def tables(run):
    return {
        name: T.read_table(run, name) for name in ("rollouts", "nodes", "candidates", "alignment", "summary")
    }


def _small_rollouts(n=3, offset=0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "question_id": [f"q{i + offset}" for i in range(n)],
            "rollout_idx": list(range(n)),
            "prompt": ["What is 2+2?"] * n,
            "response": ["4"] * n,
            "token_ids": [np.array([5, 6], dtype=np.int32)] * n,
            "tokens": [["4", "\n"]] * n,
            "student_logprobs": [[-0.1, -2.0]] * n,
            "n_tokens": [2] * n,
            "correct": [True, False, True][:n],
            "pass_rate": [0.5] * n,
            "difficulty": ["medium"] * n,
        }
    )


# ---------------------------------------------------------------- tables


def test_tables_round_trip_with_metadata(tmp_path, tables):
    meta = T.standard_metadata(
        models={"student": "s", "teachers": ["t"]},
        seeds={"rollouts": 7},
        config_hash="abc123",
        cost={"rollouts": 3},
    )
    df = tables["alignment"].iloc[:50]
    T.write_table(tmp_path, "alignment", df.iloc[:20], shard="b", metadata=meta)
    T.write_table(tmp_path, "alignment", df.iloc[20:], shard="a", metadata=meta)
    back = T.read_table(tmp_path, "alignment")
    expected = pd.concat([df.iloc[20:], df.iloc[:20]], ignore_index=True)  # shard-id order
    pd.testing.assert_frame_equal(back, expected, check_dtype=True)
    assert T.completed_shards(tmp_path, "alignment") == ["a", "b"]
    got = T.read_metadata(tmp_path, "alignment")
    assert (
        got["models"] == meta["models"] and got["seeds"] == {"rollouts": 7} and got["config_hash"] == "abc123"
    )
    assert got["versions"]["torch"] and got["versions"]["transformers"] and got["versions"]["diagnose"]
    assert got["table"] == "alignment" and got["schema_version"] == T.SCHEMA_VERSION
    # list columns and nullable columns survive; an omitted nullable column reads back as nulls
    r = _small_rollouts()
    T.write_table(tmp_path, "rollouts", r)
    rb = T.read_table(tmp_path, "rollouts")
    assert list(rb["tokens"][0]) == ["4", "\n"] and rb["token_ids"][0].dtype == np.int32
    assert rb["reference"].isna().all() and rb["correct"].dtype == bool


@pytest.mark.parametrize(
    "mutate, column",
    [
        (lambda d: d.drop(columns=["correct"]), "correct"),
        (lambda d: d.assign(correct=["yes", "no", "yes"]), "correct"),
        (lambda d: d.assign(pass_rate=[0.5, 1.5, 0.5]), "pass_rate"),
        (lambda d: d.assign(n_tokens=[2.5, 2.0, 2.0]), "n_tokens"),
        (lambda d: d.assign(difficulty=["medium", "trivial", "easy"]), "difficulty"),
        (lambda d: d.assign(prompt=[None, "x", "y"]), "prompt"),
        (lambda d: d.assign(extra_col=1), "extra_col"),
        (lambda d: d.assign(rollout_idx=[0, 0, 1], question_id=["q", "q", "q"]), "question_id"),
    ],
)
def test_validation_names_the_bad_column(tmp_path, mutate, column):
    with pytest.raises(DiagnoseError, match=re.escape(column)):
        T.write_table(tmp_path, "rollouts", mutate(_small_rollouts()))
    assert not T.has_table(tmp_path, "rollouts") and not list(tmp_path.rglob("*.tmp"))


def test_failed_write_keeps_previous_shard_and_leaves_no_partial_file(tmp_path, monkeypatch):
    T.write_table(tmp_path, "rollouts", _small_rollouts(), shard="0")
    before = T.read_table(tmp_path, "rollouts")

    def broken(table, where, **kw):
        where.write(b"PAR1 partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(T.io.pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        T.write_table(tmp_path, "rollouts", _small_rollouts(offset=10), shard="0")
    with pytest.raises(OSError):
        T.write_table(tmp_path, "rollouts", _small_rollouts(offset=20), shard="1")
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "rollouts").iterdir()) == ["part-0.parquet"]
    pd.testing.assert_frame_equal(T.read_table(tmp_path, "rollouts"), before)


def test_writer_killed_mid_write_loses_nothing(tmp_path):
    """SIGKILL a writer between its temporary and the rename: old shards intact, strays ignored."""
    T.write_table(tmp_path, "rollouts", _small_rollouts(), shard="a")
    before = T.read_table(tmp_path, "rollouts")
    script = textwrap.dedent(f"""
        import sys, time
        import numpy as np, pandas as pd
        from diagnose.tables import io as T
        def hang(fd):
            print("ready", flush=True)
            time.sleep(120)
        T._fsync = hang
        n = 20000
        df = pd.DataFrame({{"question_id": [f"k{{i}}" for i in range(n)],
            "rollout_idx": np.zeros(n, np.int32),
            "prompt": "p" * 200, "response": "r" * 200, "token_ids": [np.arange(5, dtype=np.int32)] * n,
            "tokens": [list("abcde")] * n, "student_logprobs": [np.zeros(5, np.float32)] * n, "n_tokens": 5,
            "correct": True, "pass_rate": 1.0, "difficulty": "easy"}})
        T.write_table({str(tmp_path)!r}, "rollouts", df, shard=sys.argv[1])
    """)
    for shard in ("a", "b"):  # rewrite of a complete shard, then a new shard
        proc = subprocess.Popen([sys.executable, "-c", script, shard], stdout=subprocess.PIPE, cwd=ROOT)
        try:
            assert proc.stdout.readline().strip() == b"ready"
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
    strays = sorted(p.name for p in (tmp_path / "rollouts").glob(".*.tmp"))
    assert len(strays) == 2 and all(s.startswith((".part-a.parquet.", ".part-b.parquet.")) for s in strays)
    assert T.completed_shards(tmp_path, "rollouts") == ["a"]
    pd.testing.assert_frame_equal(T.read_table(tmp_path, "rollouts"), before)
    # the stray temporaries do not block a resumed writer
    T.write_table(tmp_path, "rollouts", _small_rollouts(offset=5), shard="b")
    assert (
        T.completed_shards(tmp_path, "rollouts") == ["a", "b"]
        and len(T.read_table(tmp_path, "rollouts")) == 6
    )


def test_docs_list_every_column():
    doc = (ROOT / "docs" / "tables.md").read_text()
    assert T.describe_markdown() in doc, "docs/tables.md is out of date: paste describe_markdown() into it"


# ---------------------------------------------------------------- summary


def _pooled_by_config(a, nodes, metric, mask=None):
    """The pooled alignment A / sqrt(B U) per config, written out with pandas (independent of summary.py)."""
    y = a.merge(nodes[["question_id", "rollout_idx", "position", "g_sq_unbiased", "weight"]].rename(
        columns={"weight": "w"}))
    if mask is not None:
        y = y[mask(y)]
    dsq = y["d_sq" if metric == "cos_full" else "d_sq_support"]
    live = (dsq > 0) & ~y["no_signal"].astype(bool)  # A, B and U over the configuration's live rows
    y = y.assign(
        A=y["w"] * np.where(live, y["dot"] / np.sqrt(dsq.where(live, 1.0)), 0.0),
        B=y["w"] * y["g_sq_unbiased"] * live,
        U=y["w"] * live,
    )
    g = y.groupby("config")[["A", "B", "U"]].sum()
    return (g["A"] / np.sqrt(g["B"] * g["U"])).where((g["B"] > 0) & (g["U"] > 0)).clip(-1, 1)


def test_summary_matches_independent_pandas(tables):
    a, r, nodes, s = tables["alignment"], tables["rollouts"], tables["nodes"], tables["summary"]
    a = a.merge(r[["question_id", "rollout_idx", "correct", "difficulty"]])
    ok = a[~a["degenerate"]]
    w = ok.merge(nodes[["question_id", "rollout_idx", "position", "weight"]].rename(columns={"weight": "w"}))
    assert (nodes["weight"] > 1).any()  # window selection: later tokens stand for several
    for metric in ("cos_full", "cos_support"):
        sm = s[s["metric"] == metric].set_index("config")
        mean = _pooled_by_config(a, nodes, metric)
        np.testing.assert_allclose(sm.loc[mean.index, "mean"], mean, rtol=1e-5)
        per_token = (w["w"] * w[metric]).groupby(w["config"]).sum() / w["w"].groupby(w["config"]).sum()
        np.testing.assert_allclose(sm.loc[per_token.index, "mean_per_token"], per_token, rtol=1e-5)
        assert (sm.loc[mean.index, "n_nodes"] == ok.groupby("config").size()).all()
        for flag, split in ((True, "correct"), (False, "incorrect")):
            m = _pooled_by_config(a, nodes, metric, lambda y, f=flag: y["correct"] == f)
            np.testing.assert_allclose(sm.loc[m.index, f"mean_{split}"], m, rtol=1e-5)
            # the paper-style split: token-weighted raw per-node cosines of that split's nodes
            ws = w[w["correct"] == flag]
            raw = (ws["w"] * ws[metric]).groupby(ws["config"]).sum() / ws["w"].groupby(ws["config"]).sum()
            np.testing.assert_allclose(sm.loc[raw.index, f"mean_per_token_{split}"], raw, rtol=1e-5)
            assert (sm[f"mean_per_token_ci_low_{split}"] <= sm[f"mean_per_token_{split}"] + 1e-7).all()
            assert (sm[f"mean_per_token_{split}"] <= sm[f"mean_per_token_ci_high_{split}"] + 1e-7).all()
        raw_diff = sm["mean_per_token_correct"] - sm["mean_per_token_incorrect"]
        np.testing.assert_allclose(sm["diff_per_token"], raw_diff, rtol=1e-5, atol=1e-7)
        diff = sm["mean_correct"] - sm["mean_incorrect"]
        np.testing.assert_allclose(sm["diff_correct_incorrect"], diff, rtol=1e-5, atol=1e-7)
        for band in T.BANDS:
            m = _pooled_by_config(a, nodes, metric, lambda y, b=band: y["difficulty"] == b)
            np.testing.assert_allclose(sm.loc[m.index, f"mean_{band}"], m.astype(float), rtol=1e-5)
        # ranks follow the means; every interval contains its mean
        assert list(sm.sort_values("rank").index) == list(mean.sort_values(ascending=False).index)
        assert (sm["ci_low"] <= sm["mean"] + 1e-7).all() and (sm["mean"] <= sm["ci_high"] + 1e-7).all()
    full = s[s["metric"] == "cos_full"].set_index("config")
    # the sharpened and the flattened student have opposite rkl directions at every node: every figure of
    # one is minus the other's, and so are the intervals (the replicates are paired)
    up, down = full.loc[f"{SHARPER}|rkl"], full.loc[f"{FLATTER}|rkl"]
    # (stored in float32: float64 values equal up to rounding can land 1 float32 ulp apart, ~6e-8 relative)
    for col in ("mean", "mean_per_token", "mean_correct", "mean_incorrect", "rollout_cos", "diff_correct_incorrect"):
        assert np.isfinite(up[col]) and up[col] == pytest.approx(-down[col], rel=2e-7, abs=1e-12), col
    # interval ends are stored in float32: mirrored quantiles agree to its precision (1 ulp ~ 6e-8 relative)
    assert (up["ci_low"], up["ci_high"]) == pytest.approx((-down["ci_high"], -down["ci_low"]), rel=1e-6)
    assert up["mean"] != 0
    # rollout-level cosine: concatenated g* and w*d per rollout, averaged over rollouts
    x = a.merge(nodes[["question_id", "rollout_idx", "position", "g_sq"]])
    x["wdot"], x["wd_sq"] = x["weight"] * x["dot"], x["weight"] ** 2 * x["d_sq"]
    per = x.groupby(["config", "question_id", "rollout_idx"])[["wdot", "g_sq", "wd_sq"]].sum()
    per = per[np.sqrt(per["g_sq"] * per["wd_sq"]) > 1e-20]
    rc = (per["wdot"] / np.sqrt(per["g_sq"] * per["wd_sq"])).groupby("config").mean()
    np.testing.assert_allclose(full.loc[rc.index, "rollout_cos"], rc, rtol=1e-4, atol=1e-6)
    # effective node count: Kish over token weight x corrected |g*|^2
    y = w.merge(nodes[["question_id", "rollout_idx", "position", "g_sq_unbiased"]])
    y["a"] = y["w"] * y["g_sq_unbiased"].clip(lower=0)
    n_eff = y.groupby("config")["a"].sum() ** 2 / (y["a"] ** 2).groupby(y["config"]).sum()
    np.testing.assert_allclose(full.loc[n_eff.index, "n_effective"], n_eff, rtol=1e-4)
    assert (full["n_effective"] < full["n_nodes"]).all()


def test_recommendation_and_headroom(run, tables):
    summ = read_summary(run)
    a, nodes = tables["alignment"], tables["nodes"]
    rec = summ.recommendation["cos_full"]
    means = _pooled_by_config(a, nodes, "cos_full").sort_values(ascending=False)
    assert rec["overall"]["config"] == means.index[0] and rec["overall"]["runner_up"] == means.index[1]
    assert rec["overall"]["margin"] == pytest.approx(means.iloc[0] - means.iloc[1], rel=1e-6)
    assert rec["overall"]["margin_ci_low"] <= rec["overall"]["margin"] <= rec["overall"]["margin_ci_high"]
    # every question is resampled, those the frontier plan left without nodes too
    assert rec["overall"]["margin_n"] == tables["rollouts"]["question_id"].nunique() >= a["question_id"].nunique()
    ok_b = a.merge(tables["rollouts"][["question_id", "rollout_idx", "difficulty"]])
    for band, best in rec["bands"].items():
        m = _pooled_by_config(ok_b, nodes, "cos_full", lambda y, b=band: y["difficulty"] == b)
        assert best["config"] == m.idxmax() and best["mean"] == pytest.approx(m.max(), rel=1e-6)
    hr = summ.headroom["cos_full"]
    # cross-fitted headroom, recomputed from the tables: over nodes where every ranked configuration is live and
    # both halves are known, choose per node on one half of the continuations, score on the other
    key = ["question_id", "rollout_idx", "position"]
    live = a[(a["d_sq"] > 0) & ~a["no_signal"] & a["dot_half0"].notna() & a["dot_half1"].notna()].copy()
    for h in ("dot_half0", "dot_half1"):
        live[h] = live[h] / np.sqrt(live["d_sq"])
    u0 = live.pivot_table(index=key, columns="config", values="dot_half0").dropna()
    u1 = live.pivot_table(index=key, columns="config", values="dot_half1").reindex(u0.index)
    assert hr["cross_fitted"] and hr["n_nodes"] == len(u0) > 0
    n = nodes.set_index(key).loc[u0.index]
    ww, bb = n["weight"].to_numpy(), (n["weight"] * n["g_sq_unbiased"]).sum()
    rows = np.arange(len(u0))
    oracle_terms = 0.5 * (u1.to_numpy()[rows, u0.to_numpy().argmax(1)] + u0.to_numpy()[rows, u1.to_numpy().argmax(1)])
    # the single best configuration, cross-fitted too: chosen on one half's weighted sum, scored on the other
    b0, b1 = (u0 * ww[:, None]).sum(0).idxmax(), (u1 * ww[:, None]).sum(0).idxmax()
    best_terms = 0.5 * (u1[b0] + u0[b1]).to_numpy()
    scale = np.sqrt(bb * ww.sum())
    assert hr["oracle_mean"] == pytest.approx((ww * oracle_terms).sum() / scale, rel=1e-6)
    assert hr["headroom"] == pytest.approx((ww * (oracle_terms - best_terms)).sum() / scale, rel=1e-6)
    assert hr["headroom_ci_low"] <= hr["headroom"] <= hr["headroom_ci_high"]


def test_summary_is_reproducible(tables):
    a, r, nodes = tables["alignment"], tables["rollouts"], tables["nodes"]
    sub = a[a["teacher"] == SHARPER]
    one = summarize(sub, r, nodes, n_boot=200, seed=5)
    two = summarize(sub, r, nodes, n_boot=200, seed=5)
    pd.testing.assert_frame_equal(one.table, two.table)


def test_rollout_level_cosine_is_the_cosine_of_each_rollouts_concatenation(tables):
    from diagnose.estimate.summary import _prepare, _rollout_level

    df = _prepare(tables["alignment"], tables["rollouts"], tables["nodes"])
    config = df["config"].iloc[0]
    g = df[df["config"] == config].copy()
    g["weight"] = np.linspace(0.5, 2.0, len(g))  # non-trivial weights scale d
    for dsq in ("d_sq", "d_sq_support"):
        per = g.assign(wdot=g["weight"] * g["dot"], wd_sq=g["weight"] ** 2 * g[dsq])
        per = per.groupby("_rollout", sort=True)[["wdot", "g_sq", "wd_sq"]].sum()
        per = per[np.sqrt(per["g_sq"] * per["wd_sq"]) > 1e-20]
        expected = (per["wdot"] / np.sqrt(per["g_sq"] * per["wd_sq"])).clip(-1, 1)
        assert len(expected) > 10
        np.testing.assert_allclose(_rollout_level(g, dsq), expected, rtol=1e-10)


def test_spearman_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, size=200).astype(float)  # many ties
    y = x + rng.normal(size=200)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert np.isnan(spearman([1, 1, 1, 1], [1, 2, 3, 4])) and np.isnan(spearman([1, 2], [2, 1]))


# ---------------------------------------------------------------- RunResult and the report


def test_run_result(run, tmp_path, monkeypatch):
    from diagnose import report

    res = report.load(run)
    assert isinstance(res.summary, pd.DataFrame) and set(res.summary["metric"]) == {"cos_full", "cos_support"}
    best = res.recommendation["overall"]["config"]
    assert best in res.describe() and best in repr(res) and best in res._repr_html_()
    top = res.top(3)
    assert list(top["rank"]) == [1, 2, 3] and top["config"][0] == best
    assert len(res.rollouts) == 40 and {"pooled"} <= set(res.proxy_correlations.index)
    assert res.cost["rollouts"] == 40 and res.metadata["seeds"] == {"seed": SEED}
    # the run's config.toml repeats the run
    from diagnose.pipeline import RunConfig

    again = RunConfig.from_sources(run / "config.toml", {"out": str(run)})
    assert again.digest() == res.metadata["config_hash"] and again.seed == SEED
    # a stray temporary in the run is not copied; the copy has its own report
    (run / "nodes" / ".part-00000.parquet.123.dead.tmp").write_bytes(b"junk")
    dest = res.save(tmp_path / "copy")
    assert (dest / "report.html").is_file() and not list(dest.rglob("*.tmp"))
    pd.testing.assert_frame_equal(report.load(dest).summary, res.summary)
    shown = []
    import IPython.display

    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    assert report.load(dest).show() is None and "<iframe srcdoc=" in shown[0].data
    with pytest.raises(DiagnoseError):
        report.load(tmp_path / "nowhere")


def _recommended(run: Path) -> str:
    """The configuration the summary puts first (what the report opens on and the CLI names)."""
    return read_summary(run).recommendation["cos_full"]["overall"]["config"]


@pytest.fixture(scope="module")
def report_html(run) -> Path:
    from diagnose.report import render_report

    return render_report(run)


def test_report_is_self_contained(report_html):
    text = report_html.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]+src\s*=", text, re.I), "a script is fetched instead of inlined"
    assert not re.search(r"<link[^>]+href\s*=\s*[\"']?https?:", text, re.I)
    assert "Plotly.newPlot" in text and len(text) > 3_000_000  # plotly.js inlined
    data = json.loads(re.search(r"id='diagnose-data'>(.*?)</script>", text, re.S).group(1))
    assert data["configs"][data["default_config"]] == _recommended(report_html.parent)
    assert len(data["rollouts"]) == 40 and all(len(r["lp"]) == len(r["tokens"]) for r in data["rollouts"])
    for needle in (
        "Bottom line",
        "Headroom",
        "Cost of this run",
        "heatmap-positions",
        "fig-ranking",
        "fig-correctness",
        "fig-correctness-raw",
        "Paper-style: mean raw per-node cosine",
        "fig-bands",
        "fig-passrate",
        "fig-proxy-scatter",
        "fig-rho",
        "What alignment means",
    ):
        assert needle in text


def test_embedded_data_cannot_close_the_script():
    from diagnose.report.style import json_script

    obj = {"tokens": ["</script><script>alert(1)</script>", "&amp;", "\n"], "x": [1.5, None]}
    text = json_script(obj)
    assert "<" not in text and ">" not in text and "&" not in text and json.loads(text) == obj


CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


# Under CI (.ci/run sets CI=true) the browser test must run or fail: `make browser` installs chromium there.
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _browser_or_skip():
    """playwright's sync API, or a skip outside CI where chromium or playwright is missing (a failure under CI)."""
    if CHROMIUM is None:
        if IN_CI:
            pytest.fail(
                "CI is set but chromium is not installed: `make browser` must install it (apt-get as root) "
                "so the report's browser test runs"
            )
        pytest.skip("chromium is not installed (make browser)")
    try:
        from playwright import sync_api
    except ImportError as err:
        if IN_CI:
            pytest.fail(f"CI is set but playwright cannot be imported ({err}): it is a dev dependency")
        pytest.skip(f"playwright is not installed ({err})")
    return sync_api


@pytest.mark.slow
def test_report_renders_in_headless_chromium(report_html):
    sync_api = _browser_or_skip()
    problems, requests = [], []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on(
                "console",
                lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("request", lambda req: requests.append(req.url))
            page.goto(report_html.as_uri())
            page.wait_for_selector("#heatmap-positions .main-svg .heatmaplayer", timeout=30_000)
            page.wait_for_selector("#heatmap-rollout .main-svg .heatmaplayer", timeout=30_000)
            for fig in (
                "fig-ranking",
                "fig-correctness",
                "fig-correctness-raw",
                "fig-bands",
                "fig-passrate",
                "fig-proxy-scatter",
                "fig-rho",
            ):
                assert page.locator(f"#{fig} .main-svg").count() >= 1, fig
            # the heatmap actually drew cells (plotly paints heatmaps as an image inside the layer)
            assert page.locator("#heatmap-positions .heatmaplayer image").count() >= 1
            first = page.evaluate(
                "JSON.parse(document.getElementById('diagnose-data').textContent).rollouts[0]"
            )
            assert page.locator("#rollout-text span.tok").count() == len(first["tokens"])
            nodes = page.locator("#rollout-text span.node:not(.deg)")
            before = nodes.first.get_attribute("style")
            nodes.first.hover()
            tip = page.locator("#tooltip")
            assert tip.is_visible() and "V̂" in tip.inner_text() and "cos (full)" in tip.inner_text()
            nodes.first.click()
            assert "Candidates at position" in page.locator("#candidates").inner_text()
            page.select_option(
                "#sel-config",
                str(
                    len(
                        page.evaluate(
                            "JSON.parse(document.getElementById('diagnose-data').textContent).configs"
                        )
                    )
                    - 1
                ),
            )
            assert page.locator("#rollout-text span.node:not(.deg)").first.get_attribute("style") != before
            page.select_option("#sel-rollout", "1")
            page.check("input[name=metric][value=support]")
            assert "support" in page.locator("#rollout-info").inner_text()
        finally:
            browser.close()
    assert not problems, problems
    assert all(u.startswith(("file:", "data:", "blob:", "about:")) for u in requests), requests


def test_degenerate_and_partial_runs_still_report(tmp_path):
    """One configuration, no nodes/candidates tables (nor the summary made from them), no cost.json, then
    every node degenerate."""
    from diagnose.report import render_report

    run = exact_run(
        tmp_path / "r", teachers=[OTHERS[0]], objectives=["rkl"], questions=3, rollouts=2, budget=40, seed=1
    )
    for extra in ("nodes", "candidates", "summary"):
        shutil.rmtree(run / extra)
    (run / "cost.json").unlink()
    with pytest.raises(DiagnoseError, match="no summary table yet"):
        render_report(run)  # the report renders a summary; it never computes one
    res = diagnose.load(run)  # computes one without writing it
    # |g*|^2 and the node weights live in the nodes table: without it there is no alignment to rank, only
    # the descriptive per-token mean, and the report says why
    assert res.recommendation["overall"] is None and res.summary["mean"].isna().all()
    assert res.summary["mean_per_token"].notna().all()
    assert res.summary["rollout_cos"].isna().all()
    assert not (run / "summary").exists()
    text = res.report().read_text(encoding="utf-8")
    assert "No cost.json" in text and "nodes table" in text
    for shard in T.completed_shards(run, "alignment"):
        part = pd.read_parquet(run / "alignment" / f"part-{shard}.parquet").assign(degenerate=True)
        T.write_table(run, "alignment", part, shard=shard)
    summ = write_summary(run, n_boot=20)
    assert summ.table["mean"].isna().all() and (summ.table["n_nodes"] == 0).all()
    assert summ.recommendation["cos_full"]["overall"] is None
    assert "No configuration has a defined alignment" in render_report(run).read_text(encoding="utf-8")


def test_cli_report(run, tmp_path):
    from typer.testing import CliRunner

    from diagnose.cli import app

    result = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    assert re.search(rf"(recommended|highest point estimate): {re.escape(_recommended(run))} ", result.output)
    assert (tmp_path / "r.html").stat().st_size > 3_000_000
    bad = CliRunner().invoke(app, ["report", str(tmp_path / "missing")])
    assert bad.exit_code == 1 and "no table 'alignment'" in bad.output
