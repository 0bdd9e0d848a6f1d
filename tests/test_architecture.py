"""The import plan, stated as data and checked over every module under diagnose/ and kernels/ (imports inside
functions count): no import circle, no import against the layers above, no module over 600 lines.

Layers, top to bottom (docs/architecture.md); a module imports only from its own layer or below, never:
Estimate and Report from each other (the report renders the tables it is given), Report or Tasks an engine,
Kernels an engine."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 600

# (level, layer, module prefixes); diagnose.kernels is the top-level kernels/ folder (pyproject's package-dir)
LAYERS = [
    (0, "face", ["diagnose", "diagnose.cli", "diagnose.__main__"]),
    (1, "validate", ["diagnose.validate"]),
    (2, "pipeline", ["diagnose.pipeline", "diagnose.export"]),
    (3, "estimate", ["diagnose.estimate", "diagnose.param_space"]),
    (3, "teachers", ["diagnose.teachers"]),
    (3, "tasks", ["diagnose.tasks"]),
    (3, "report", ["diagnose.report"]),
    (4, "engines", ["diagnose.engines", "diagnose.models"]),
    (5, "math", ["diagnose.objectives", "diagnose.ideal", "diagnose.alignment"]),
    (5, "kernels", ["diagnose.kernels"]),
    (6, "base", ["diagnose.errors", "diagnose.logs", "diagnose.atomic", "diagnose.registry", "diagnose.tables"]),
]
NEVER = [({"estimate"}, {"report"}), ({"report"}, {"estimate"}), ({"report", "tasks", "kernels"}, {"engines"})]


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for top in ("diagnose", "kernels"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[0] == "kernels":
                parts = ["diagnose", *parts]
            is_pkg = parts[-1] == "__init__"
            if is_pkg:
                parts = parts[:-1]
            out[".".join(parts)] = (path, is_pkg)
    return out


MODULES = _modules()


def _targets(module: str, is_pkg: bool, node: ast.AST) -> list[str]:
    """The modules of ours an import statement loads (a name imported from a package that is a submodule counts
    as that submodule, not the package)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = module if is_pkg else module.rsplit(".", 1)[0]
        if node.level:
            parts = base.split(".")
            base = ".".join(parts[: len(parts) - (node.level - 1)])
            target = base + ("." + node.module if node.module else "")
        else:
            target = node.module or ""
        subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
        names = subs + ([target] if len(subs) < len(node.names) else [])
    out = []
    for name in names:
        while name and name not in MODULES and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in MODULES and name != module:
            out.append(name)
    return out


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, (path, is_pkg) in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges[module].update(_targets(module, is_pkg, node))
    return edges


def _layer(module: str) -> tuple[int, str]:
    best = None
    for level, name, prefixes in LAYERS:
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[2]):
                best = (level, name, len(p))
    assert best is not None, f"{module} is in no layer: add it to LAYERS and docs/architecture.md"
    return best[0], best[1]


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_graph_sees_function_level_and_relative_imports():
    edges = _graph()
    # imported inside a function (the CLI loads its commands' modules lazily)
    assert "diagnose.estimate.summary" in edges["diagnose.cli"]
    # `from .. import kernels` inside diagnose/estimate is the top-level kernels/ package
    assert "diagnose.kernels" in edges["diagnose.estimate.directions"]
    assert len(MODULES) > 80


def test_no_import_circle():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_import_stays_in_its_layer_or_goes_below():
    bad = []
    for module, targets in _graph().items():
        lv, name = _layer(module)
        for t in sorted(targets):
            tlv, tname = _layer(t)
            if tlv < lv or any(name in a and tname in b for a, b in NEVER):
                bad.append(f"{module} ({name}, {lv}) -> {t} ({tname}, {tlv})")
    assert not bad, "\n".join(bad)


def test_no_module_over_600_lines():
    sizes = {p.relative_to(ROOT): len(p.read_text(encoding="utf-8").splitlines()) for p, _ in MODULES.values()}
    long = {str(p): n for p, n in sizes.items() if n > MAX_LINES}
    assert not long, f"split these by what their parts do: {long}"
