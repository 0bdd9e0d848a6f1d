"""A regular (non-editable) install: the wheel built from pyproject.toml holds every package of the source tree,
and, installed into a folder of its own, imports, answers the CLI and does a one-question run without the
repository or the editable install in sight.

The wheel is built offline from a copy of the packaged folders (no build/ or egg-info left in the repository)
with the environment's setuptools, then `pip install --target`ed into a scratch folder. The installed package
runs under `python -S` with PYTHONPATH = that folder, then the environment's site-packages as a plain folder:
without the site module no .pth file is read, so the editable install's finder never loads, and the working
directory is outside the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from diagnose.pipeline.rundir import tomllib
from diagnose.tables import read_table

REPO_ROOT = Path(__file__).resolve().parents[1]
TABLES = ("rollouts", "nodes", "candidates", "alignment", "summary")


def _source_packages() -> dict[str, Path]:
    """Import name -> folder of every package the tree holds, mapped as pyproject's package-dir maps them
    (kernels/ is diagnose.kernels)."""
    package_dir = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    found = {}
    for name, folder in package_dir.items():
        root = REPO_ROOT / folder
        for init in root.rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            rel = init.parent.relative_to(root).parts
            # a folder that package-dir maps elsewhere belongs to that mapping (none today)
            dotted = ".".join((name, *rel))
            if dotted == name or dotted not in package_dir:
                found[dotted] = init.parent
    return found


def _env(site: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    libs = dict.fromkeys([str(site), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    # DIAGNOSE_HOME (the embedded model's cache) and the rest of the environment pass through
    env.update(PYTHONPATH=os.pathsep.join(libs), PYTHONNOUSERSITE="1", OMP_WAIT_POLICY="PASSIVE")
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools", minversion="70.1", reason="building the wheel offline needs setuptools>=70.1")
    work = tmp_path_factory.mktemp("install")
    src = work / "src"
    src.mkdir()
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    shutil.copy2(REPO_ROOT / "pyproject.toml", src)
    shutil.copy2(REPO_ROOT / pyproject["project"]["readme"], src)
    for folder in {Path(f).parts[0] for f in pyproject["tool"]["setuptools"]["package-dir"].values()}:
        shutil.copytree(REPO_ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = work / "wheels"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(out),
         str(src)],
        capture_output=True, text=True, timeout=300, cwd=work, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    (built,) = out.glob("diagnose-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    return site


def _python(site: Path, *args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """The environment's python without the site module (no .pth: no editable finder), outside the repository."""
    return subprocess.run([sys.executable, "-S", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=_env(site))


def test_the_wheel_holds_every_package_and_module_of_the_tree(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    packages = _source_packages()
    assert {"diagnose", "diagnose.validate", "diagnose.kernels"} <= set(packages)
    for dotted, folder in packages.items():
        modules = sorted(p.name for p in folder.glob("*.py"))
        prefix = dotted.replace(".", "/") + "/"
        shipped = sorted(n[len(prefix):] for n in names if n.startswith(prefix) and "/" not in n[len(prefix):])
        assert shipped == modules, f"{dotted} ({folder.relative_to(REPO_ROOT)}) is not shipped whole: add it to " \
            "[tool.setuptools] packages in pyproject.toml"
    assert not any(n.startswith("kernels/") for n in names), "kernels/ must ship as diagnose.kernels only"
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "diagnose = diagnose.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_every_module_imports_from_the_installed_wheel(installed, tmp_path):
    probe = (
        "import importlib, pkgutil, sys\n"
        "import diagnose\n"
        "assert not any(type(f).__module__.startswith('__editable__') for f in sys.meta_path), sys.meta_path\n"
        "print(diagnose.__file__)\n"
        "for m in pkgutil.walk_packages(diagnose.__path__, 'diagnose.'):\n"
        "    if m.name.rpartition('.')[2] != '__main__':\n"
        "        print(m.name, importlib.import_module(m.name).__file__)\n"
    )
    proc = _python(installed, "-c", probe, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    first, *rows = proc.stdout.splitlines()
    assert Path(first).parent == installed / "diagnose"
    modules = {"diagnose": first, **dict(row.split(" ", 1) for row in rows)}
    assert {"diagnose.validate", "diagnose.validate.runner", "diagnose.kernels", "diagnose.kernels.fused",
            "diagnose.cli"} <= set(modules)
    for name, file in modules.items():
        assert Path(file).is_relative_to(installed), (name, file)
    # every module of the tree was found in the install
    tree = {f"{dotted}.{p.stem}" if p.stem != "__init__" else dotted
            for dotted, folder in _source_packages().items() for p in folder.glob("*.py") if p.stem != "__main__"}
    assert tree <= set(modules), sorted(tree - set(modules))


CLI_PROBE = """
import sys
from importlib.metadata import distribution

dist = distribution("diagnose")
print("dist", dist.locate_file(""))
(entry,) = [e for e in dist.entry_points if e.group == "console_scripts" and e.name == "diagnose"]
main = entry.load()  # what the `diagnose` console script calls
for argv in (["validate", "--help"], ["run", "--help"], ["validate", sys.argv[1]]):
    sys.argv = ["diagnose", *argv]
    print("=== diagnose", *argv, flush=True)
    print("=== diagnose", *argv, file=sys.stderr, flush=True)
    try:
        main()
        code = 0
    except SystemExit as exit:
        code = exit.code or 0
    print("=== exit", code, flush=True)
"""


def _sections(text: str) -> dict[str, str]:
    """The probe's output of each command, by command line."""
    parts = text.split("=== diagnose ")[1:]
    return {part.split("\n", 1)[0]: part.split("\n", 1)[1] for part in parts}


def test_the_installed_cli_answers_and_runs_a_question(installed, tmp_path):
    # the console script's entry point, from the installed metadata: both commands' help, then `validate` on a
    # folder that is no run, which imports diagnose.validate before it refuses (one line, not an ImportError)
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _python(installed, "-c", CLI_PROBE, str(empty), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first, _, rest = proc.stdout.partition("\n")
    assert first == f"dist {installed}"
    said, errs = _sections(rest), _sections(proc.stderr)
    for command in ("validate --help", "run --help"):
        assert "Usage" in said[command] and said[command].endswith("=== exit 0\n"), said[command]
    refusal = f"validate {empty}"
    assert said[refusal].endswith("=== exit 1\n"), said[refusal] + errs[refusal]
    assert "is not a run directory" in errs[refusal] and "Traceback" not in errs[refusal], errs[refusal]
    # a one-question run through `python -m diagnose`
    out = tmp_path / "run"
    proc = _python(
        installed, "-m", "diagnose", "run", "--engine", "exact", "--student", "exact", "--task", "digitsum",
        "--teacher", "model=exact:seed=1", "--objective", "rkl", "--questions", "1", "--max-new-tokens", "8",
        "--budget", "60", "--out", str(out), "-q", cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    for name in TABLES:
        assert len(read_table(out, name)) > 0, name
    assert sorted(p.name for p in (out / "alignment").glob("part-*.parquet")) == ["part-q00000.parquet"]
    assert (out / "report.html").is_file()
