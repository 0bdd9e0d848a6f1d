"""Static CSS and JavaScript of the HTML report (inlined: the report must work offline)."""
# ruff: noqa: E501  (embedded CSS and JavaScript keep their natural line lengths)

CSS = r"""
:root { --ink:#1d232a; --muted:#5b6570; --line:#dfe3e8; --bg:#f6f7f9; --card:#fff; --accent:#2166ac; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
       color:var(--ink); background:var(--bg); }
main { max-width:1280px; margin:0 auto; padding:20px 28px 60px; }
header.top { background:#1d2b3a; color:#fff; padding:18px 28px; }
header.top .inner { max-width:1280px; margin:0 auto; }
header.top h1 { margin:0 0 4px; font-size:22px; font-weight:600; }
header.top .sub { color:#c7d2dd; font-size:13px; }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; background:#f0ad4e; color:#222;
         margin-left:8px; vertical-align:middle; }
section { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:18px 22px;
          margin:18px 0; }
section h2 { margin:0 0 4px; font-size:18px; font-weight:600; }
p.caption { margin:2px 0 12px; color:var(--muted); font-size:13.5px; max-width:980px; }
.grid2 { display:grid; grid-template-columns: minmax(0,1fr) minmax(0,1fr); gap:18px; }
@media (max-width: 1000px) { .grid2 { grid-template-columns: minmax(0,1fr); } }
.bottomline { border-left:5px solid var(--accent); }
.rec { font-size:17px; margin:6px 0 10px; }
.rec code { font-size:16px; background:#eef3f9; padding:2px 6px; border-radius:4px; }
.ok { color:#1b7837; } .warn { color:#b35806; }
table.t { border-collapse:collapse; font-size:13.5px; margin:6px 0; }
table.t th, table.t td { border-bottom:1px solid var(--line); padding:4px 10px; text-align:left; white-space:nowrap; }
table.t th { color:var(--muted); font-weight:600; background:#fafbfc; }
table.t td.num { text-align:right; font-variant-numeric: tabular-nums; }
.legend-box { background:#f4f8fc; border:1px solid #d6e3f0; border-radius:6px; padding:10px 14px; font-size:13.5px; }
.cards { display:flex; flex-wrap:wrap; gap:12px; }
.card { border:1px solid var(--line); border-radius:6px; padding:8px 14px; min-width:140px; background:#fbfcfd; }
.card .v { font-size:20px; font-weight:600; font-variant-numeric: tabular-nums; }
.card .k { color:var(--muted); font-size:12px; }
.controls { display:flex; flex-wrap:wrap; gap:14px; align-items:center; margin:6px 0 10px; font-size:14px; }
.controls select { font-size:14px; padding:3px 6px; max-width:420px; }
.rollout-text { white-space:pre-wrap; font:14px/1.9 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;
                border:1px solid var(--line); border-radius:6px; padding:10px 12px; background:#fff;
                max-height:420px; overflow:auto; }
.rollout-text .tok { border-radius:3px; padding:1px 0; }
.rollout-text .node { cursor:pointer; outline:1px solid rgba(0,0,0,.12); }
.rollout-text .node.deg { background:repeating-linear-gradient(45deg,#e4e4e4,#e4e4e4 3px,#f6f6f6 3px,#f6f6f6 6px); }
.rollout-text .node.pinned { outline:2px solid #111; }
.prompt { color:var(--muted); font-size:13px; margin-bottom:6px; white-space:pre-wrap; }
.colorbar { display:flex; align-items:center; gap:8px; font-size:12.5px; color:var(--muted); margin:6px 0; }
.colorbar .bar { width:260px; height:12px; border-radius:3px; border:1px solid var(--line); }
#tooltip { position:fixed; pointer-events:none; background:#1d232a; color:#fff; font-size:12.5px; line-height:1.45;
           padding:8px 10px; border-radius:6px; box-shadow:0 4px 14px rgba(0,0,0,.25); display:none; z-index:10;
           max-width:360px; }
#tooltip b { color:#ffd27f; font-weight:600; }
.muted { color:var(--muted); }
table.t td.wrap { white-space:normal; font-size:13px; }
code.tk { background:#f1f3f5; border-radius:3px; padding:0 3px; font-size:12.5px; }
#tooltip code.tk { background:#38424d; color:#fff; }
details summary { cursor:pointer; color:var(--muted); }
details.qtable { max-height:460px; overflow:auto; margin-top:8px; }
pre.cfg { background:#fafbfc; border:1px solid var(--line); padding:10px; font-size:12.5px; overflow:auto; }
"""

JS = r"""
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("diagnose-data").textContent);
  var PAL = D.palette;
  var state = { r: 0, c: D.default_config, metric: "full", pinned: null };
  var $ = function (id) { return document.getElementById(id); };
  var tip = $("tooltip");

  function fmt(x, d) { return (x === null || x === undefined) ? "–" : Number(x).toFixed(d === undefined ? 3 : d); }
  function rgb(s) { var m = s.match(/\d+/g); return [+m[0], +m[1], +m[2]]; }
  var PALRGB = PAL.map(rgb);
  function colour(v, range) {
    if (v === null || v === undefined) return null;
    var t = (Math.max(-range, Math.min(range, v)) + range) / (2 * range) * (PALRGB.length - 1);
    var i = Math.min(PALRGB.length - 2, Math.floor(t)), f = t - i, a = PALRGB[i], b = PALRGB[i + 1];
    return [0, 1, 2].map(function (k) { return Math.round(a[k] + (b[k] - a[k]) * f); });
  }
  function css(c) { return "rgb(" + c.join(",") + ")"; }
  function ink(c) { return (0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]) < 140 ? "#fff" : "#111"; }
  function esc(s) { var d = document.createElement("span"); d.textContent = s; return d.innerHTML; }
  function show(s) { return String(s).replace(/ /g, "\u2423").replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5"); }
  function tk(s) { return "<code class='tk'>" + esc(show(s)) + "</code>"; }

  function rollout() { return D.rollouts[state.r]; }
  function cfg(ro, c) { return ro.cfg[String(c)] || null; }
  function val(ro, c, i) {
    var a = cfg(ro, c); if (!a) return null;
    return state.metric === "full" ? a.f[i] : a.s[i];
  }
  function interval(a, i) {
    return state.metric === "full" ? [a.fl[i], a.fh[i]] : [a.sl[i], a.sh[i]];
  }

  function tooltipHtml(ro, t) {
    var n = ro.node_at[t], tok = ro.tokens[t];
    var h = "<div>" + tk(tok) + " &nbsp;position " + t + "</div>";
    h += "<div>student p(token) = " + fmt(Math.exp(ro.lp[t])) + "</div>";
    if (n === undefined) return h + "<div class='muted'>not a node (no targeted rollouts here)</div>";
    var N = ro.nodes, a = cfg(ro, state.c);
    if (a) h += "<div>teacher q(token) = " + fmt(a.q[n]) + " &nbsp;<span style='color:#aab'>" + esc(D.configs[state.c]) + "</span></div>";
    h += "<div>Q̂(token) = " + fmt(N.qobs[n]) + (N.nobs[n] ? " (" + N.sobs[n] + "/" + N.nobs[n] + ")" : "") +
         " &nbsp; V̂ = " + fmt(N.v[n]) + "</div>";
    if (N.deg[n]) return h + "<div>degenerate node: all Q̂ equal, g* = 0, cosine undefined</div>";
    if (a) {
      var iv = interval(a, n);
      h += "<div>cos (" + state.metric + ") = <b>" + fmt(val(ro, state.c, n)) + "</b> [" + fmt(iv[0]) + ", " + fmt(iv[1]) + "]</div>";
      h += "<div>teacher advantage = " + fmt(a.ta[n]) + "</div>";
    }
    return h + "<div class='muted' style='color:#aab'>click: candidate tokens</div>";
  }

  function renderText() {
    var ro = rollout(), box = $("rollout-text"), parts = [];
    for (var t = 0; t < ro.tokens.length; t++) {
      var n = ro.node_at[t], style = "", cls = "tok";
      if (n !== undefined) {
        cls += " node";
        if (ro.nodes.deg[n]) cls += " deg";
        else {
          var c = colour(val(ro, state.c, n), 1);
          if (c) style = "background:" + css(c) + ";color:" + ink(c);
        }
        if (state.pinned === t) cls += " pinned";
      }
      parts.push("<span class='" + cls + "' data-t='" + t + "' style='" + style + "'>" + esc(ro.tokens[t]) + "</span>");
    }
    box.innerHTML = parts.join("");
    $("prompt").textContent = "Prompt: " + ro.prompt;
    $("rollout-info").innerHTML = (ro.correct ? "<span class='ok'>correct</span>" : "<span class='warn'>incorrect</span>") +
      " · question pass rate " + fmt(ro.pass_rate, 2) + " (" + ro.band + ") · " + ro.tokens.length + " tokens · " +
      ro.nodes.pos.length + " nodes · mean " + state.metric + " cosine of the chosen configuration: <b>" + fmt(meanCos(ro)) + "</b>";
  }

  function meanCos(ro) {
    var s = 0, k = 0;
    for (var i = 0; i < ro.nodes.pos.length; i++) {
      var v = val(ro, state.c, i);
      if (v !== null && v !== undefined && !ro.nodes.deg[i]) { s += v; k++; }
    }
    return k ? s / k : null;
  }

  function renderCandidates() {
    var ro = rollout(), box = $("candidates"), t = state.pinned;
    if (t === null || ro.node_at[t] === undefined) { box.innerHTML = "<span class='muted'>Click a coloured token to list its candidate tokens.</span>"; return; }
    var n = ro.node_at[t], rows = ro.nodes.cand[n] || [], v = ro.nodes.v[n];
    var h = "<div><b>Candidates at position " + t + "</b> (sampled " + tk(ro.tokens[t]) + "), V̂ = " + fmt(v) +
            ". g*<sub>k</sub> = p<sub>k</sub>(Q̂<sub>k</sub> − V̂): positive = the ideal update raises this token.</div>";
    h += "<table class='t'><tr><th>token</th><th>student p</th><th>Q̂</th><th>successes / n</th><th>g*</th><th>source</th></tr>";
    rows.forEach(function (r) {
      var g = (r[1] === null || r[2] === null || v === null) ? null : r[1] * (r[2] - v);
      h += "<tr><td>" + tk(r[0]) + (r[5] ? " <b>sampled</b>" : "") + "</td><td class='num'>" + fmt(r[1]) +
           "</td><td class='num'>" + fmt(r[2], 2) + "</td><td class='num'>" + r[3] + " / " + r[4] + "</td><td class='num'>" +
           fmt(g, 4) + "</td><td>" + esc(r[6] || "") + "</td></tr>";
    });
    box.innerHTML = h + "</table>";
  }

  function renderHeat() {
    var ro = rollout(), nn = ro.nodes.pos.length, z = [], cd = [];
    D.configs.forEach(function (name, c) {
      var a = cfg(ro, c), zr = [], cr = [];
      for (var i = 0; i < nn; i++) {
        var v = (a && !ro.nodes.deg[i]) ? val(ro, c, i) : null, iv = a ? interval(a, i) : [null, null];
        zr.push(v === undefined ? null : v);
        cr.push([ro.nodes.pos[i], show(ro.tokens[ro.nodes.pos[i]]), fmt(iv[0]), fmt(iv[1]), ro.nodes.deg[i] ? " (degenerate)" : ""]);
      }
      z.push(zr); cd.push(cr);
    });
    var x = ro.nodes.pos.map(function (p, i) { return i; });
    var trace = { type: "heatmap", z: z, x: x, y: D.configs, customdata: cd, zmin: -1, zmax: 1, zmid: 0,
      colorscale: PAL.map(function (c, i) { return [i / (PAL.length - 1), c]; }), xgap: 1, ygap: 1,
      colorbar: { title: { text: "cos (" + state.metric + ")", side: "right" }, thickness: 12, len: 0.9 },
      hovertemplate: "%{y}<br>position %{customdata[0]}: %{customdata[1]}<br>cos %{z:.3f} [%{customdata[2]}, %{customdata[3]}]%{customdata[4]}<extra></extra>" };
    var layout = { margin: { l: 10, r: 10, t: 40, b: 60 }, height: 120 + 26 * D.configs.length, font: D.font,
      title: { text: "Alignment per configuration at each node of this rollout (click a cell: colour the text by that row)",
               font: { size: 15 }, x: 0, xanchor: "left" },
      xaxis: { title: { text: "token position in the response" }, tickvals: x, ticktext: ro.nodes.pos.map(String), tickangle: 0, showgrid: false },
      yaxis: { automargin: true, autorange: "reversed", showgrid: false }, plot_bgcolor: "#d9d9d9",
      shapes: [{ type: "rect", xref: "paper", x0: 0, x1: 1, yref: "y", y0: state.c - 0.5, y1: state.c + 0.5,
                 line: { color: "#111", width: 2 } }] };
    var el = $("heatmap-rollout");
    Plotly.react(el, [trace], layout, { displaylogo: false, responsive: true });
    if (!el._diagnoseBound) {
      el._diagnoseBound = true;
      el.on("plotly_click", function (ev) {
        var p = ev.points[0]; state.c = D.configs.indexOf(p.y); state.pinned = rollout().nodes.pos[p.x];
        $("sel-config").value = String(state.c); renderAll();
      });
    }
  }

  function renderAll() { renderText(); renderCandidates(); renderHeat(); }

  $("sel-rollout").addEventListener("change", function (e) { state.r = +e.target.value; state.pinned = null; renderAll(); });
  $("sel-config").addEventListener("change", function (e) { state.c = +e.target.value; renderAll(); });
  Array.prototype.forEach.call(document.querySelectorAll("input[name=metric]"), function (el) {
    el.addEventListener("change", function (e) { state.metric = e.target.value; renderAll(); });
  });
  var box = $("rollout-text");
  box.addEventListener("mousemove", function (e) {
    var s = e.target.closest ? e.target.closest("span.tok") : null;
    if (!s) { tip.style.display = "none"; return; }
    tip.innerHTML = tooltipHtml(rollout(), +s.getAttribute("data-t"));
    tip.style.display = "block";
    var x = e.clientX + 14, y = e.clientY + 14, w = tip.offsetWidth, h = tip.offsetHeight;
    if (x + w > window.innerWidth - 8) x = e.clientX - w - 14;
    if (y + h > window.innerHeight - 8) y = e.clientY - h - 14;
    tip.style.left = x + "px"; tip.style.top = y + "px";
  });
  box.addEventListener("mouseleave", function () { tip.style.display = "none"; });
  box.addEventListener("click", function (e) {
    var s = e.target.closest ? e.target.closest("span.node") : null;
    if (!s) return;
    state.pinned = +s.getAttribute("data-t"); renderText(); renderCandidates();
  });
  $("text-colorbar").style.background = "linear-gradient(to right," + PAL.join(",") + ")";
  if (D.rollouts.length) renderAll();
})();
"""
