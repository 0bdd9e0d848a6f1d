"""Scale-out (pipeline/scale.py, `--workers`, `--shard`): the same tables as one process, on a local Ray.

The exact engine is deterministic whatever the batching, so its tables must match the serial run bit for bit;
the embedded model's log-probabilities move in the last bits with batch shape and thread count, so there the
tokens, nodes and candidates must match exactly and the floats closely.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from diagnose.cli import app
from diagnose.errors import DiagnoseError
from diagnose.pipeline import RunConfig, Runner
from diagnose.pipeline.scale import TEST_HOOK_ENV
from diagnose.tables import has_table, read_table

ray = pytest.importorskip("ray")

TABLES = ("rollouts", "nodes", "candidates", "alignment")
EXACT = dict(
    student="exact",
    engine="exact",
    task="digitsum",
    teachers=["model=exact:seed=1", "model=exact:seed=2,scale=1.5"],
    objectives=["rkl", "fkl", "rkl_sampled"],
    questions=6,
    max_new_tokens=8,
    budget=60,
    progress=False,
)
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for the module (2 CPUs, as this machine has); the runs join it and leave it running."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def _run(out: Path, **values):
    if values.get("workers"):  # workers' caches beside the run, not in the machine's shared temp folder
        values.setdefault("cache_dir", str(Path(out).parent / f"{Path(out).name}-cache"))
    return Runner(RunConfig.from_sources(None, {**EXACT, "out": str(out), **values})).run()


def _assert_same_tables(a: Path, b: Path, exact: bool = True) -> None:
    for name in TABLES:
        left, right = read_table(a, name), read_table(b, name)
        assert len(left) > 0, name
        if exact:
            pd.testing.assert_frame_equal(left, right, check_exact=True)
        else:
            floats = [c for c in left.columns if left[c].dtype.kind == "f" or c.endswith("logprobs")]
            pd.testing.assert_frame_equal(left.drop(columns=floats), right.drop(columns=floats), check_exact=True)
            for c in floats:
                if left[c].dtype == object:  # per-token lists
                    for x, y in zip(left[c], right[c], strict=True):
                        assert pd.Series(list(x)).sub(pd.Series(list(y))).abs().max() < 1e-4, c
                else:
                    pd.testing.assert_series_equal(left[c], right[c], rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("scale") / "serial"
    _run(out)
    return out


def test_two_workers_give_the_serial_tables_and_a_killed_worker_is_retried(
    local_ray, serial_run, tmp_path, monkeypatch
):
    out = tmp_path / "workers"
    marker = tmp_path / "killed"
    monkeypatch.setenv(TEST_HOOK_ENV, f"kill:2:{marker}")
    result = _run(out, workers=2)
    assert marker.exists(), "the hook never killed a worker: the retry path was not exercised"
    _assert_same_tables(serial_run, out)
    assert result.summary.equals(
        Runner(RunConfig.from_sources(None, {**EXACT, "out": str(serial_run)})).run().summary
    )
    # the run directory holds only what the driver committed; the caches stayed with the workers
    assert not (out / "cache").exists()


def test_teachers_in_a_pool_give_the_serial_tables(local_ray, tmp_path):
    one_teacher = {"teachers": ["model=exact:seed=2,scale=1.5"], "questions": 4}
    _run(tmp_path / "serial", **one_teacher)
    out = tmp_path / "pool"
    _run(out, workers=1, teacher_placement="pool", cache_dir=str(tmp_path / "cache"), **one_teacher)
    _assert_same_tables(tmp_path / "serial", out)
    assert list((tmp_path / "cache").glob("*/q*.sqlite")), "cache_dir was not used"
    # two teacher servers and a worker do not fit on 2 CPUs: refused at once, nothing created
    with pytest.raises(DiagnoseError, match="has 2 CPUs but 1 worker.s. and 2 teacher server.s. need 3"):
        _run(tmp_path / "too-big", workers=1, teacher_placement="pool")
    assert not (tmp_path / "too-big").exists()


def test_a_user_error_in_a_question_stops_the_run_after_the_others_commit(local_ray, tmp_path, monkeypatch):
    out = tmp_path / "failing"
    monkeypatch.setenv(TEST_HOOK_ENV, "fail:1")
    with pytest.raises(DiagnoseError, match="question 1: failed on purpose"):
        _run(out, workers=1, in_flight=2)
    done = sorted(p.name for p in (out / "alignment").glob("part-*.parquet"))
    assert "part-q00001.parquet" not in done and "part-q00000.parquet" in done
    monkeypatch.delenv(TEST_HOOK_ENV)
    assert _run(out, workers=1) is not None  # the rerun resumes and finishes


def test_execution_keys_resume_a_run_and_other_keys_are_refused(local_ray, serial_run, tmp_path):
    out = tmp_path / "mixed"
    assert _run(out, shard="1/2") is None  # half the questions, in this process
    assert 0 < len(list((out / "alignment").glob("part-*"))) < EXACT["questions"]
    assert "shard" not in (out / "config.toml").read_text()
    with pytest.raises(DiagnoseError, match="differs in: budget"):
        _run(out, workers=2, budget=80)
    assert _run(out, workers=2, in_flight=3) is not None  # the rest, on Ray
    _assert_same_tables(serial_run, out)


def test_two_shard_processes_then_report_give_the_serial_run(serial_run, tmp_path):
    out = tmp_path / "sharded"
    cfg = tmp_path / "run.toml"
    cfg.write_text(RunConfig(**{**EXACT, "out": str(out)}).to_toml())
    procs = [
        subprocess.Popen([sys.executable, "-m", "diagnose", "run", "--config", str(cfg), "--shard", f"{k}/2", "-q"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        for k in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    # Each shard, once its own questions are committed, either finds questions of the other still pending and
    # says how many are left (at most the other's 3; the count is taken again when printed, so it may be 0 by
    # then), or finds none and writes the summary and report. Which does which is a race (both may finish
    # together and both write), but the shard whose last commit came last sees everything done, so at least one
    # writes the report. An unfinished shard's message is checked deterministically in
    # test_report_over_an_unfinished_sharded_run_says_so.
    wrote_report = []
    for k, (stdout, _) in enumerate(outputs):
        left = re.search(rf"shard {k}/2 done; ([0-9]+) of 6 questions are left to other shards", stdout)
        report = f"report: {out / 'report.html'}" in stdout
        assert bool(left) != report, stdout
        assert left is None or int(left.group(1)) <= 3, stdout
        wrote_report.append(report)
    assert any(wrote_report), outputs
    report = subprocess.run([sys.executable, "-m", "diagnose", "report", str(out), "--resummarize"],
                            capture_output=True, text=True, env=ENV, timeout=300)
    assert report.returncode == 0 and "warning" not in report.stderr, report.stderr
    _assert_same_tables(serial_run, out)
    pd.testing.assert_frame_equal(read_table(serial_run, "summary"), read_table(out, "summary"), check_exact=True)


def test_report_over_an_unfinished_sharded_run_says_so(tmp_path):
    out = tmp_path / "half"
    cfg = tmp_path / "run.toml"
    cfg.write_text(RunConfig(**{**EXACT, "out": str(out)}).to_toml())
    # the only shard run: it always finds the other shards' questions pending and says what is left
    shard = CliRunner().invoke(app, ["run", "--config", str(cfg), "--shard", "0/3", "-q"])
    assert shard.exit_code == 0, shard.output
    assert shard.output.strip() == (
        f"shard 0/3 done; 4 of 6 questions are left to other shards. When all have finished: diagnose report {out}"
    )
    assert not (out / "report.html").exists() and not has_table(out, "summary")
    report = subprocess.run([sys.executable, "-m", "diagnose", "report", str(out)], capture_output=True,
                            text=True, env=ENV, timeout=300)
    assert report.returncode == 0
    assert "warning: 2 of 6 questions are complete" in report.stderr


def test_bad_scale_out_settings_are_one_line_errors():
    for values, message in [
        ({"shard": "2/2"}, "--shard must be i/N"),
        ({"shard": "x"}, "--shard must be i/N"),
        ({"shard": "0/2", "workers": 2}, "cannot be combined with Ray"),
        ({"workers": -1}, "--workers must be >= 0"),
        ({"teacher_placement": "remote"}, "--teacher-placement must be one of colocate, pool"),
    ]:
        with pytest.raises(DiagnoseError, match=message):
            RunConfig.from_sources(None, {**EXACT, **values})
    cfg = RunConfig.from_sources(None, {**EXACT, "workers": 4, "shard": ""})
    assert cfg.digest() == RunConfig.from_sources(None, EXACT).digest()


@pytest.mark.slow
def test_embedded_model_on_two_workers_matches_the_serial_run(local_ray, embedded_model_path, tmp_path):
    values = dict(student="embedded", engine="hf", task="arithmetic", teachers=["self:answer"],
                  objectives=["rkl", "fkl"], questions=3, rollouts=2, max_new_tokens=12, budget=20, temperature=0.7)
    _run(tmp_path / "serial", **values)
    _run(tmp_path / "workers", workers=2, **values)
    _assert_same_tables(tmp_path / "serial", tmp_path / "workers", exact=False)
