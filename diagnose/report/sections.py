"""The report's sections as HTML fragments: bottom line, cost, ranking, correctness, difficulty, positions,
explorer, proxies, metadata. Each renders what it is given; nothing here computes a statistic."""

from __future__ import annotations

import datetime as _dt
import html
import json
from pathlib import Path

import pandas as pd

from ..tables import BANDS, Summary
from .figures import fig_pass_rates, fig_position_heatmap, fig_proxy_scatter, fig_ranking, fig_rho, fig_splits
from .style import METRIC_NAMES, fmt, fmt_ci, plot_div


def _silence(rec: dict) -> str:
    if not rec.get("no_signal"):
        return ""
    items = "; ".join(f"<code>{html.escape(x.split(': ')[0])}</code>: {html.escape(x.split(': ', 1)[1])}"
                      for x in rec["no_signal"])
    return (
        "<p class='warn'><b>No signal</b> (the teacher differs from the student by no more than rounding of the "
        f"logits; never ranked or recommended): {items}.</p>"
    )


def _bottom_line(summary: Summary, metric: str, other: str | None) -> str:
    rec = summary.recommendation.get(metric, {})
    overall = rec.get("overall")
    if not overall:
        return _silence(rec) + (
            "<p>No configuration has a defined alignment: every node is degenerate, the noise of Q̂ leaves "
            "no signal, or the nodes table (|g*|² and node weights) is missing.</p>"
        )
    e = html.escape
    lines = [
        f"<div class='rec'>{'Recommended' if overall.get('clear') else 'Highest'} configuration: "
        f"<code>{e(overall['config'])}</code> — alignment "
        f"<b>{fmt(overall['mean'])}</b> {fmt_ci(overall['ci_low'], overall['ci_high'])} over "
        f"{overall['n_nodes']} live nodes of {overall.get('n_questions', '?')} questions.</div>"
    ]
    if overall.get("runner_up"):
        verdict = (
            "<span class='ok'>clearly ahead</span>"
            if overall.get("clear")
            else "<span class='warn'>no clear winner: the evidence does not separate it from the runner-up "
            + (
                f"({e(overall['note'])})"
                if overall.get("note")
                else "(the interval of the margin includes 0)"
            )
            + "</span>"
        )
        lines.append(
            f"<p>Versus the runner-up <code>{e(overall['runner_up'])}</code>: margin "
            f"{fmt(overall['margin'])} {fmt_ci(overall['margin_ci_low'], overall['margin_ci_high'])} "
            f"(paired, resampling {overall['margin_n']} questions and their rollouts): {verdict}.</p>"
        )
    if rec.get("no_signal"):
        lines.append(_silence(rec))
    rows = []
    for band in BANDS:
        b = rec.get("bands", {}).get(band)
        if not b:
            rows.append(f"<tr><td>{band}</td><td colspan=4 class='muted'>no questions in this band</td></tr>")
            continue
        margin = (
            (
                f"{fmt(b.get('margin'))} {fmt_ci(b.get('margin_ci_low'), b.get('margin_ci_high'))} over "
                f"<code>{e(b['runner_up'])}</code>"
            )
            if b.get("runner_up")
            else "–"
        )
        rows.append(
            f"<tr><td>{band}</td><td><code>{e(b['config'])}</code></td><td class='num'>{fmt(b['mean'])} "
            f"{fmt_ci(b['ci_low'], b['ci_high'])}</td><td class='num'>{b['n_nodes']}</td><td>{margin}</td></tr>"
        )
    lines.append(
        "<table class='t'><tr><th>question difficulty</th><th>best configuration</th>"
        "<th>alignment [95%]</th><th>nodes</th><th>margin over runner-up [95%]</th></tr>"
        + "".join(rows)
        + "</table>"
    )
    hr = summary.headroom.get(metric)
    if hr:
        lines.append(
            "<p><b>Headroom.</b> Choosing the configuration separately at every token would reach an "
            f"alignment of {fmt(hr['oracle_mean'])} {fmt_ci(hr['oracle_ci_low'], hr['oracle_ci_high'])} against "
            f"{fmt(hr['best_mean'])} for <code>{e(hr['best_config'])}</code> alone: headroom "
            f"<b>{fmt(hr['headroom'])}</b> {fmt_ci(hr['headroom_ci_low'], hr['headroom_ci_high'])} over "
            f"{hr['n_nodes']} nodes where every ranked configuration has a direction. "
            + (
                "<span class='muted'>Cross-fitted: each token's choice is made on one half of its "
                "continuations and scored on the other, so the maximum over noisy estimates does not inflate "
                "it; it is what a choice made on half the evidence gains.</span>"
                if hr.get("cross_fitted")
                else "<span class='muted'>In-sample per-token maximum (this run stored no continuation "
                "halves): optimistic under noise, so no interval is given.</span>"
            )
            + (
                " Configurations most often best per token: "
                + ", ".join(
                    f"<code>{e(k)}</code> {100 * v:.0f}%"
                    for k, v in sorted(hr["winner_share"].items(), key=lambda kv: -kv[1])
                )
                + "."
                if hr.get("winner_share")
                else ""
            )
            + "</p>"
        )
    if other and summary.recommendation.get(other, {}).get("overall"):
        o = summary.recommendation[other]["overall"]
        lines.append(
            f"<p class='muted'>On the other support ({other}) the best is <code>{e(o['config'])}</code>: "
            f"{fmt(o['mean'])} {fmt_ci(o['ci_low'], o['ci_high'])}.</p>"
        )
    return "\n".join(lines)


_LEGEND = """
<div class="legend-box"><b>What alignment means.</b> At every selected token (a <i>node</i>) of a student
rollout,
two updates of the student's logits are compared. The <b>ideal</b> update g* = p ⊙ (Q − V) is the one
that most
raises the chance of a correct final answer; Q̂<sub>k</sub> (the success rate after forcing token k) and
V̂ are
estimated from targeted continuations. The <b>distillation</b> update d = −∂L/∂z is what the objective L
(teacher × objective = one configuration) does to the logits. <b>Alignment = cos(g*, d)</b>: +1 means a small
distillation step moves the student exactly toward success, 0 unrelated, −1 toward failure. Colours: <span
style="color:#b2182b;font-weight:600">red = harmful</span>, white = 0, <span
style="color:#2166ac;font-weight:600">blue
= helpful</span>. <i>cos_full</i> takes d over the whole vocabulary, <i>cos_support</i> only over the
candidate
tokens where Q was estimated. <b>What each figure estimates.</b> A configuration's <i>alignment</i> (ranking,
splits, bottom line) is the cosine between the ideal gradient over all tokens of the group and its per-token
directions scaled to unit length, with every node weighted by the tokens it stands for and |g*|² corrected
for the noise of Q̂, so it neither favours early tokens nor shrinks where |g*| is small; its 95% interval
resamples {unit}. Per-token cosines carry their own interval (over continuations);
degenerate nodes (all Q̂ equal, so g* = 0) have no cosine.</div>
"""


_COST_LABELS = {  # cost.json key -> label, in the order shown (other keys follow, named after themselves)
    "elapsed_s": "wall time",
    "engine_s": "engine time",  # one card per stage: "engine time: <stage>"
    "question_seconds_sum": "question time, summed",
    "wall_time_s": "question time, summed",  # older runs: this was the per-question sum, never wall time
    "invocations": "invocations",
    "rollouts": "student rollouts",
    "rollouts_cached": "rollouts from cache",
    "generated_tokens": "rollout tokens",
    "continuations": "continuations",
    "continuations_generated": "continuations generated",
    "continuations_cached": "continuations from cache",
    "continuation_tokens": "continuation tokens",
    "continuation_tokens_generated": "continuation tokens generated",
    "teacher_tokens": "teacher-scored tokens",
    "questions": "questions in the run",
    "device": "device",
}
_STAGE_ORDER = ("rollouts", "scoring", "continuations", "param_space")  # the pipeline's order
_STAGE_LABELS = {"param_space": "param-space gradients"}
_SECONDS = {"elapsed_s", "question_seconds_sum", "wall_time_s"}


def _duration(seconds: float) -> str:
    """A span of time: one decimal under a minute, else H:MM:SS."""
    seconds = float(seconds)
    return f"{seconds:.1f} s" if seconds < 60 else str(_dt.timedelta(seconds=round(seconds)))


def _cost_note(cost: dict) -> str:
    if not cost:
        return "<p class='muted'>No cost.json in the run directory: only table sizes are shown.</p>"
    parts = []
    if "elapsed_s" in cost:
        parts.append(
            "<b>Wall time</b>: clock time of the <code>diagnose run</code> invocations that worked on this run, "
            "from start (model loading included) to cost.json; resumes add up, the gaps between them do not, and "
            "<code>--shard</code> processes running side by side count once."
        )
    if isinstance(cost.get("engine_s"), dict):
        parts.append(
            "<b>Engine time</b>: busy seconds inside engine calls, per stage. Questions in flight share calls "
            "(each gets its share); Ray workers or shards run calls side by side, so these can add up to more "
            "than the wall time."
        )
    if "question_seconds_sum" in cost or "wall_time_s" in cost:
        parts.append(
            "<b>Question time, summed</b>: each question's time from start to result, added up; questions in "
            "flight overlap, so it can exceed the wall time."
            + (" This run predates wall-time recording: its elapsed time is unknown."
               if "elapsed_s" not in cost and "wall_time_s" in cost else "")
        )
    if "continuations_cached" in cost:
        parts.append(
            "<b>Continuations</b> = generated by the engine + read from the cache (written by an interrupted "
            "earlier invocation, a run sharing the cache folder, or an identical prefix earlier in the question)."
        )
    return "<p class='muted'>" + " ".join(parts) + "</p>" if parts else ""


def _cost_section(run_dir: Path, tables: dict, meta: dict) -> str:
    cost = {}
    path = run_dir / "cost.json"
    if path.is_file():
        try:
            cost = json.loads(path.read_text())
        except ValueError:
            cost = {}
    cost = cost or meta.get("cost", {}) or {}
    if not isinstance(cost, dict):
        cost = {}

    def card(shown: str, label: str) -> str:
        return f"<div class='card'><div class='v'>{shown}</div><div class='k'>{html.escape(label)}</div></div>"

    cards = []
    order = [k for k in _COST_LABELS if k in cost] + [k for k in cost if k not in _COST_LABELS]
    for key in order:
        value = cost[key]
        if key == "nodes":  # shown below, from the nodes table
            continue
        if key == "engine_s" and isinstance(value, dict):
            stages = sorted(value, key=lambda k: (_STAGE_ORDER.index(k) if k in _STAGE_ORDER else 99, k))
            for stage, seconds in ((k, value[k]) for k in stages):
                if isinstance(seconds, (int, float)):
                    name = _STAGE_LABELS.get(stage, stage.replace("_", " "))
                    cards.append(card(_duration(seconds), f"engine time: {name}"))
            continue
        if key in _SECONDS and isinstance(value, (int, float)):
            shown = _duration(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            shown = f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"
        else:
            shown = html.escape(str(value))
        cards.append(card(shown, _COST_LABELS.get(key, key.replace("_", " "))))
    a, n = tables["alignment"], tables.get("nodes")
    derived = {
        "questions": tables["rollouts"]["question_id"].nunique(),
        "nodes": len(n) if n is not None else a.groupby(["question_id", "rollout_idx", "position"]).ngroups,
        "configurations": a["config"].nunique(),
        "node × configuration scores": len(a),
    }
    for key, value in derived.items():
        cards.append(f"<div class='card'><div class='v'>{value:,}</div><div class='k'>{key}</div></div>")
    return "<div class='cards'>" + "".join(cards) + "</div>" + _cost_note(cost)


def _questions_table(rollouts: pd.DataFrame, a: pd.DataFrame, config: str, metric: str, limit=200) -> str:
    ok = a[(a["config"] == config) & ~a["degenerate"]]
    mean = ok.groupby("question_id")[metric].mean()
    q = rollouts.groupby("question_id").agg(
        pass_rate=("pass_rate", "first"),
        band=("difficulty", "first"),
        rollouts=("correct", "size"),
        correct=("correct", "sum"),
        prompt=("prompt", "first"),
    )
    q["mean"] = mean
    q = q.sort_values(["pass_rate", "mean"])
    rows = []
    for qid, r in q.head(limit).iterrows():
        prompt = html.escape(str(r["prompt"]), quote=True)
        rows.append(
            f"<tr><td title='{prompt}'>{html.escape(str(qid))}</td><td class='num'>{r['pass_rate']:.2f}</td>"
            f"<td>{r['band']}</td><td class='num'>{int(r['correct'])}/{int(r['rollouts'])}</td>"
            f"<td class='num'>{fmt(r['mean'])}</td></tr>"
        )
    more = f"<p class='muted'>First {limit} of {len(q)} questions.</p>" if len(q) > limit else ""
    return (
        f"<p class='muted'>Mean alignment under <code>{html.escape(config)}</code>; hover a question id "
        "for its "
        "prompt.</p><table class='t'><tr><th>question</th><th>pass rate</th><th>band</th><th>correct</th>"
        "<th>mean alignment</th></tr>" + "".join(rows) + "</table>" + more
    )


def _flat(value, prefix="") -> str:
    """Nested metadata as 'a.b = value' lines (HTML-escaped)."""
    if isinstance(value, dict):
        return "<br>".join(_flat(v, f"{prefix}{k}.") for k, v in sorted(value.items())) or html.escape(
            prefix[:-1]
        )
    text = value if isinstance(value, str) else json.dumps(value)
    return (
        f"<span class='muted'>{html.escape(prefix[:-1])}</span> = {html.escape(text)}"
        if prefix
        else html.escape(text)
    )


def _meta_section(meta: dict, run_dir: Path) -> str:
    e = html.escape
    rows = []
    for key in ("models", "seeds", "versions", "config_hash"):
        if key in meta and meta[key] not in (None, {}, []):
            rows.append(f"<tr><th>{key}</th><td class='wrap'>{_flat(meta[key])}</td></tr>")
    settings = meta.get("summary", {}).get("settings")
    if settings:
        rows.append(f"<tr><th>summary settings</th><td class='wrap'>{_flat(settings)}</td></tr>")
    cfg = run_dir / "config.toml"
    cfg_html = (
        (
            f"<details><summary>config.toml (the resolved configuration; rerun with it)</summary>"
            f"<pre class='cfg'>{e(cfg.read_text())}</pre></details>"
        )
        if cfg.is_file()
        else ""
    )
    return "<table class='t'>" + "".join(rows) + "</table>" + cfg_html


# ---------------------------------------------------------------- the page


def _header(run_dir: Path, meta: dict, configs: list[str], metric: str) -> str:
    """The page header: run, student, sampling and teacher temperature, number of configurations, metric, when
    generated."""
    e = html.escape
    models = meta.get("models", {})
    student = models.get("student", "?") if isinstance(models, dict) else "?"
    title = "diagnose · on-policy distillation alignment report"
    now = _dt.datetime.now(_dt.timezone.utc)
    temps = ""
    if "temperature" in meta:  # runs before the teacher was scored at the sampling temperature lack the second
        temps = f" · temperature {e(str(meta['temperature']))}"
        if "teacher_temperature" in meta:
            temps += f" (teacher scored at {e(str(meta['teacher_temperature']))})"
    return f"""<header class="top"><div class="inner"><h1>{title}</h1>
<div class="sub">run <b>{e(run_dir.resolve().name)}</b> · student {e(str(student))}{temps} ·
{len(configs)} configurations · metric {e(metric)} ({e(METRIC_NAMES[metric])}) ·
generated {now:%Y-%m-%d %H:%M} UTC</div>
</div></header>"""


def _section_bottom_line(summary: Summary, metric: str, other: str | None, unit: str, note: str | None = None) -> str:
    """Bottom line: the recommendation overall and per difficulty band, headroom, and what alignment means;
    `note`: a warning about the student's verdicts (tables.verdict_note) shown first."""
    warning = f"<p class='warn'>Warning: {html.escape(note)}.</p>" if note else ""
    return f"""<section class="bottomline" id="bottom-line"><h2>Bottom line</h2>
{warning}{_bottom_line(summary, metric, other)}
{_LEGEND.replace("{unit}", unit)}
</section>"""


def _section_cost(run_dir: Path, tables: dict, meta: dict) -> str:
    """Cost of this run: rollouts, tokens and time spent, and the size of what was scored."""
    return f"""<section id="cost"><h2>Cost of this run</h2>
<p class="caption">Time, rollouts, continuations and tokens spent (from cost.json), and the size of what was scored.</p>
{_cost_section(run_dir, tables, meta)}
</section>"""


def _section_ranking(s: pd.DataFrame, s_other: pd.DataFrame | None, metric: str, unit: str) -> str:
    """Ranking of configurations with their intervals (and the other support, and the rollout cosine)."""
    return f"""<section id="ranking"><h2>Ranking of configurations</h2>
<p class="caption">Alignment of each configuration (teacher | objective; pooled over all tokens, token-weighted,
noise-corrected), best first, with 95% bootstrap
intervals over {unit}. Grey diamonds: the same on the other support; red squares: the rollout-level cosine (g* and d
concatenated over all nodes of a rollout, averaged over rollouts).</p>
{plot_div(fig_ranking(s, s_other, metric), "fig-ranking")}
</section>"""


def _section_correctness(s: pd.DataFrame) -> str:
    """Alignment on correct versus incorrect rollouts."""
    fig = fig_splits(
        s,
        ("correct", "incorrect"),
        "Alignment on correct and on incorrect rollouts",
        {"correct": "correct rollouts", "incorrect": "incorrect rollouts"},
    )
    raw = ""
    if "mean_per_token_correct" in s:  # summaries written before the raw split was stored lack it
        fig_raw = fig_splits(
            s,
            ("correct", "incorrect"),
            "Paper-style: mean raw per-node cosine on correct and on incorrect rollouts",
            {"correct": "correct rollouts (raw)", "incorrect": "incorrect rollouts (raw)"},
            figure="mean_per_token",
        )
        raw = f"""<p class="caption">Below, the paper-style figure: the token-weighted mean of the raw per-node
cosines. Noise pulls each raw cosine toward 0, more where |g*| is small, as on correct rollouts, so a gap here
that the noise-consistent figure above does not show is an artefact of noise, not a difference in
alignment.</p>
{plot_div(fig_raw, "fig-correctness-raw")}"""
    return f"""<section id="correctness"><h2>Correct versus incorrect rollouts</h2>
<p class="caption">Does the signal help on the rollouts that failed (where help is needed) as much as on
those that
succeeded? On correct rollouts Q̂ ≈ 1 at most tokens, so g* is small and noisy there; the alignment shown first
is noise-consistent, so that alone does not make the two groups differ.</p>
{plot_div(fig, "fig-correctness")}
{raw}
</section>"""


def _section_difficulty(
    s: pd.DataFrame, rollouts: pd.DataFrame, alignment: pd.DataFrame, best: str, metric: str
) -> str:
    """Questions by difficulty: pass rates, the questions table, alignment per difficulty band."""
    questions = _questions_table(rollouts, alignment, best, metric)
    return f"""<section id="difficulty"><h2>Questions by difficulty</h2>
<p class="caption">A question's pass rate is the fraction of its student rollouts that are correct;
bands: hard
(&lt; 1/3), medium, easy (&gt; 2/3).</p>
<div class="grid2"><div>{plot_div(fig_pass_rates(rollouts), "fig-passrate")}
<details class="qtable"><summary>Questions, hardest first (click to open)</summary>{questions}</details></div>
<div>{plot_div(fig_splits(s, BANDS, "Alignment by question difficulty"), "fig-bands")}</div></div>
</section>"""


def _section_positions(valid: pd.DataFrame, configs: list[str], metric: str) -> str:
    """The configurations x token positions heatmap."""
    return f"""<section id="positions"><h2>Configurations × token positions</h2>
<p class="caption">Mean alignment of each configuration by where the token lies in the response (buttons:
relative
position, or absolute position in geometric windows). Diverging scale centred at 0; grey cells have no
nodes.</p>
{plot_div(fig_position_heatmap(valid, configs, metric), "heatmap-positions")}
</section>"""


def _section_explorer(data: dict, configs: list[str], n_roll: int) -> str:
    """The rollout explorer: menus, colour bar and the placeholders the page's script fills."""
    e = html.escape
    options_r = "".join(
        f"<option value='{i}'>{e(r['qid'])} #{r['idx']} · "
        f"{'correct' if r['correct'] else 'incorrect'} · pass "
        f"{fmt(r['pass_rate'], 2)} ({e(r['band'])}) · {len(r['tokens'])} tokens</option>"
        for i, r in enumerate(data["rollouts"])
    )
    options_c = "".join(
        f"<option value='{i}'{' selected' if i == data['default_config'] else ''}>{i + 1}. {e(c)}</option>"
        for i, c in enumerate(configs)
    )
    shown = (
        f"Showing {len(data['rollouts'])} of {n_roll} rollouts (alternating correct and incorrect)."
        if len(data["rollouts"]) < n_roll
        else f"All {n_roll} rollouts."
    )
    return f"""<section id="explorer"><h2>Rollout explorer</h2>
<p class="caption">Each token of the response is coloured by the chosen configuration's alignment at that
node (nodes
only: tokens without targeted continuations stay uncoloured; hatched = degenerate). Hover a token for p,
q, Q̂, V̂ and
the cosine with its interval; click it for its candidate tokens; click a row of the heatmap to switch
configuration.
{e(shown)}</p>
<div class="controls"><label>Rollout <select id="sel-rollout">{options_r}</select></label>
<label>Configuration <select id="sel-config">{options_c}</select></label>
<span>Support: <label><input type="radio" name="metric" value="full" checked> full vocabulary</label>
<label><input type="radio" name="metric" value="support"> candidates</label></span></div>
<div class="colorbar"><span>−1 (pushes toward failure)</span><div class="bar" id="text-colorbar"></div>
<span>+1 (toward success)</span></div>
<div id="rollout-info" class="muted"></div>
<div id="prompt" class="prompt"></div>
<div id="rollout-text" class="rollout-text"></div>
<div id="candidates" style="margin:10px 0"></div>
<div id="heatmap-rollout"></div>
</section>"""


def _section_proxies(s: pd.DataFrame, valid: pd.DataFrame, configs: list[str], metric: str, summary: Summary) -> str:
    """Cheap proxies versus alignment: the scatter and the rank correlations."""
    pooled = summary.proxy_pooled.get(metric, {})
    return f"""<section id="proxies"><h2>Cheap proxies versus alignment</h2>
<p class="caption">Can a cheap teacher–student discrepancy (no rollouts needed) predict alignment? Top:
alignment
against the chosen proxy (menu) at every node (a sample of at most 3000), colour = teacher, symbol =
objective (click
legend entries to hide them). Below: Spearman rank correlations; |ρ| near 0 means the proxy does not rank
nodes by
alignment. The teacher advantage is shown for reference: it is not cheap (it needs Q̂).</p>
{plot_div(fig_proxy_scatter(valid, configs, metric, pooled), "fig-proxy-scatter")}
{plot_div(fig_rho(s, pooled), "fig-rho")}
</section>"""


def _section_metadata(meta: dict, run_dir: Path) -> str:
    """Run metadata: models, seeds, versions, summary settings and the resolved config.toml."""
    return f"""<section id="metadata"><h2>Run metadata</h2>{_meta_section(meta, run_dir)}</section>"""
